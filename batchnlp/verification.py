"""`batchnlp verify` and `batchnlp rerun`: prove an output is what its manifest says, and that
re-executing the recorded job gives the same bytes.

verify: every part the manifest lists exists with its sha256; no unlisted part sits beside them;
every input file the manifest records still has its content hash (removed files whose parts were
kept are named, not counted as problems); the output is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchnlp.checksums import content_hash
from batchnlp.errors import OutputConflictError
from batchnlp.storage import open_file
from batchnlp.write.folder import Folder
from batchnlp.write.manifest import MANIFEST_NAME, Manifest


@dataclass
class Verdict:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts: int = 0
    rows: int = 0
    inputs: int = 0


def load(output: str | Path) -> Manifest:
    """The manifest of an output (a path or a URL); a one-line error if there is none."""
    folder = Folder(output)
    manifest = Manifest.load(folder)
    if manifest is None:
        raise OutputConflictError(f"{folder}: no {MANIFEST_NAME} here; is this a batchnlp output directory?")
    return manifest


def verify(output: str | Path, check_inputs: bool = True) -> Verdict:
    manifest = load(output)
    folder = manifest.folder
    verdict = Verdict()
    listed = set()
    for shard in manifest.data["shards"]:
        listed.add(shard["part"])
        digest = folder.sha256(shard["part"])
        if digest is None:
            verdict.problems.append(f"{folder / shard['part']}: listed in the manifest but missing (rerun the job "
                                    "to annotate it again)")
        elif digest != shard["sha256"]:
            verdict.problems.append(f"{folder / shard['part']}: sha256 differs from the manifest's (the part was "
                                    "altered)")
        else:
            verdict.parts += 1
            verdict.rows += shard["rows"]
    for name in folder.names():
        if name not in listed:
            verdict.problems.append(f"{folder / name}: not listed in the manifest (readers of the directory would "
                                    "read it too)")
    if check_inputs:
        _check_inputs(manifest, verdict)
    if manifest.status != "complete":
        verdict.problems.append(f"{output}: status {manifest.status}, not complete (rerun the job to finish it)")
    return verdict


def _check_inputs(manifest: Manifest, verdict: Verdict) -> None:
    for unit in manifest.data["units"]:
        name = unit["name"]
        if not unit["content_hash"].startswith("xxh3_128:"):
            verdict.notes.append(f"{name}: a dataset, identified by {unit['content_hash']} (not re-read)")
            continue
        if unit.get("removed"):
            verdict.notes.append(f"{name}: removed from the input; its parts were kept (--keep-removed)")
            continue
        current = _content_hash(name)
        if current is None:
            verdict.problems.append(f"{name}: input file missing (rerun with --drop-removed or --keep-removed)")
        elif current != unit["content_hash"]:
            verdict.problems.append(f"{name}: input file changed since it was annotated (rerun with "
                                    "--reprocess-changed)")
        else:
            verdict.inputs += 1


def _content_hash(name: str) -> str | None:
    """An input file's content hash now (None: it is gone). Credentials for a bucket come from
    the environment: the manifest holds none."""
    try:
        with open_file(name) as f:
            return content_hash(f)
    except FileNotFoundError:
        return None


def recorded_job(manifest: Manifest, output: str | Path) -> dict[str, Any]:
    """The job as the manifest recorded it (every default, paths resolved), writing to `output`."""
    data = {section: dict(values) for section, values in manifest.data["job"]["resolved"].items()}
    data["output"]["path"] = str(output)
    return data


def compare_parts(original: Manifest, rerun: Manifest) -> tuple[list[str], list[str]]:
    """(identical parts, lines naming each part that differs or is missing in the rerun)."""
    theirs = {s["part"]: s["sha256"] for s in rerun.data["shards"]}
    same, problems = [], []
    for shard in original.data["shards"]:
        part = shard["part"]
        if part not in theirs:
            problems.append(f"{part}: not produced by the rerun")
        elif theirs[part] != shard["sha256"]:
            problems.append(f"{part}: differs (sha256 {shard['sha256'][:12]}… -> {theirs[part][:12]}…)")
        else:
            same.append(part)
    return same, problems
