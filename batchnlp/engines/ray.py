"""The Ray engine: the same job, its shards annotated by a pool of Ray Data actors.

How it keeps the local engine's guarantees: the items of the Ray dataset are the *shards of the
plan* still to do (file + row range). `map_batches` hands them to a callable class that loads the
model once per actor and runs the very same `Annotator` (token-budget batches, precision probe,
decoding); the actor reads its shard from the input, writes its Parquet part atomically to the
output (a shared file system, or a bucket) and returns its statistics; the driver hands each
part to the same `Committer` as the local engine once it is durable (Ray Data's `Datasink`
split: write in the workers, commit on the driver).
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

import re
from typing import Any

from batchnlp import watchdog
from batchnlp.engines import ray_cluster
from batchnlp.engines.context import RunContext
from batchnlp.engines.progress import Progress
from batchnlp.errors import BatchNLPError, RunFailed, SpecError, UserError
from batchnlp.faults import Faults
from batchnlp.model import source
from batchnlp.model.source import ResolvedModel
from batchnlp.read.plan import Plan, ShardKey, part_name, read_shard
from batchnlp.session import RunResult, describe_job, open_session
from batchnlp.spec import JobSpec
from batchnlp.storage import configure_retries
from batchnlp.write.committer import write_part
from batchnlp.write.folder import Folder


class ShardWorker:
    """A Ray Data actor: one model load in the output's pinned precision, then one shard per call."""

    def __init__(self, spec: JobSpec, plan: Plan, resolved: ResolvedModel, out: Folder, threads: int,
                 faults: Faults, pinned: str | None):
        import socket

        import torch

        torch.set_num_threads(threads)
        configure_retries(spec.runtime.retry_seconds)
        self.out, self.faults = out, faults
        self.session = open_session(describe_job(spec, plan, on_this_node(spec, resolved), quiet=True),
                                    pinned=pinned)
        placement = self.session.annotator.placement
        import ray

        # Which machine wrote each part: the host for people, the Ray node (several may share a host).
        self.precision = {"device": str(placement.device), "dtype": placement.name, "host": socket.gethostname(),
                          "node": ray.get_runtime_context().get_node_id()[:12]}

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        stats: dict[str, list[Any]] = {}
        for unit, number in zip(batch["unit"], batch["shard"]):
            self.faults.check_shard(int(unit), int(number))
            shard, rows = read_shard(self.session.job.plan, (int(unit), int(number)))
            table, shard_stats = self.session.annotator(rows, shard.seed_offset)
            shard_stats = write_part(self.out, shard, table, {**shard_stats, **self.precision}, self.faults,
                                     self.session.job.spec.input)
            for key, value in shard_stats.items():
                stats.setdefault(key, []).append(value)
        return stats


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


def run(ctx: RunContext) -> RunResult:
    plan = ctx.job.plan
    if plan.shard_count is None:
        raise SpecError("runtime.engine", "the Ray engine needs inputs of known length (files or a save_to_disk "
                                          "dataset), not a streamed hub dataset")
    ray = ray_cluster.init(ctx.address, ctx.quiet)
    actors, remote_args, threads = ray_cluster.pool(ray, ctx.job.spec)
    precision, probe, probe_timing = settle_precision(ctx, on_gpus="num_gpus" in remote_args)
    pending = [key for key in plan.shard_keys() if key not in ctx.done]
    committer = ctx.committer()
    ctx.start_run(committer, {
        "engine": "ray", "ray_version": ray.__version__, "ray_address": ctx.address or "local",
        "cluster_resources": ray.cluster_resources(), "actors": actors, **remote_args,
        "torch_threads_per_actor": threads, "dtype": precision, "precision": precision, "precision_probe": probe,
        **probe_timing, "model_cache": ctx.job.model_cache,
        "batch_tokens": ctx.job.spec.runtime.batch_tokens,
        "max_batch_size": ctx.job.spec.runtime.max_batch_size}, probe, precision)
    progress = Progress(plan.total_rows, ctx.done_rows(), ctx.quiet, ctx.progress_interval)
    try:
        # A part's arrival is progress (and Ray Data's own no-progress timeout stops a pool that hangs).
        with committer.recording(), ray_cluster.without_ray_log_lines(ctx.quiet), \
                watchdog.doing("waiting for the Ray actors"):
            try:
                for stats in _results(ray, ctx, pending, actors, remote_args, threads, precision):
                    # In order of completion; the part is already durable. The actors' device and
                    # precision go to the run's entry as they report them.
                    committer.record(stats, committer.parts, device=stats["device"], dtype=stats["dtype"])
                    watchdog.committed()
                    progress.advance(stats["rows"])
                    progress.committed(part_name((stats["unit"], stats["shard"])), stats)
            except Exception as e:
                raise _clear(e) from None  # one clean line, for the record as for the terminal
    finally:
        progress.close()
    return RunResult(str(ctx.out), "partial" if plan.partial else "complete", committer.rows, committer.parts,
                     plan.shard_count, len(ctx.done))


def settle_precision(ctx: RunContext, on_gpus: bool) -> tuple[str, dict[str, Any] | None, dict[str, float]]:
    """(the precision every actor runs in, the probe that chose it, its seconds): the output's
    pinned one; on its first run, `dtype: auto`'s probe here on the driver, once, instead of once
    per actor (GPU actors: float16, as `auto` takes on CUDA, with no probe). The seconds are the
    probe's and the driver's model load for it (`probe_load_seconds`), kept apart as the local
    engine keeps its load and probe apart."""
    none = {"probe_seconds": 0.0, "probe_load_seconds": 0.0}
    if ctx.pinned is not None:
        return ctx.pinned, None, none
    runtime = ctx.job.spec.runtime
    if on_gpus:
        return ("float16" if runtime.dtype == "auto" else runtime.dtype), None, none
    from batchnlp.model import device
    from batchnlp.session import decided_without_rows

    placement = device.choose(runtime)
    if not placement.needs_probe:
        return placement.name, decided_without_rows(placement), none
    session = open_session(ctx.job, ctx.done)
    return (session.annotator.placement.name, session.probe,
            {"probe_seconds": session.probe_seconds, "probe_load_seconds": session.load_seconds})


def _results(ray: Any, ctx: RunContext, pending: list[ShardKey], actors: int, remote_args: dict[str, Any],
             threads: int, precision: str) -> Any:
    """The statistics of each pending shard's part, as the actors finish them."""
    if not pending:
        return
    job = ctx.job
    items = ray.data.from_items([{"unit": u, "shard": j} for u, j in pending], override_num_blocks=len(pending))
    results = items.map_batches(ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_args=(job.spec, job.plan, job.model, ctx.out, threads, ctx.faults,
                                                     precision),
                                **remote_args)
    for stats in results.iter_rows():
        yield dict(stats)


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
