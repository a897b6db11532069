"""The conductor of a run: lock the output, check that it belongs to this job, plan the input
against what the output already holds (new, touched, changed and removed files), decide what to
do, then hand an engine (local or Ray) one `RunContext`.

What the engines share (loading the model, writing a part, recording the run's end) lives in
`session.py`; the engines themselves in `engines/`.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from batchnlp.engines.context import RunContext
from batchnlp.errors import OutputConflictError, UserError
from batchnlp.log import event
from batchnlp.model import source
from batchnlp.read.plan import Plan, make_plan
from batchnlp.read.source import Unit
from batchnlp.session import RunResult, describe_job, new_manifest
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.write.folder import Folder
from batchnlp.write.lock import LOCK_NAME
from batchnlp.write.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME, Manifest

__all__ = ["Policy", "RunResult", "clear", "fingerprint", "plan_job", "run"]


@dataclass(frozen=True)
class Policy:
    """What to do with input files that differ from what the output annotated."""

    #: Annotate a file whose content changed again (its parts are replaced); else refuse.
    reprocess_changed: bool = False
    #: A file that was annotated and is gone: refuse, drop its parts, or keep them.
    removed: Literal["refuse", "drop", "keep"] = "refuse"


def fingerprint(spec: JobSpec, model_identity: dict[str, Any]) -> dict[str, Any]:
    """What must not change for an output to be continued: the job (input columns and paths, task,
    model and its weights, dtype, max_length, shard size, prefix). Device, batch budget and workers
    may change between runs (they change speed, not which rows map to which part). Sampling draws
    its random numbers batch by batch, so there the batch settings must stay too. The input's
    files are compared one by one instead (new files are annotated, changed ones refused), and
    --limit may grow."""
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
    }


def run(spec: JobSpec, overwrite: bool = False, limit: int | None = None, quiet: bool = False,
        engine: str | None = None, address: str | None = None, policy: Policy = Policy(),
        unit_order: Sequence[Unit] = (), progress_interval: float = 30.0) -> RunResult:
    """Run (or continue) a job. `unit_order`: units to number as given (a rerun of a recorded output)."""
    out = Folder(spec.output.path, spec.output.storage_options)
    created = False
    try:
        created = out.create()
        with out.lock():
            return _locked_run(spec, out, overwrite, limit, quiet, engine, address, policy, unit_order,
                               progress_interval)
    except OSError as e:
        raise _output_error(out, e) from None
    finally:
        if created:
            out.remove_if_empty({LOCK_NAME})  # a run that failed before writing leaves no trace


def _output_error(folder: Folder, error: OSError) -> OSError | UserError:
    """Writing the output failed for a reason the user can fix: one line instead of a traceback."""
    if not folder.local:
        return error
    out = folder.directory
    where = Path(error.filename) if error.filename else None
    if isinstance(error, PermissionError) and where is not None and (where == out or out in where.parents
                                                                     or where in out.parents):
        return OutputConflictError(f"output.path: {out} cannot be written ({error.strerror}: {where}); fix its "
                                   "permissions or choose another output.path")
    if error.errno == errno.ENOSPC or "No space left on device" in str(error):
        return UserError(f"output.path: {out}: no space left on the device; the committed parts are kept: free "
                         "space, then run the job again to resume")
    return error


def _locked_run(spec: JobSpec, out: Folder, overwrite: bool, limit: int | None, quiet: bool, engine: str | None,
                address: str | None, policy: Policy, unit_order: Sequence[Unit],
                progress_interval: float) -> RunResult:
    manifest = _existing(out, overwrite)
    previous = manifest.units() if manifest else list(unit_order)
    recheck = {u.name for u in previous} - (manifest.complete_units() if manifest else set())
    plan = plan_job(spec, limit, previous, recheck)
    resolved = source.resolve(spec.model)
    job_fingerprint = fingerprint(spec, resolved.identity)
    if manifest is not None:
        _refuse_another_job(manifest, job_fingerprint)
        _apply_policy(manifest, plan, policy)
        if (finished := _nothing_to_do(manifest, plan, limit)) is not None:
            return finished
    job = describe_job(spec, plan, resolved, quiet)
    if manifest is None:
        manifest = new_manifest(job, out, job_fingerprint)
    done = manifest.done_shards(plan)
    _record_plan(manifest, plan, limit)
    ctx = RunContext(job, manifest, out, quiet, done, address or spec.runtime.ray_address, progress_interval)
    if (engine or spec.runtime.engine) == "ray":
        from batchnlp.engines import ray as chosen
    else:
        from batchnlp.engines import local as chosen
    result = chosen.run(ctx)
    result.changes = plan.changes
    return result


def plan_job(spec: JobSpec, limit: int | None = None, previous: Sequence[Unit] = (),
             recheck: set[str] | frozenset[str] = frozenset()) -> Plan:
    task_cls = task_class(spec.task.name)
    return make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params),
                     previous, recheck)


def _apply_policy(manifest: Manifest, plan: Plan, policy: Policy) -> None:
    """Refuse, or handle as asked, the files that changed or went away since they were annotated.
    Parts are deleted only after the manifest that no longer lists them is saved."""
    kept = {u["name"] for u in manifest.kept_removed()}
    changed = plan.changes["changed"]
    removed = [name for name in plan.changes["removed"] if name not in kept or policy.removed == "drop"]
    if changed and not policy.reprocess_changed:
        raise OutputConflictError(f"input.path: {_names(changed)} changed since {_it(changed)} annotated (other "
                                  "content); pass --reprocess-changed to annotate it again, or restore it")
    if removed and policy.removed == "refuse":
        raise OutputConflictError(f"input.path: {_names(removed)} {'was' if len(removed) == 1 else 'were'} annotated "
                                  "but no longer exist; pass --drop-removed to drop their rows from the output, "
                                  "or --keep-removed to keep them")
    doomed = [part for name in changed for part in manifest.drop_unit(name)]
    for name in removed:
        if policy.removed == "drop":
            doomed += manifest.drop_unit(name)
        else:
            manifest.keep_removed(name)
    plan.changes["dropped" if policy.removed == "drop" else "kept"] = removed
    if doomed or removed:
        manifest.save()
    for part in doomed:
        manifest.folder.remove(part)
    for name in changed:
        event("input", f"{name} changed: its rows are annotated again", level=30, file=name)


def _nothing_to_do(manifest: Manifest, plan: Plan, limit: int | None) -> RunResult | None:
    """The result when every planned shard is already done (no model is loaded then), else None."""
    keys = plan.shard_keys()
    done = manifest.done_shards(plan)
    for part in manifest.missing_parts():
        event("verify", f"{part} is listed in the manifest but missing or altered on disk; its rows are "
                        "annotated again", level=30, part=part)
    if keys is None or not set(keys) <= done:
        return None
    if plan.changes["touched"] or manifest.status != "complete" or plan.changes.get("dropped"):
        _record_plan(manifest, plan, limit)  # remember the new modification times: no rehash next time
        manifest.data["status"] = "complete"
        manifest.save()
    return RunResult(str(manifest.folder), "complete", 0, 0, len(keys), len(done), plan.changes)


def _record_plan(manifest: Manifest, plan: Plan, limit: int | None) -> None:
    manifest.set_units(plan.read_units)
    kept_rows = sum(u["rows"] or 0 for u in manifest.kept_removed())
    manifest.data["planned"] = {"rows": None if plan.total_rows is None else plan.total_rows + kept_rows,
                                "shards": plan.shard_count, "limit": limit}


def _names(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _it(names: list[str]) -> str:
    return "it was" if len(names) == 1 else "they were"


def _existing(out: Folder, overwrite: bool) -> Manifest | None:
    """The manifest to continue, or None to start afresh."""
    if overwrite:
        clear(out)
        return None
    out.remove_temporary()
    manifest = Manifest.load(out)
    if manifest is None and out.names():
        raise OutputConflictError(f"output.path: {out} holds Parquet parts but no {MANIFEST_NAME}; choose "
                                  "another output.path or pass --overwrite to replace them")
    return manifest


def _refuse_another_job(manifest: Manifest, job_fingerprint: dict[str, Any]) -> None:
    """Two jobs never mix in one output."""
    out = manifest.folder
    changes = manifest.differences(job_fingerprint)
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise OutputConflictError(f"output.path: {out} was started by a different job ({shown}); pass "
                                  "--overwrite to start over, or choose another output.path")


def clear(out: Folder) -> None:
    """Remove what batchnlp wrote (parts, manifest, temporary files), nothing else."""
    out.remove_temporary()
    for name in [*out.names(), MANIFEST_NAME, LEGACY_MANIFEST_NAME]:
        out.remove(name)
