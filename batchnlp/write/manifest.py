"""The run manifest (_manifest.json beside the parts): enough to know what ran and to rerun it.

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
from pathlib import Path
from typing import Any

from batchnlp.write.parts import fsync_dir, part_name

MANIFEST_NAME = "_manifest.json"  # the leading _ makes readers of the directory (pyarrow, pandas) skip it
FORMAT_VERSION = 1
LIBRARIES = ("batchnlp", "torch", "transformers", "tokenizers", "pyarrow", "datasets", "huggingface_hub",
             "safetensors", "numpy")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Manifest:
    def __init__(self, directory: Path, data: dict[str, Any]):
        self.directory = directory
        self.data = data

    @classmethod
    def load(cls, directory: Path) -> "Manifest | None":
        path = directory / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            return cls(directory, json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            from batchnlp.errors import OutputConflictError

            raise OutputConflictError(f"{path}: not a readable manifest ({e}); use --overwrite to start "
                                      "this output over") from None

    @classmethod
    def new(cls, directory: Path, **sections: Any) -> "Manifest":
        data = {"format": FORMAT_VERSION, "status": "running", "started_at": now(), "finished_at": None,
                **sections, "runs": [], "shards": [], "totals": {}}
        return cls(directory, data)

    # -- progress ------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self.data["status"]

    def done_shards(self) -> set[int]:
        """Shards listed here whose part is on disk."""
        return {s["index"] for s in self.data["shards"] if (self.directory / s["part"]).is_file()}

    def start_run(self, info: dict[str, Any]) -> None:
        self.data["status"] = "running"
        self.data["finished_at"] = None
        self.data["runs"].append({"started_at": now(), "finished_at": None, "status": "running",
                                  "pid": os.getpid(), "host": socket.gethostname(), **info})
        self.save()

    def record_shard(self, stats: dict[str, Any], run: dict[str, Any] | None = None) -> None:
        """Record a committed part; `run` updates this run's entry (rows so far, seconds, ...)."""
        self.data["shards"] = [s for s in self.data["shards"] if s["index"] != stats["index"]]
        self.data["shards"].append({**stats, "part": part_name(stats["index"]), "run": len(self.data["runs"])})
        self.data["shards"].sort(key=lambda s: s["index"])
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
        path = self.directory / MANIFEST_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.directory)

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
