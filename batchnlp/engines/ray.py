"""The Ray engine: the same job, its shards annotated by a pool of Ray Data actors.

How it keeps the local engine's guarantees: the items of the Ray dataset are the *shards of the
plan* still to do (file + row range), and the parts --retry-errors rewrites. `map_batches` hands
them to a callable class that loads the model once per actor and runs the very same `Worker`
(`work.py`: token-budget batches, decoding, the part written atomically) on each; the actor
writes its Parquet part to the output (a shared file system, or a bucket) and returns what it
wrote; the driver hands each part to the same `Recorder` and `Committer` as the local engine once
it is durable (Ray Data's `Datasink` split: write in the workers, commit on the driver).
Resume, "every row exactly once" and the refusal to mix jobs are therefore the local engine's
per-shard commit protocol, unchanged. The precision is settled once per output, on the driver
(its probe, at the output's first run), and every actor runs in it: parts never mix precisions.
Ray Data's own readers and `write_parquet` are not used: they know no stable row ranges to resume
from, and `write_parquet` appends, so a rerun would duplicate every row. Input and output must be
visible to every node: a shared file system, or object storage (s3://, gs://, az://), which
needs none; each actor opens its own client with the job's storage options and the
environment's credentials.
"""

from __future__ import annotations

import pickle
import re
from typing import Any

from batchnlp import watchdog
from batchnlp.engines import ray_cluster
from batchnlp.errors import BatchNLPError, RunFailed, SpecError, UserError
from batchnlp.faults import Faults
from batchnlp.job import Job, describe_job
from batchnlp.model import source
from batchnlp.model.source import ResolvedModel
from batchnlp.options import RunOptions
from batchnlp.probe import decided_without_rows
from batchnlp.read.plan import Plan, ShardKey
from batchnlp.record import Recorder
from batchnlp.session import open_session
from batchnlp.spec import JobSpec
from batchnlp.storage import configure_retries
from batchnlp.work import Retry, Worker, Written
from batchnlp.write.folder import Folder


class ShardWorker:
    """A Ray Data actor: one model load in the output's pinned precision, then one item of work
    per call (a shard of the plan, or a part to retry), done by the same `Worker` as locally."""

    def __init__(self, spec: JobSpec, plan: Plan, resolved: ResolvedModel, out: Folder, threads: int,
                 faults: Faults, pinned: str | None):
        import socket

        import ray
        import torch

        torch.set_num_threads(threads)
        configure_retries(spec.runtime.retry_seconds)
        session = open_session(describe_job(spec, plan, on_this_node(spec, resolved), quiet=True), pinned=pinned)
        # Which machine wrote each part: the host for people, the Ray node (several may share a host).
        self.worker = Worker(session.stages, out, faults, {"host": socket.gethostname(),
                                                           "node": ray.get_runtime_context().get_node_id()[:12]})

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        results: dict[str, list[Any]] = {"written": []}
        for pickled in batch["item"]:
            item = pickle.loads(pickled)  # a shard's key, or a part to retry (a few hundred bytes)
            loaded = self.worker.retried(item) if isinstance(item, Retry) else self.worker.planned(item)
            results["written"].append(pickle.dumps(self.worker(loaded)))
        return results


def on_this_node(spec: JobSpec, resolved: ResolvedModel) -> ResolvedModel:
    """The model as this node has it: a package or a hub id is resolved here (its path on the
    driver may not exist on this node), and must be the very weights the driver resolved."""
    if spec.model.path:
        return resolved  # a path the job gives: the same on every node (a shared disk), or refused there
    here = source.resolve(spec.model)
    if here.identity.get("weights_sha256") != resolved.identity.get("weights_sha256"):
        raise UserError(f"model: {spec.model.package or spec.model.id} on this node ({here.directory}) is not the "
                        "driver's (other weights); install the same version on every node")
    return here


