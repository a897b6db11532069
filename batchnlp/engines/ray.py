"""The Ray engine: the same job, its shards annotated by a pool of Ray Data actors.

How it keeps the local engine's guarantees: the items of the Ray dataset are the *shards of the
plan* still to do (file + row range). `map_batches` hands them to a callable class that loads the
model once per actor and runs the very same `Annotator` (token-budget batches, precision probe,
decoding); the actor reads its shard from the input, writes its Parquet part atomically to the
output (a shared file system, or a bucket) and returns its statistics; the driver records each
part in the same manifest once it is durable.
Resume, "every row exactly once" and the refusal to mix jobs are therefore the local engine's
per-shard commit protocol, unchanged. Ray Data's own readers and `write_parquet` are not used: they
know no stable row ranges to resume from, and `write_parquet` appends, so a rerun would duplicate
every row. Input and output must be visible to every node: a shared file system, or object
storage (s3://, gs://, az://), which needs none; each actor opens its own client with the
job's storage options and the environment's credentials.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from batchnlp.engines.context import RunContext
from batchnlp.errors import BatchNLPError, RunFailed, SpecError, UserError
from batchnlp.model.source import ResolvedModel
from batchnlp.engines.progress import Progress
from batchnlp.read.plan import Plan, ShardKey, part_name, read_shard
from batchnlp.session import RunResult, crash_point, describe_job, open_session, recording, write_part
from batchnlp.spec import JobSpec
from batchnlp.write.folder import Folder

LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
NO_PROGRESS_TIMEOUT_S = 600


class ShardWorker:
    """A Ray Data actor: one model load, then one shard per call."""

    def __init__(self, spec: JobSpec, plan: Plan, resolved: ResolvedModel, out: Folder, threads: int,
                 fail_shard: str | None):
        import torch

        torch.set_num_threads(threads)
        self.out, self.fail_shard = out, fail_shard
        self.session = open_session(describe_job(spec, plan, resolved, quiet=True))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        stats: dict[str, list[Any]] = {}
        for unit, number in zip(batch["unit"], batch["shard"]):
            key = (int(unit), int(number))
            if self.fail_shard == f"{key[0]}-{key[1]}":  # fault injection for the tests (BATCHNLP_TEST_FAIL_SHARD)
                raise RuntimeError(f"injected failure on shard {key}")
            shard, rows = read_shard(self.session.job.plan, key)
            shard_stats = write_part(self.out, shard, *self.session.annotator(rows, shard.seed_offset))
            for key, value in shard_stats.items():
                stats.setdefault(key, []).append(value)
        return stats


def run(ctx: RunContext) -> RunResult:
    plan, manifest = ctx.job.plan, ctx.manifest
    if plan.shard_count is None:
        raise SpecError("runtime.engine", "the Ray engine needs inputs of known length (files or a save_to_disk "
                                          "dataset), not a streamed hub dataset")
    ray = _init(ctx.address, ctx.quiet)
    actors, remote_args, threads = _pool(ray, ctx.job.spec)
    pending = [key for key in plan.shard_keys() if key not in ctx.done]
    ctx.start_run({"engine": "ray", "ray_version": ray.__version__, "ray_address": ctx.address or "local",
                   "cluster_resources": ray.cluster_resources(), "actors": actors, **remote_args,
                   "torch_threads_per_actor": threads})
    progress = Progress(plan.total_rows, ctx.done_rows(), ctx.quiet, ctx.progress_interval)
    began = time.perf_counter()
    written = {"rows": 0, "shards": 0}
    try:
        with recording(manifest), _without_ray_log_lines(ctx.quiet):
            for stats in _results(ray, ctx, pending, actors, remote_args, threads):
                written["rows"] += stats["rows"]  # in order of completion; the part is already durable
                written["shards"] += 1
                manifest.record_shard(stats, run={"rows": written["rows"],
                                                  "seconds": round(time.perf_counter() - began, 3)})
                progress.advance(stats["rows"])
                progress.committed(part_name((stats["unit"], stats["shard"])), stats)
                crash_point("shard-recorded", written["shards"] - 1)
    except Exception as e:
        raise _clear(e) from None
    finally:
        progress.close()
    return RunResult(str(ctx.out), "complete", written["rows"], written["shards"], plan.shard_count, len(ctx.done))


#: A line of Ray's C++ logging ("[2026-11-28 10:45:13,958 E 29221 29221] core_worker.cc:2465: ...").
RAY_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")


@contextlib.contextmanager
def _without_ray_log_lines(quiet: bool) -> Iterator[None]:
    """With -q, drop the lines Ray's C++ core prints on this process's stderr (it warns once per
    actor pool that Ray Data's own actors keep their constructor arguments in the object store;
    its log level can only be set by an environment variable, which prints a line of its own).
    Deliberately a filter on file descriptor 2: the C++ code writes there directly, past Python.
    Every other line goes through unchanged, in order."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def forward() -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                if not RAY_LOG_LINE.match(line):
                    os.write(original, line)

    thread = threading.Thread(target=forward, name="batchnlp-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the thread reads to its end
        thread.join(timeout=10)
        os.close(original)


def _results(ray: Any, ctx: RunContext, pending: list[ShardKey], actors: int, remote_args: dict[str, Any],
             threads: int) -> Any:
    """The statistics of each pending shard's part, as the actors finish them."""
    if not pending:
        return
    job = ctx.job
    items = ray.data.from_items([{"unit": u, "shard": j} for u, j in pending], override_num_blocks=len(pending))
    results = items.map_batches(ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                fn_constructor_args=(job.spec, job.plan, job.model, ctx.out, threads,
                                                     os.environ.get("BATCHNLP_TEST_FAIL_SHARD")),
                                **remote_args)
    for stats in results.iter_rows():
        yield dict(stats)


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
    text = "\n".join(str(item) for item in chain)
    raised = [line for line in re.findall(r"^\s*(?:\w+\.)*\w*(?:Error|Exception): .+$", text, re.M)
              if not line.strip().startswith("ray.") and "UserCodeException" not in line]
    what = raised[-1].strip() if raised else f"{type(chain[-1]).__name__}: {chain[-1]}"
    return RunFailed(f"the Ray job failed and was stopped: {what}; the parts written so far are kept, and "
                     "rerunning the job resumes after them")


def _init(address: str | None, quiet: bool) -> Any:
    """Connect to a cluster, or start a throwaway local one with settings safe for small machines."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A job that makes no progress for this long is stopped rather than left hanging (Ray's
    # default is 30 minutes); read when Ray Data is imported.
    os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", str(NO_PROGRESS_TIMEOUT_S))
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("runtime.engine: ray needs the ray extra: pip install -e '.[ray]'") from None
    if quiet:
        import logging

        # An actor's failure is reported by batchnlp in one line; Ray Data's own ERROR lines and
        # abbreviated tracebacks would repeat it.
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=not quiet)
    else:
        # Auth off only for a cluster that lives and dies with this process on this machine.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        cores = os.cpu_count() or 1
        # Twice the cores as logical CPUs: the actors take half (one thread each), which leaves
        # the scheduler room for the tasks that feed them (a pool holding every CPU deadlocks).
        ray.init(num_cpus=2 * cores, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 logging_level="ERROR", log_to_driver=not quiet)
        _end_with_this_process(ray)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not quiet
    return ray


#: Run by the watcher: until the driver is gone (its pipe closes), note every second the local
#: cluster's processes and their descendants (the raylet starts the agents and workers; once
#: their parent dies they are re-parented and could no longer be told apart); then kill those
#: still alive. A process is known by pid and start time, so a reused pid is left alone.
_WATCHER = r"""
import os, select, signal, sys

def stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]  # parent, start time

