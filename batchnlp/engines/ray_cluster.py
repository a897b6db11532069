"""A Ray cluster's lifecycle for the Ray engine: connecting to one or starting a throwaway local
one with settings safe for small machines (`init`), taking that local cluster along when the
driver dies however it dies (`end_with_this_process`, with `ray_watcher.py`), sizing the actor
pool (`pool`) and, with -q, keeping Ray's C++ log lines off stderr (`without_ray_log_lines`)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from batchnlp.errors import SpecError, UserError
from batchnlp.spec import RAY_CLIENT, JobSpec
from batchnlp.storage import is_url

LOCAL_OBJECT_STORE_BYTES = 512 * 2**20
NO_PROGRESS_TIMEOUT_S = 600


def init(address: str | None, quiet: bool) -> Any:
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
        # Ray starts its workers at nice 15: on a machine other work keeps busy they got ~3% of a
        # core each (an actor's model load took minutes under two busy processes), where the
        # local engine, at the driver's own priority, gets its share. The actors are the job.
        os.environ.setdefault("RAY_worker_niceness", "0")
        cores = os.cpu_count() or 1
        # Twice the cores as logical CPUs: the actors take half (one thread each), which leaves
        # the scheduler room for the tasks that feed them (a pool holding every CPU deadlocks).
        ray.init(num_cpus=2 * cores, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 logging_level="ERROR", log_to_driver=not quiet)
        end_with_this_process(ray)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not quiet
    return ray


def end_with_this_process(ray: Any) -> None:
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
    subprocess.Popen([sys.executable, "-m", "batchnlp.engines.ray_watcher", *map(str, pids)], stdin=read,
                     start_new_session=True,
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


def check_cluster_paths(spec: JobSpec, address: str | None) -> None:
    """On an existing cluster every node must see the input and the output where the driver does:
    a bucket, or a local path the job declares shared. Refused before anything runs."""
    if not address:
        return
    if address.startswith("ray://"):
        raise SpecError("--address", RAY_CLIENT)
    if spec.runtime.shared_storage:
        return
    dataset = spec.input.dataset if spec.input.dataset and Path(spec.input.dataset).exists() else None
    for key, path in (("input.path", spec.input.path), ("input.dataset", dataset), ("output.path", spec.output.path)):
        if path and not is_url(path):
            raise SpecError(key, f"{path} is a local path, and the Ray cluster at {address} may run on other "
                                 "machines, which would write to or read from their own disks; use a bucket "
                                 "(s3://...), or set runtime.shared_storage: true if every node mounts it at "
                                 "this path")


def pool(ray: Any, spec: JobSpec) -> tuple[int, dict[str, Any], int]:
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


#: A line of Ray's C++ logging ("[2026-11-28 10:45:13,958 E 29221 29221] core_worker.cc:2465: ...").
RAY_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] ")


@contextlib.contextmanager
def without_ray_log_lines(quiet: bool) -> Iterator[None]:
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
