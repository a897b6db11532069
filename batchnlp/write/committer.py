"""The one committer, for both engines: a part becomes part of the output when a commit of the
log lists it, and that happens here only. As in Ray Data's `Datasink` (`write` in the workers,
`on_write_complete` on the driver), the engines write parts wherever they annotate them
(`write_part`) and hand each part's statistics to `Committer.record` in the process that owns
the output's log, so a run's entries carry the same fields whichever engine ran.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence

import pyarrow as pa

from batchnlp.errors import OutputConflictError, RunFailed
from batchnlp.faults import NONE, Faults
from batchnlp.read.ids import index_name
from batchnlp.read.plan import Shard, part_name
from batchnlp.spec import InputSpec
from batchnlp.write.actions import Action, Add, RunFinished, RunProgress
from batchnlp.write.commits import CommitLog, commit_name
from batchnlp.write.folder import Folder
from batchnlp.write.state import now, portable_name


def write_part(out: Folder, shard: Shard, table: pa.Table, stats: dict[str, Any],
               faults: Faults = NONE, source: InputSpec | None = None) -> dict[str, Any]:
    """Write a shard's part atomically; return its statistics as a commit records them. The
    caller records it only after this returns: the part is durable by then. With
    input.incremental: ids (`source`), the part's id index is written first."""
    if source is not None and source.incremental == "ids":
        from batchnlp.read.ids import index_table

        out.write_table(index_name(shard.part), index_table(source, table))
    size, digest = out.write_table(shard.part, table)
    faults.point("part-written", shard.number)
    return {**stats, "unit": shard.unit.key, "shard": shard.number, "input": shard.unit.name, "start": shard.start,
            "bytes": size, "sha256": digest}


class Committer:
    def __init__(self, log: CommitLog, faults: Faults = NONE, partial: bool = False):
        self.log, self.faults = log, faults
        self.partial = partial  # a --limit left input rows out: the run ends `partial`, not `complete`
        self.rows = self.parts = 0
        self.written: dict[str, int] = {}  # this run's parts: name -> size
        self.began = time.perf_counter()

    def begin(self, staged: Sequence[Action], durable: dict[str, pa.Table], dropped: Sequence[str]) -> None:
        """Take a run's decision into the log, once: the files a commit will list are written
        first (`durable`: an id selection), then its actions are staged for the run's first
        commit; where parts are `dropped`, that commit is made now and they are deleted after it
        (no commit may list them by the time they go; their names are written again soon)."""
        folder = self.log.folder
        for name, table in durable.items():
            folder.write_table(name, table)
        self.log.stage(*staged)
        if dropped:
            self.log.commit()
            for part in dropped:
                folder.remove(part)
                folder.remove(index_name(part))  # its id index (input.incremental: ids), if any

    def start_run(self, info: dict[str, Any]) -> None:
        """Commit where and how this run annotates (device, precision, probe, engine), with what the
        runner staged before (the job's metadata on a new output, the plan, the run's start)."""
        self.log.commit(RunProgress(info))
        self.began = time.perf_counter()

    def record(self, stats: dict[str, Any], point: int, annotated: int | None = None, **run: Any) -> None:
        """Record a durable part (`stats` from `write_part`) and this run's progress; `point` names
        it for fault injection (the shard's number); `annotated`: the rows this run annotated in it
        (default all: fewer for a part rewritten by --retry-errors)."""
        pinned = self.log.state.pinned.precision
        if pinned is not None and stats.get("dtype") not in (None, pinned):
            raise RunFailed(f"{part_name((stats['unit'], stats['shard']))} was annotated in {stats['dtype']}, but this "
                            f"output's precision is pinned to {pinned}; it is not recorded (parts never mix "
                            "precisions)")
        name = part_name((stats["unit"], stats["shard"]))
        self._check_seen(name, stats)
        self.rows += stats["rows"] if annotated is None else annotated
        self.parts += 1
        self.written[name] = stats["bytes"]
        run_number = self.log.state.runs[-1].number
        where = portable_name(stats["input"], self.log.state.job.get("base"))  # as the units are named
        progress = {"rows": self.rows, **run, "seconds": round(time.perf_counter() - self.began, 3)}
        self.log.commit(Add({**stats, "input": where, "run": run_number}), RunProgress(progress))
        self.faults.point("shard-recorded", point)

    def _check_seen(self, name: str, stats: dict[str, Any]) -> None:
        """A part is recorded only once this process sees it where the output lives, whole (a Ray
        actor on another node may have written it to a disk of its own)."""
        size = self.log.folder.size(name)
        if size != stats["bytes"]:
            where = f" on {stats['host']}" if stats.get("host") else ""
            seen = "is not there" if size is None else f"has {size} bytes, not the {stats['bytes']} written"
            raise RunFailed(f"{self.log.folder / name} was written{where} but {seen} as this process sees the "
                            "output; it is not recorded. A local output.path on a cluster must be a disk every "
                            "node shares (runtime.shared_storage), or use a bucket")

    def finish(self, status: str, error: str | None = None) -> None:
        self.log.commit(RunFinished(status, now(), error))

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record how the run ended: complete (or partial, for a --limit that left rows),
        interrupted (a signal) or failed (with the error); the exception goes on."""
        try:
            yield
            self.check_output()
        except KeyboardInterrupt:
            self.finish("interrupted")
            raise
        except BaseException as e:
            with contextlib.suppress(Exception):  # the log itself may be what failed
                self.finish("failed", error=f"{type(e).__name__}: {e}")
            raise
        self.finish("partial" if self.partial else "complete")

    def check_output(self) -> None:
        """Before a run calls itself complete: its parts and its last commit are where the output
        is (one listing). An output folder removed or replaced under the run is caught here."""
        stored = self.log.folder.sizes()
        lost = [name for name, size in self.written.items() if stored.get(name) != size]
        version = self.log.state.version
        if lost or (version >= 0 and self.log.folder.read_bytes(commit_name(version)) is None):
            what = f"{lost[0]} and {len(lost) - 1} more parts are" if lost else "its log is"
            raise OutputConflictError(f"output.path: {self.log.folder}: {what} gone: the output was removed or "
                                      "replaced while this run wrote it; the run is not complete: run the job "
                                      "again to annotate what is missing")