class RayEngine:
    name = "ray"

    def __init__(self, job: Job, out: Folder, options: RunOptions):
        self.job, self.out, self.options = job, out, options
        if job.plan.shard_count is None:
            raise SpecError("runtime.engine", "the Ray engine needs inputs of known length (files or a "
                                              "save_to_disk dataset), not a streamed hub dataset")
        self.ray = ray_cluster.init(options.address, options.quiet)
        self.actors, self.remote_args, self.threads = ray_cluster.pool(self.ray, job.spec)
        self.precision = ""

    def open(self, done: set[ShardKey], pinned: str | None) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
        """Settle the precision every actor runs in (the actors load the model as they start):
        (the precision, the probe that chose it, the run's figures for its record)."""
        ray, job = self.ray, self.job
        precision, probe, probe_timing = settle_precision(job, done, pinned, on_gpus="num_gpus" in self.remote_args)
        self.precision = precision
        return precision, probe, {
            "engine": "ray", "ray_version": ray.__version__, "ray_address": self.options.address or "local",
            "cluster_resources": ray.cluster_resources(), "actors": self.actors, **self.remote_args,
            "torch_threads_per_actor": self.threads, "dtype": precision, "precision": precision,
            "precision_probe": probe, **probe_timing, "model_cache": job.model_cache,
            "batch_tokens": job.spec.runtime.batch_tokens, "max_batch_size": job.spec.runtime.max_batch_size}

    def run(self, done: set[ShardKey], retries: list[Retry], recorder: Recorder) -> None:
        items: list[ShardKey | Retry] = [key for key in self.job.plan.shard_keys() if key not in done]
        items += retries
        # A part's arrival is progress (and Ray Data's own no-progress timeout stops a pool that hangs).
        with ray_cluster.without_ray_log_lines(self.options.quiet), watchdog.doing("waiting for the Ray actors"):
            try:
                for written in self._results(items):
                    # In order of completion; the part is already durable. The actors' device and
                    # precision go to the run's entry as they report them.
                    if not written.retried:
                        recorder.progress.advance(written.stats["rows"])
                    recorder.record(written, recorder.committer.parts, device=written.stats.get("device"),
                                    dtype=written.stats.get("dtype"))
            except Exception as e:
                raise _clear(e) from None  # one clean line, for the record as for the terminal

    def _results(self, items: list[ShardKey | Retry]) -> Any:
        """What each item's worker wrote, as the actors finish them."""
        if not items:
            return
        ray, job = self.ray, self.job
        dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in items],
                                      override_num_blocks=len(items))
        results = dataset.map_batches(ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=self.actors),
                                      fn_constructor_args=(job.spec, job.plan, job.model, self.out, self.threads,
                                                           self.options.faults, self.precision),
                                      **self.remote_args)
        for row in results.iter_rows():
            written: Written = pickle.loads(row["written"])
            yield written


def settle_precision(job: Job, done: set[ShardKey], pinned: str | None,
                     on_gpus: bool) -> tuple[str, dict[str, Any] | None, dict[str, float]]:
    """(the precision every actor runs in, the probe that chose it, its seconds): the output's
    pinned one; on its first run, `dtype: auto`'s probe here on the driver, once, instead of once
    per actor (GPU actors: float16, as `auto` takes on CUDA, with no probe). The seconds are the
    probe's and the driver's model load for it (`probe_load_seconds`), kept apart as the local
    engine keeps its load and probe apart."""
    none = {"probe_seconds": 0.0, "probe_load_seconds": 0.0}
    if pinned is not None:
        return pinned, None, none
    runtime = job.spec.runtime
    if on_gpus:
        return ("float16" if runtime.dtype == "auto" else runtime.dtype), None, none
    from batchnlp.model import device

    placement = device.choose(runtime)
    if not placement.needs_probe:
        return placement.name, decided_without_rows(placement), none
    session = open_session(job, done)
    return (session.stages.placement.name, session.probe,
            {"probe_seconds": session.probe_seconds, "probe_load_seconds": session.load_seconds})


#: Terminal colour codes, which Ray puts in the tracebacks it forwards.
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clear(error: Exception) -> BatchNLPError:
    """Ray wraps the actor's exception in several layers and tracebacks; the user needs the
    original exception's own line, found at the bottom of the chain."""
    chain, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    for item in chain:
        if isinstance(item, UserError):
            return item
    text = ANSI.sub("", "\n".join(str(item) for item in chain))
    raised = [line for line in re.findall(r"^\s*(?:\w+\.)*\w*(?:Error|Exception): .+$", text, re.M)
              if not line.strip().startswith("ray.") and "UserCodeException" not in line]
    last = ANSI.sub("", str(chain[-1])).strip().splitlines()
    what = raised[-1].strip() if raised else type(chain[-1]).__name__ + (f": {last[0]}" if last else "")
    return RunFailed(f"the Ray job failed and was stopped: {what}; the parts written so far are kept, and "
                     "rerunning the job resumes after them")
