"""The run manifest (.manifest.json beside the parts): enough to know what ran and to rerun it.

It is rewritten atomically after every committed part, so it is also the record of progress:
a shard counts as done only once its part is durable *and* listed here.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
from typing import Any

from batchnlp.errors import OutputConflictError
from batchnlp.read.plan import Plan, ShardKey, part_name
from batchnlp.read.source import Unit
from batchnlp.write.folder import Folder

# Hidden, so that every reader of the folder skips it: pyarrow, pandas, DuckDB globs and
# `datasets.load_dataset("parquet", data_dir=...)`, which reads a `_`-prefixed file as data.
MANIFEST_NAME = ".manifest.json"
#: Where batchnlp before 0.2 kept it; such an output is read, and moved on its next save.
LEGACY_MANIFEST_NAME = "_manifest.json"
FORMAT_VERSION = 2
LIBRARIES = ("batchnlp", "torch", "transformers", "tokenizers", "pyarrow", "datasets", "huggingface_hub",
             "safetensors", "numpy", "sentencepiece", "gguf", "accelerate")
UNIT_FIELDS = ("key", "name", "size", "mtime_ns", "content_hash", "rows", "version")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide the output (None: not installed)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Manifest:
    def __init__(self, folder: Folder, data: dict[str, Any], legacy: bool = False):
        self.folder = folder
        self.data = data
        self.legacy = legacy  # read from LEGACY_MANIFEST_NAME: removed once saved under the new name

    @classmethod
    def load(cls, folder: Folder) -> "Manifest | None":
        legacy = False
        text = folder.read_bytes(MANIFEST_NAME)
        if text is None:
            text, legacy = folder.read_bytes(LEGACY_MANIFEST_NAME), True
        if text is None:
            return None
        path = folder / (LEGACY_MANIFEST_NAME if legacy else MANIFEST_NAME)
        try:
            data = json.loads(text.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OutputConflictError(f"{path}: not a readable manifest ({e}); use --overwrite to start "
                                      "this output over") from None
        if not isinstance(data, dict) or not isinstance(data.get("shards"), list):
            raise OutputConflictError(f"{path}: not a batchnlp manifest (no shards listed); use --overwrite to "
                                      "start this output over")
        if data.get("format") != FORMAT_VERSION:
            raise OutputConflictError(f"{path}: written by another batchnlp version (manifest format "
                                      f"{data.get('format')}, this one reads {FORMAT_VERSION}); use --overwrite to "
                                      "start this output over")
        return cls(folder, data, legacy)

    @classmethod
    def new(cls, folder: Folder, **sections: Any) -> "Manifest":
        data = {"format": FORMAT_VERSION, "status": "running", "started_at": now(), "finished_at": None,
                **sections, "units": [], "runs": [], "shards": [], "totals": {}}
        return cls(folder, data)

    # -- the input it annotated ---------------------------------------------------------------

    def units(self) -> list[Unit]:
        """Every input unit annotated so far (also those kept after their file was removed)."""
        return [Unit(u["name"], u["rows"], u["size"], u["mtime_ns"], u["content_hash"], u["key"], u.get("version"))
                for u in self.data["units"]]

    def complete_units(self) -> set[str]:
        """The names of the units whose every row, as the manifest knows them, is in a recorded part."""
        annotated: dict[int, int] = {}
        for s in self.data["shards"]:
            annotated[s["unit"]] = annotated.get(s["unit"], 0) + s["rows"]
        return {u["name"] for u in self.data["units"] if annotated.get(u["key"], 0) == u["rows"]}

    def kept_removed(self) -> list[dict[str, Any]]:
        """The units whose file was removed and whose parts were kept (--keep-removed)."""
        return [u for u in self.data["units"] if u.get("removed")]

    def set_units(self, units: list[Unit]) -> None:
        """Record the units as read (new ones added, known ones updated: size, time, hash, rows;
        whole row counts, not the ones a --limit cuts)."""
        records = {u["key"]: u for u in self.data["units"]}
        for unit in units:
            old = records.get(unit.key, {})
            records[unit.key] = {**old, **{f: getattr(unit, f) for f in UNIT_FIELDS}, "removed": False}
        self.data["units"] = sorted(records.values(), key=lambda u: u["key"])

    def drop_unit(self, name: str) -> list[str]:
        """Forget a unit and its parts; return the parts' names (delete them after `save`)."""
        keys = {u["key"] for u in self.data["units"] if u["name"] == name}
        parts = [s["part"] for s in self.data["shards"] if s["unit"] in keys]
        self.data["units"] = [u for u in self.data["units"] if u["key"] not in keys]
        self.data["shards"] = [s for s in self.data["shards"] if s["unit"] not in keys]
        self.data["totals"] = totals(self.data["shards"], self.data["runs"])
        return parts

    def keep_removed(self, name: str) -> None:
        for unit in self.data["units"]:
            if unit["name"] == name:
                unit["removed"] = True

    # -- progress ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.data["status"]

    def done_shards(self, plan: Plan) -> set[ShardKey]:
        """The plan's shards that a recorded part holds whole: the part is on disk with its recorded
        size and as many rows as the plan gives the shard (a --limit run's cut shard is not done)."""
        planned = plan.shard_rows()  # a dict: one lookup per recorded part
        stored = self.folder.sizes()  # one listing, not a stat (or a HEAD request) per part
        done = set()
        for s in self.data["shards"]:
            key = (s["unit"], s["shard"])
            if planned is not None and planned.get(key) != s["rows"]:
                continue
            if stored.get(s["part"]) == s["bytes"]:
                done.add(key)
        return done

    def missing_parts(self) -> list[str]:
        """Recorded parts that are not on disk whole (deleted, or replaced by other bytes)."""
        stored = self.folder.sizes()
        return [s["part"] for s in self.data["shards"] if stored.get(s["part"]) != s["bytes"]]

    def start_run(self, info: dict[str, Any]) -> None:
        self.data["status"] = "running"
        self.data["finished_at"] = None
        self.data["runs"].append({"started_at": now(), "finished_at": None, "status": "running",
                                  "pid": os.getpid(), "host": socket.gethostname(), **info})
        self.save()

    def record_shard(self, stats: dict[str, Any], run: dict[str, Any] | None = None) -> None:
        """Record a committed part; `run` updates this run's entry (rows so far, seconds, ...)."""
        key = (stats["unit"], stats["shard"])
        self.data["shards"] = [s for s in self.data["shards"] if (s["unit"], s["shard"]) != key]
        self.data["shards"].append({**stats, "part": part_name(key), "run": len(self.data["runs"])})
        self.data["shards"].sort(key=lambda s: (s["unit"], s["shard"]))
        self.data["runs"][-1].update(run or {})
        self.data["totals"] = totals(self.data["shards"], self.data["runs"])
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        self.data["finished_at"] = now()
        run = self.data["runs"][-1]
        run.update(status=status, finished_at=self.data["finished_at"])
        if error:
            run["error"] = error
        self.save()

    def save(self) -> None:
        """Replace the manifest atomically (rename on a disk, one PUT in a bucket)."""
        self.folder.write_bytes(MANIFEST_NAME, json.dumps(self.data, indent=2, default=str).encode())
        if self.legacy:
            self.folder.remove(LEGACY_MANIFEST_NAME)
            self.legacy = False

    # -- resume --------------------------------------------------------------------------------

    def differences(self, fingerprint: dict[str, Any]) -> list[str]:
        """What changed between the job that started this output and the one asked for now."""
        old = dict(_flatten(self.data.get("fingerprint", {})))
        new = dict(_flatten(json.loads(json.dumps(fingerprint, default=str))))
        return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
                if old.get(key) != new.get(key)]


def totals(shards: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the parts. Rates use the runs' wall time (first shard to last commit, model loading
    excluded): a part's own `seconds` overlap with its neighbours', as the stages run in parallel."""
    keys = ("rows", "features", "tokens", "padded_tokens", "errors", "rows_at_max_length")
    out: dict[str, Any] = {k: sum(s.get(k, 0) for s in shards) for k in keys}
    out["shards"] = len(shards)
    out["seconds"] = round(sum(r.get("seconds", 0) for r in runs), 3)
    rows_timed = sum(r.get("rows", 0) for r in runs)
    tokens_timed = sum(s.get("tokens", 0) for s in shards if runs[s["run"] - 1].get("seconds"))
    out["rows_per_second"] = round(rows_timed / out["seconds"], 2) if out["seconds"] else None
    out["tokens_per_second"] = round(tokens_timed / out["seconds"], 1) if out["seconds"] else None
    out["padding_efficiency"] = round(out["tokens"] / out["padded_tokens"], 4) if out["padded_tokens"] else None
    return out


def _flatten(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value
