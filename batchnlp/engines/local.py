"""The local engine: this process loads the model once and annotates the shards still to do.

Three stages overlap, one thread each: reading and tokenizing shard i+1, running the model on
shard i, decoding and writing shard i-1. So the device never waits for I/O or the tokenizer, and
the order of commits stays the shard order.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from batchnlp import watchdog
from batchnlp.annotator import Annotator, Prepared
from batchnlp.engines.context import RunContext
from batchnlp.engines.progress import Progress
from batchnlp.engines.retry import retry_errors
from batchnlp.log import event
from batchnlp.read.plan import Shard, read_shards
from batchnlp.session import RunResult, open_session
from batchnlp.write.committer import Committer, write_part


def run(ctx: RunContext) -> RunResult:
    began = time.perf_counter()
    with watchdog.doing("loading the model"):
        session = open_session(ctx.job, ctx.done, ctx.pinned)
    placement = session.annotator.placement
    cached = session.job.model_cache
    event("model", f"model loaded in {session.load_seconds:.1f} s"
          + (f" ({'from' if cached['hit'] else 'converted into'} the model cache)" if cached else "")
          + f", precision probe {session.probe_seconds:.1f} s: {placement.device} {placement.name}",
          seconds=round(time.perf_counter() - began, 2), load_seconds=session.load_seconds,
          probe_seconds=session.probe_seconds, model_cache=cached, device=str(placement.device),
          precision=placement.name, probe=session.probe, terminal=False)
    committer = ctx.committer()
    ctx.start_run(committer, {"engine": "local", **session.run_info()},
                  session.probe, session.annotator.placement.name)
    return run_shards(ctx, session.annotator, committer)


def run_shards(ctx: RunContext, annotator: Annotator, committer: Committer) -> RunResult:
    """Annotate every shard of the plan not done yet into the output, recording each in the log."""
    plan = ctx.job.plan
    progress = Progress(plan.total_rows, ctx.done_rows(), ctx.quiet, ctx.progress_interval)
    writer = _Writer(ctx, annotator, committer, progress)
    retried = None
    try:
        with committer.recording():
            _pipeline(read_shards(plan, ctx.done), annotator, writer.write, progress)
            if ctx.retry:
                retried = retry_errors(ctx, annotator, committer)
    finally:
        progress.close()
    return RunResult(str(ctx.out), "partial" if plan.partial else "complete", committer.rows, committer.parts,
                     plan.shard_count, len(ctx.done), retried=retried)


class _Writer:
    """The writer stage: decode a shard, write its part, then have the committer record it."""

    def __init__(self, ctx: RunContext, annotator: Annotator, committer: Committer, progress: Progress):
        self.ctx, self.annotator, self.committer, self.progress = ctx, annotator, committer, progress
        self.precision = {"device": str(annotator.placement.device), "dtype": annotator.placement.name}

    def write(self, shard: Shard, prepared: Prepared) -> None:
        table, stats = self.annotator.finish(prepared)
        stats = write_part(self.ctx.out, shard, table, {**stats, **self.precision}, self.ctx.faults,
                           self.ctx.job.spec.input)
        self.committer.record(stats, shard.number, batch_tokens_in_use=self.annotator.batch_tokens,
                              oom_splits=self.annotator.oom_splits)
        watchdog.committed()
        self.progress.committed(shard.part, stats)


def _pipeline(shards: Any, annotator: Annotator, commit: Callable[[Shard, Prepared], None],
              progress: Progress) -> None:
    """Read ahead one shard, infer here, write behind one shard; errors of any stage raise here."""

    def read_next() -> tuple[Shard, Prepared] | None:
        item = next(shards, None)
        return None if item is None else (item[0], annotator.prepare(item[1]))

    writing: Future | None = None
    in_flight = ""  # the part being written
    reader, writer = ThreadPoolExecutor(1, "batchnlp-read"), ThreadPoolExecutor(1, "batchnlp-write")
    reading = reader.submit(read_next)
    try:
        while (item := reading.result()) is not None:
            reading = reader.submit(read_next)  # prefetch the next shard while this one runs
            shard, prepared = item
            _infer(annotator, shard, prepared, progress)
            if writing is not None:
                with watchdog.doing(f"writing {in_flight}"):
                    writing.result()  # one write in flight at most; raises the writer's error here
            writing, in_flight = writer.submit(commit, shard, prepared), shard.part
        if writing is not None:
            with watchdog.doing(f"writing {in_flight}"):
                writing.result()
    except watchdog.Stalled:
        raise  # what is stuck may be the write: not waited for
    except BaseException:
        if writing is not None and not writing.done():
            writing.exception()  # let a commit in flight finish before the run's end is recorded
        raise
    finally:
        # Not waited for: a read ahead is thrown away, and a thread stuck in a call must not keep
        # the run from recording its end (the watchdog ends such a process).
        reader.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=False)


def _infer(annotator: Annotator, shard: Shard, prepared: Prepared, progress: Progress) -> None:
    """Run a shard's batches; progress moves by each batch's share of the shard's features."""
    per_feature = shard.rows / max(len(prepared.features), 1)
    advanced = 0.0

    def on_batch(features: int) -> None:
        nonlocal advanced
        advanced += features * per_feature
        progress.advance(features * per_feature)
        watchdog.tick()

    with watchdog.doing(f"annotating {shard.part}"):
        annotator.infer(prepared, shard.seed_offset, on_batch)
    progress.advance(shard.rows - advanced)  # rounding, and rows with no features (errors)
