"""`batchnlp verify` and `batchnlp rerun`: prove an output is what its record says, and that
re-executing the recorded job gives the same bytes.

verify: every part the output's log lists exists with its sha256; no unlisted part sits beside
them; every input file the log records still has its content hash (found where the project is
now: relative to the job's folder as seen from the output) (removed files whose parts were
kept are named, not counted as problems); the output is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchnlp.checksums import content_hash
from batchnlp.errors import OutputConflictError
from batchnlp.storage import open_file
from batchnlp.read.source import Unit
from batchnlp.write import migrate
from batchnlp.write.commits import LOG_DIR, CommitLog
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState, base_of_output, unit_of


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    rows: int = 0
    inputs: int = 0


def load(output: str | Path) -> OutputState:
    """The state of an output (a path or a URL); a one-line error if it holds no batchnlp log.
    An 0.2 manifest is read (not migrated: only a run writes)."""
    folder = Folder(output)
    log = CommitLog.read(folder)
    if log is not None:
        return log.state
    legacy = migrate.legacy_manifest(folder)
    if legacy is not None:
        return migrate.legacy_state(folder, *legacy)
    raise OutputConflictError(f"{folder}: no batchnlp log ({LOG_DIR}) here; is this a batchnlp output directory?")


def verify(output: str | Path, check_inputs: bool = True) -> Verdict:
    state = load(output)
    folder = Folder(output)
    verdict = Verdict()
    for part in state.part_list():
        digest = folder.sha256(part.name)
        if digest is None:
            verdict.problems.append(f"{folder / part.name}: listed in the output's log but missing (rerun the job "
                                    "to annotate it again)")
        elif digest != part.sha256:
            verdict.problems.append(f"{folder / part.name}: sha256 differs from the log's (the part was altered)")
        else:
            verdict.parts += 1
            verdict.rows += part.rows
    listed = {p.name for p in state.parts.values()}
    for name in folder.names():
        if name not in listed:
            verdict.problems.append(f"{folder / name}: not listed in the output's log (readers of the directory "
                                    "would read it too)")
    if check_inputs:
        _check_inputs(state, str(output), verdict)
    if state.status == "partial":
        verdict.problems.append(f"{output}: status partial, not complete ({state.partial_note()})")
    elif state.status != "complete":
        verdict.problems.append(f"{output}: status {state.status}, not complete (rerun the job to finish it)")
    return verdict


def _check_inputs(state: OutputState, output: str, verdict: Verdict) -> None:
    base = base_of_output(state, output)
    for record in state.unit_list():
        name = unit_of(record, base).name
        if not (record.content_hash or "").startswith("xxh3_128:"):
            verdict.notes.append(f"{name}: a dataset, identified by {record.content_hash} (not re-read)")
            continue
        if record.removed:
            verdict.notes.append(f"{name}: removed from the input; its parts were kept (--keep-removed)")
            continue
        if record.superseded:  # input.incremental: ids — the file has grown since; its newest unit is checked
            continue
        current = _content_hash(name)
        if current is None:
            verdict.problems.append(f"{name}: input file missing (rerun with --drop-removed or --keep-removed)")
        elif current != record.content_hash:
            verdict.problems.append(f"{name}: input file changed since it was annotated (rerun with "
                                    "--reprocess-changed)")
        else:
            verdict.inputs += 1


def _content_hash(name: str) -> str | None:
    """An input file's content hash now (None: it is gone). Credentials for a bucket come from
    the environment: the log holds none."""
    try:
        with open_file(name) as f:
            return content_hash(f)
    except FileNotFoundError:
        return None


def recorded_job(state: OutputState, original: str, output: str | Path) -> tuple[dict[str, Any], str | None]:
    """(the job as the output recorded it, every default filled in, writing to `output`; the folder
    its relative paths resolve against, found from where the original output is now)."""
    data = {section: dict(values) for section, values in state.job["resolved"].items()}
    for key, value in (state.job.get("paths_as_written") or {}).items():
        section, name = key.split(".")
        data[section][name] = value
    data["output"]["path"] = str(output)
    return data, base_of_output(state, original)


def kept_units(state: OutputState, original: str) -> list[Unit]:
    """The units a rerun numbers as the original did (those removed with their parts kept are not
    read again: their files are gone)."""
    if any(u.superseded or u.selection for u in state.unit_list()):
        raise OutputConflictError(f"{original}: annotated row by row (input.incremental: ids) from files that grew "
                                  "since: their earlier versions, which its first parts came from, are gone, so "
                                  "rerun cannot make those parts again; verify checks it instead")
    base = base_of_output(state, original)
    return [unit_of(u, base) for u in state.unit_list() if not u.removed]


def compare_parts(original: OutputState, rerun: OutputState) -> tuple[list[str], list[str]]:
    """(identical parts, lines naming each part that differs or is missing in the rerun)."""
    theirs = {p.name: p.sha256 for p in rerun.parts.values()}
    same, problems = [], []
    for part in original.part_list():
        if part.name not in theirs:
            problems.append(f"{part.name}: not produced by the rerun")
        elif theirs[part.name] != part.sha256:
            problems.append(f"{part.name}: differs (sha256 {part.sha256[:12]}… -> {theirs[part.name][:12]}…)")
        else:
            same.append(part.name)
    return same, problems
