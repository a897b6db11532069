"""The local engine: this process loads the model once and annotates the shards still to do.

Three stages overlap, one thread each: reading and tokenizing shard i+1, running the model on
shard i, decoding and writing shard i-1. So the device never waits for I/O or the tokenizer, and
the order of commits stays the shard order.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from batchnlp.annotate import Annotator, Prepared
from batchnlp.engines.context import RunContext
from batchnlp.read.plan import Plan, Shard, read_shards
from batchnlp.session import RunResult, crash_point, open_session, recording, write_part
from batchnlp.write.manifest import Manifest


def run(ctx: RunContext) -> RunResult:
    session = open_session(ctx.job)
    done = ctx.done()
    ctx.start_run({"engine": "local", **session.run_info()}, done)
    return run_shards(ctx.job.plan, ctx.manifest, session.annotator, done, ctx.out, ctx.quiet)


def run_shards(plan: Plan, manifest: Manifest, annotator: Annotator, done: set[int], out: Path,
               quiet: bool) -> RunResult:
    """Annotate every shard of `plan` not in `done` into `out`, recording each in `manifest`."""
    from tqdm import tqdm

    done_rows = sum(s["rows"] for s in manifest.data["shards"] if s["index"] in done)
    progress = tqdm(total=plan.total_rows, initial=done_rows, unit="rows", disable=quiet, dynamic_ncols=True,
                    desc="annotating")
    committer = _Committer(manifest, annotator, out, progress)
    try:
        with recording(manifest):
            _pipeline(read_shards(plan, done), annotator, committer.commit)
    finally:
        progress.close()
    return RunResult(out, "complete", committer.rows, committer.shards, plan.shard_count, len(done))


class _Committer:
    """The writer stage: decode a shard, write its part, then record it (counts this run's work)."""

    def __init__(self, manifest: Manifest, annotator: Annotator, out: Path, progress: Any):
        self.manifest, self.annotator, self.out, self.progress = manifest, annotator, out, progress
        self.began = time.perf_counter()
        self.rows = self.shards = 0

    def commit(self, shard: Shard, prepared: Prepared) -> None:
        table, stats = self.annotator.finish(prepared)
        stats = write_part(self.out, shard, table, stats)
        self.rows += shard.rows
        self.shards += 1
        self.manifest.record_shard(stats, run={"rows": self.rows,
                                               "seconds": round(time.perf_counter() - self.began, 3),
                                               "batch_tokens_in_use": self.annotator.batch_tokens,
                                               "oom_splits": self.annotator.oom_splits})
        crash_point("shard-recorded", shard.index)
        self.progress.update(shard.rows)
        self.progress.set_postfix(tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.0f}")


def _pipeline(shards: Any, annotator: Annotator, commit: Callable[[Shard, Prepared], None]) -> None:
    """Read ahead one shard, infer here, write behind one shard; errors of any stage raise here."""

    def read_next() -> tuple[Shard, Prepared] | None:
        item = next(shards, None)
        return None if item is None else (item[0], annotator.prepare(item[1]))

    writing: Future | None = None
    with ThreadPoolExecutor(1, "batchnlp-read") as reader, ThreadPoolExecutor(1, "batchnlp-write") as writer:
        reading = reader.submit(read_next)
        try:
            while (item := reading.result()) is not None:
                reading = reader.submit(read_next)  # prefetch the next shard while this one runs
                shard, prepared = item
                annotator.infer(prepared, shard.index)
                if writing is not None:
                    writing.result()  # one write in flight at most; raises the writer's error here
                writing = writer.submit(commit, shard, prepared)
            if writing is not None:
                writing.result()
        finally:
            if writing is not None and not writing.done():
                writing.exception()  # let a commit in flight finish before the manifest is closed