def descendants(roots):
    children = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent, started = stat(entry)
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append((int(entry), started))
    found, todo = set(), list(roots)
    while todo:
        process = todo.pop()
        if process not in found:
            found.add(process)
            todo.extend(children.get(process[0], []))
    return found

known = set()
for pid in map(int, sys.argv[1:]):
    try:
        known.add((pid, stat(pid)[1]))
    except (OSError, ValueError, IndexError):
        pass
while not select.select([0], [], [], 1.0)[0]:
    known |= descendants(known)
if os.read(0, 16) != b"done":
    for pid, started in known:
        try:
            if stat(pid)[1] == started:
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
"""


def _end_with_this_process(ray: Any) -> None:
    """A driver killed with SIGKILL cannot stop the local cluster it started, and Ray's agents
    notice only after a minute or more. A small watcher process holds the read end of a pipe whose
    write end only this process holds: when this process ends, however it ends, the pipe closes
    and the watcher kills the cluster's processes and their descendants (GCS, raylet, agents,
    workers). A clean exit tells the watcher so first, and Ray's own shutdown does the rest."""
    try:
        node = ray._private.worker._global_node
        pids = [info.process.pid for infos in node.all_processes.values() for info in infos if info.process]
    except AttributeError:  # Ray's internals moved: keep Ray's own clean-up only
        return
    read, write = os.pipe()  # not inherited by subprocesses; forks are the DataLoader's, not used here
    subprocess.Popen([sys.executable, "-c", _WATCHER, *map(str, pids)], stdin=read, start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(read)

    def told_done() -> None:
        try:
            os.write(write, b"done")
            os.close(write)
        except OSError:  # the watcher is gone already: nothing to tell
            pass

    import atexit

    atexit.register(told_done)


def _pool(ray: Any, spec: JobSpec) -> tuple[int, dict[str, Any], int]:
    """(actors, their resource requests, torch threads each): one actor per GPU on a GPU cluster,
    never asking for GPUs the cluster lacks; else CPU actors on half the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    device = spec.runtime.device
    if device.startswith("cuda") and gpus == 0:
        raise SpecError("runtime.device", f"{device} asked for, but the Ray cluster has no GPUs "
                                          f"({resources.get('CPU', 0):.0f} CPUs); use device: auto or cpu")
    if gpus and device != "cpu":
        return gpus, {"num_gpus": 1, "num_cpus": 1}, 1
    cpus = int(resources.get("CPU", 1))
    return max(1, cpus // 2), {"num_cpus": 1}, 1
