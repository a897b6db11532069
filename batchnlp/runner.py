"""The conductor of a run: plan the input, lock the output, decide whether to resume, start over
or refuse, describe the job, then hand an engine (local or Ray) one `RunContext`.

What the engines share (loading the model, writing a part, recording the run's end) lives in
`session.py`; the engines themselves in `engines/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchnlp.engines.context import RunContext
from batchnlp.errors import OutputConflictError
from batchnlp.model import source
from batchnlp.read.plan import Plan, make_plan
from batchnlp.session import RunResult, describe_job, new_manifest
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.write.lock import OutputLock
from batchnlp.write.manifest import MANIFEST_NAME, Manifest

__all__ = ["RunResult", "clear", "fingerprint", "plan_job", "run"]


def fingerprint(spec: JobSpec, plan: Plan, model_identity: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """What must not change for an output to be resumed. Device, batch budget and workers may change
    between runs (they change speed, not which rows map to which part); dtype and max_length may not.
    Sampling draws its random numbers batch by batch, so there the batch settings must stay too."""
    resolved = spec.resolved()
    runtime = {"dtype": spec.runtime.dtype, "max_length": spec.runtime.max_length}
    if getattr(spec.task.params, "do_sample", False):
        runtime.update(batch_tokens=spec.runtime.batch_tokens, max_batch_size=spec.runtime.max_batch_size)
    return {
        "spec": {
            "input": resolved["input"], "task": resolved["task"], "model": resolved["model"],
            "runtime": runtime,
            "output": {"rows_per_shard": spec.output.rows_per_shard, "prefix": spec.output.prefix},
        },
        "model": {k: v for k, v in model_identity.items() if k != "path"},
        "input": plan.fingerprint(),
        "limit": limit,
    }


def run(spec: JobSpec, overwrite: bool = False, limit: int | None = None, quiet: bool = False,
        engine: str | None = None, address: str | None = None) -> RunResult:
    plan = plan_job(spec, limit)
    resolved = source.resolve(spec.model)
    out = Path(spec.output.path)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out):
        job_fingerprint = fingerprint(spec, plan, resolved.identity, limit)
        manifest = _existing(out, job_fingerprint, overwrite)
        if manifest is not None and manifest.status == "complete":
            return RunResult(out, "complete", 0, 0, manifest.data["totals"].get("shards"),
                             len(manifest.done_shards()))
        job = describe_job(spec, plan, resolved, quiet)
        if manifest is None:
            manifest = new_manifest(job, out, job_fingerprint, limit)
        ctx = RunContext(job, manifest, out, quiet, address or spec.runtime.ray_address)
        if (engine or spec.runtime.engine) == "ray":
            from batchnlp.engines import ray as chosen
        else:
            from batchnlp.engines import local as chosen
        return chosen.run(ctx)


def plan_job(spec: JobSpec, limit: int | None = None) -> Plan:
    task_cls = task_class(spec.task.name)
    return make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params))


def _existing(out: Path, job_fingerprint: dict[str, Any], overwrite: bool) -> Manifest | None:
    """The manifest to resume, or None to start afresh; refuses to mix two jobs in one output."""
    manifest = Manifest.load(out)
    if overwrite:
        clear(out)
        return None
    if manifest is None:
        if any(out.glob("part-*.parquet")):
            raise OutputConflictError(f"output.path: {out} holds Parquet parts but no {MANIFEST_NAME}; choose "
                                      "another output.path or pass --overwrite to replace them")
        return None
    changes = manifest.differences(job_fingerprint)
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise OutputConflictError(f"output.path: {out} was started by a different job ({shown}); pass "
                                  "--overwrite to start over, or choose another output.path")
    return manifest


def clear(out: Path) -> None:
    """Remove what batchnlp wrote (parts, manifest, temporary files), nothing else."""
    for path in [*out.glob("part-*.parquet"), *out.glob(".*.tmp"), out / MANIFEST_NAME]:
        path.unlink(missing_ok=True)
