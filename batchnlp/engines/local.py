"""The local engine: this process loads the model once and annotates the shards still to do.

Three stages overlap, one thread each: reading and tokenizing shard i+1, running the model on
shard i, decoding and writing shard i-1. So the device never waits for I/O or the tokenizer, and
the order of commits stays the shard order. The shards of the plan come first, then the parts
--retry-errors rewrites, through the same stages and the same `Worker`.
"""

from __future__ import annotations

import itertools
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

from batchnlp import watchdog
from batchnlp.job import Job
from batchnlp.log import event
from batchnlp.options import RunOptions
from batchnlp.progress import Progress
from batchnlp.read.plan import ShardKey, read_shards
from batchnlp.record import Recorder
from batchnlp.session import open_session
from batchnlp.stages import Prepared
from batchnlp.work import Loaded, Retry, Worker, Written
from batchnlp.write.folder import Folder


class LocalEngine:
    name = "local"

    def __init__(self, job: Job, out: Folder, options: RunOptions):
        self.job, self.out, self.options = job, out, options
        self.worker: Worker | None = None

    def open(self, done: set[ShardKey], pinned: str | None) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
        """Load the model in the output's precision (on its first run, `dtype: auto` decides):
        (the precision, the probe that chose it, the run's figures for its record)."""
        began = time.perf_counter()
        with watchdog.doing("loading the model"):
            session = open_session(self.job, done, pinned)
        placement = session.stages.placement
        cached = self.job.model_cache
        event("model", f"model loaded in {session.load_seconds:.1f} s"
              + (f" ({'from' if cached['hit'] else 'converted into'} the model cache)" if cached else "")
              + f", precision probe {session.probe_seconds:.1f} s: {placement.device} {placement.name}",
              seconds=round(time.perf_counter() - began, 2), load_seconds=session.load_seconds,
              probe_seconds=session.probe_seconds, model_cache=cached, device=str(placement.device),
              precision=placement.name, probe=session.probe, terminal=False)
        self.worker = Worker(session.stages, self.out, self.options.faults)
        return placement.name, session.probe, {"engine": "local", **session.run_info()}

    def run(self, done: set[ShardKey], retries: list[Retry], recorder: Recorder) -> None:
        worker = self.worker
        planned = (Loaded(shard, rows) for shard, rows in read_shards(self.job.plan, done))
        annotate(worker, itertools.chain(planned, (worker.retried(r) for r in retries)), recorder)


def annotate(worker: Worker, loads: Iterator[Loaded], recorder: Recorder) -> None:
    """Annotate each loaded shard into its part and record it, the stages overlapped."""
    stages = worker.stages

    def write(loaded: Loaded, prepared: Prepared) -> None:
        table, stats = stages.finish(prepared)
        written: Written = worker.write(loaded, table, stats)
        recorder.record(written, loaded.shard.number, batch_tokens_in_use=stages.batch_tokens,
                        oom_splits=stages.oom_splits)

    _pipeline(loads, worker, write, recorder.progress)


def _pipeline(loads: Iterator[Loaded], worker: Worker, commit: Callable[[Loaded, Prepared], None],
              progress: Progress) -> None:
    """Read ahead one shard, infer here, write behind one shard; errors of any stage raise here."""
    stages = worker.stages

    def read_next() -> tuple[Loaded, Prepared] | None:
        loaded = next(loads, None)
        return None if loaded is None else (loaded, stages.prepare(loaded.rows))

    writing: Future | None = None
    in_flight = ""  # the part being written
    reader, writer = ThreadPoolExecutor(1, "batchnlp-read"), ThreadPoolExecutor(1, "batchnlp-write")
    reading = reader.submit(read_next)
    try:
        while (item := reading.result()) is not None:
            reading = reader.submit(read_next)  # prefetch the next shard while this one runs
            loaded, prepared = item
            _infer(worker, loaded, prepared, progress)
            if writing is not None:
                with watchdog.doing(f"writing {in_flight}"):
                    writing.result()  # one write in flight at most; raises the writer's error here
            writing, in_flight = writer.submit(commit, loaded, prepared), loaded.shard.part
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


def _infer(worker: Worker, loaded: Loaded, prepared: Prepared, progress: Progress) -> None:
    """Run a shard's batches; progress moves by each batch's share of the shard's features (a
    retried part's rows were counted when the shard was first annotated)."""
    rows = 0 if loaded.retry is not None else loaded.shard.rows
    per_feature = rows / max(len(prepared.features), 1)
    advanced = 0.0

    def on_batch(features: int) -> None:
        nonlocal advanced
        advanced += features * per_feature
        progress.advance(features * per_feature)
        watchdog.tick()

    with watchdog.doing(f"annotating {loaded.shard.part}"):
        worker.stages.infer(prepared, loaded.seed_offset, on_batch)
    progress.advance(rows - advanced)  # rounding, and rows with no features (errors)
