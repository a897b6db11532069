"""Outputs written by batchnlp 0.2 (one `.manifest.json` rewritten after every part, format 2;
`_manifest.json` before 0.2) are continued, not redone: their manifest becomes the first commit of
a log (one `snapshot` action holding the whole state), a checkpoint is written, and only then is
the old file removed. A kill in between leaves either the old manifest alone (migrated again next
time) or the log, which wins over a leftover manifest.

What 0.2 recorded with absolute paths (input files, the fingerprint's paths) becomes portable
against the job file's folder, as 0.3 records it."""

from __future__ import annotations

import json
import os
from typing import Any

from batchnlp.errors import OutputConflictError
from batchnlp.write.actions import Snapshot
from batchnlp.write.commits import CommitLog
from batchnlp.write.folder import Folder
from batchnlp.write.state import FORMAT_VERSION, OutputState, portable_name, relative_base

#: 0.2's name, hidden, and the name before it.
MANIFEST_NAMES = (".manifest.json", "_manifest.json")
LEGACY_FORMAT = 2
#: Run entry keys that 0.3 keeps as typed fields.
RUN_FIELDS = ("started_at", "finished_at", "status", "engine", "error", "rows", "seconds")


def legacy_manifest(folder: Folder) -> tuple[str, dict[str, Any]] | None:
    """(its name, its data) if the folder holds an 0.2 manifest."""
    for name in MANIFEST_NAMES:
        text = folder.read_bytes(name)
        if text is None:
            continue
        try:
            data = json.loads(text.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OutputConflictError(f"{folder / name}: not a readable manifest ({e}); use --overwrite to start "
                                      "this output over") from None
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise OutputConflictError(f"{folder / name}: not a batchnlp manifest (no shards listed); use --overwrite "
                                      "to start this output over")
        if data.get("format") != LEGACY_FORMAT:
            raise OutputConflictError(f"{folder / name}: written by another batchnlp version (manifest format "
                                      f"{data.get('format')}; this one reads {LEGACY_FORMAT} and its own log); use "
                                      "--overwrite to start this output over")
        return name, data
    return None


def remove_leftovers(folder: Folder) -> None:
    """An old manifest beside a log: a migration killed before it removed it."""
    for name in MANIFEST_NAMES:
        folder.remove(name)


def migrate(folder: Folder, name: str, data: dict[str, Any]) -> CommitLog:
    log = CommitLog(folder, OutputState())
    log.commit(Snapshot(converted(folder, data, name)))
    log.checkpoint()
    folder.remove(name)
    return log


def legacy_state(folder: Folder, name: str, data: dict[str, Any]) -> OutputState:
    """An 0.2 manifest's state, read only (`verify`, `inspect`: only a run migrates)."""
    state = OutputState()
    state.apply(Snapshot(converted(folder, data, name)).to_json())
    return state


def converted(folder: Folder, old: dict[str, Any], name: str) -> dict[str, Any]:
    """An 0.2 manifest as the state's documented shape (`OutputState.to_json`)."""
    job = dict(old.get("job") or {})
    base = os.path.dirname(job["file"]) if job.get("file") else None
    written = job.get("paths_as_written") or {}
    job.update(base=base, base_from_output=relative_base(base, str(folder)))
    fingerprint = json.loads(json.dumps(old.get("fingerprint") or {}))
    for key, value in written.items():
        section, field = key.split(".")
        if field in fingerprint.get("spec", {}).get(section, {}):
            fingerprint["spec"][section][field] = value
    runs = []
    for number, run in enumerate(old.get("runs") or [], 1):
        runs.append({**run, "number": number, "parts_added": sum(1 for s in old["shards"] if s.get("run") == number),
                     "parts_removed": 0, "inputs": {}})
    first = runs[0] if runs else {}
    return {
        "format": FORMAT_VERSION, "version": 0, "status": old.get("status", "running"),
        "started_at": old.get("started_at"), "finished_at": old.get("finished_at"), "job": job,
        "fingerprint": fingerprint, "model": old.get("model") or {}, "input": old.get("input") or {},
        "libraries": old.get("libraries") or {},
        "pinned": {"precision": first.get("dtype"), "probe": first.get("precision_probe"),
                   "model": old.get("model") or {}, "schema": (old.get("output") or {}).get("schema") or []},
        "planned": old.get("planned") or {},
        "units": [{**u, "name": portable_name(u["name"], base), "removed": bool(u.get("removed"))}
                  for u in old.get("units") or []],
        "runs": runs, "parts": [{k: v for k, v in s.items() if k != "part"} for s in old["shards"]],
        "migrated_from": f"{name} (format {LEGACY_FORMAT})",
    }
