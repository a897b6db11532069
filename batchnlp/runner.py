"""The conductor of a run: lock the output, check that it belongs to this job, plan the input
against what the output already holds (new, touched, changed and removed files), decide what to
do, then hand an engine (local or Ray) one `RunContext`.

What the engines share (loading the model, writing a part, recording the run's end) lives in
`session.py`; the engines themselves in `engines/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

from batchnlp import __version__, watchdog
from batchnlp.engines.context import RunContext
from batchnlp.errors import SKIPPED, OutputConflictError, SpecError, UserError, exit_code, is_disk_full
from batchnlp.log import bars_allowed, event
from batchnlp.model import source
from batchnlp.read import columns, ids
from batchnlp.read.plan import Plan, make_plan
from batchnlp.read.source import Unit
from batchnlp.faults import NONE, Faults
from batchnlp.session import RunResult, describe_job
from batchnlp.spec import JobSpec
from batchnlp.storage import configure_retries
from batchnlp.tasks import task_class
from batchnlp.write import migrate
from batchnlp.write.commits import LOG_DIR, CommitLog
from batchnlp.write.folder import Folder
from batchnlp.write.lock import LOCK_NAME
from batchnlp.write.state import OutputState, now, portable_name, record_of, unit_of

__all__ = ["Policy", "RunResult", "clear", "fingerprint", "plan_job", "run"]


@dataclass(frozen=True)
class Policy:
    """What this run does with input files that differ from what the output annotated: the job's
    `output.on_changed` / `output.on_removed` (the unattended policy), unless the command line
    says otherwise for this run."""

    #: --reprocess-changed: annotate a file whose content changed again (its parts are replaced),
    #: whatever output.on_changed says.
    reprocess_changed: bool = False
    #: --drop-removed / --keep-removed: a file that was annotated and is gone: refuse, drop its
    #: parts, or keep them (None: output.on_removed).
    removed: Literal["refuse", "drop", "keep"] | None = None
    #: Annotate again the rows whose annotation failed (`error` set), in place in their parts.
    retry_errors: bool = False

    def on_changed(self, spec: JobSpec) -> str:
        """refuse, reprocess or skip."""
        return "reprocess" if self.reprocess_changed else spec.output.on_changed

    def on_removed(self, spec: JobSpec) -> str:
        """refuse, drop or keep."""
        return self.removed or spec.output.on_removed


def fingerprint(spec: JobSpec, model_identity: dict[str, Any]) -> dict[str, Any]:
    """What must not change for an output to be continued, built from what each field of the spec
    declares (`identity` in spec.py: a new field without a declaration fails here, never slips
    out): the input's columns and paths, the task, the model and its weights, dtype, max_length,
    shard size, prefix. Device, batch budget and workers may change between runs (speed, not which
    rows map to which part); sampling draws its random numbers batch by batch, so there the batch
    settings must stay too. The input's files are compared one by one instead (new files are
    annotated, changed ones refused), and --limit may grow. Paths are as written where relative to
    the job's folder, so a project moved as a whole is the same job."""
    portable = spec.portable()
    sampling = bool(getattr(spec.task.params, "do_sample", False))
    sections: dict[str, Any] = {"task": portable["task"]}  # every task parameter changes the output
    for name in ("input", "model", "runtime", "output"):
        sections[name] = {}
        for f in dataclasses.fields(getattr(spec, name)):
            identity = f.metadata.get("identity")
            if identity is None:
                raise TypeError(f"{name}.{f.name} does not declare whether it changes the output (identity=...)")
            if identity is True or (identity == "sampling" and sampling):
                sections[name][f.name] = portable[name][f.name]
    return {"spec": sections, "model": {k: v for k, v in model_identity.items() if k != "path"}}


def run(spec: JobSpec, overwrite: bool = False, limit: int | None = None, quiet: bool = False,
        engine: str | None = None, address: str | None = None, policy: Policy = Policy(),
        unit_order: Sequence[Unit] = (), progress_interval: float = 30.0, faults: Faults = NONE,
        pin: str | None = None, exit_at_once: bool = False) -> RunResult:
    """Run (or continue) a job. `unit_order`: units to number as given, `pin`: the precision to
    use without a probe on a new output (both: a rerun of a recorded output). `exit_at_once`:
    a stall that does not stop the run cleanly ends the process (the CLI)."""
    if (engine or spec.runtime.engine) == "ray":
        from batchnlp.engines.ray_cluster import check_cluster_paths

        check_cluster_paths(spec, address or spec.runtime.ray_address)
    out = Folder(spec.output.path, spec.output.storage_options)
    configure_retries(spec.runtime.retry_seconds)
    created = False
    began = time.perf_counter()
    event("started", f"run {spec.source_file or 'a job'} into {out} (engine {engine or spec.runtime.engine}, "
                     f"batchnlp {__version__})", job=spec.source_file, output=str(out),
          engine=engine or spec.runtime.engine, version=__version__, terminal=False)
    seen: dict[str, CommitLog] = {}  # the output's log, once opened: what the run committed
    with watchdog.watching(spec.runtime.stall_seconds, progress_interval, bars_allowed(quiet), exit_at_once):
        try:
            created = out.create()
            with out.lock():
                result = _locked_run(spec, out, overwrite, limit, quiet, engine, address, policy, unit_order,
                                     progress_interval, faults, pin, seen)
            seconds = round(time.perf_counter() - began, 1)
            skipped = (result.changes or {}).get("skipped", [])
            event("finished", f"{result.status}: {result.rows_written} rows in {result.shards_written} parts, "
                              f"{seconds} s" + (f"; {len(skipped)} changed input file(s) skipped" if skipped else ""),
                  status=result.status, rows=result.rows_written, parts=result.shards_written, seconds=seconds,
                  skipped=skipped, exit_code=SKIPPED if skipped else 0, terminal=False)
            return result
        except BaseException as e:
            error = _output_error(out, e) if isinstance(e, OSError) else e
            _log_end(error, began, seen.get("log"))
            if error is e:
                raise
            raise error from None
        finally:
            if created:
                out.remove_if_empty({LOCK_NAME})  # a run that failed before writing leaves no trace


def _log_end(error: BaseException, began: float, log: CommitLog | None) -> None:
    """The run's end for the log file: interrupted or failed, with its rows, seconds, exit code."""
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    rows = 0
    with contextlib.suppress(Exception):  # what the log says this run committed, if it got so far
        rows = log.state.runs[-1].rows if log is not None and log.state.runs else 0
    seconds = round(time.perf_counter() - began, 1)
    text = f"{type(error).__name__}" + (f": {error}" if str(error) else "")
    event(status, f"{status} after {seconds} s, {rows} rows committed by this run: {text}",
          level=logging.WARNING if status == "interrupted" else logging.ERROR, status=status, rows=rows,
          seconds=seconds, exit_code=exit_code(error), error=text, file_only=True)


def _output_error(folder: Folder, error: OSError) -> OSError | UserError:
    """Writing the output failed for a reason the user can fix: one line instead of a traceback."""
    if not folder.local:
        return error
    out = folder.directory
    where = Path(error.filename) if error.filename else None
    refused = isinstance(error, PermissionError) or error.errno == errno.EROFS  # (EACCES, EPERM: PermissionError)
    if refused and where is not None and (where == out or out in where.parents or where in out.parents):
        return OutputConflictError(f"output.path: {out} cannot be written ({error.strerror}: {where}); make it "
                                   "writable (permissions, a read-only mount) or choose another output.path; "
                                   "its committed parts are kept")
    if isinstance(error, FileNotFoundError) and where is not None and (where == out or out in where.parents):
        return OutputConflictError(f"output.path: {out} vanished while this run wrote it ({where}); the run is not "
                                   "complete: run the job again to annotate what is missing")
    if is_disk_full(error):
        return UserError(f"output.path: {out}: no space left on the device; the committed parts are kept: free "
                         "space, then run the job again to resume")
    return error


def _locked_run(spec: JobSpec, out: Folder, overwrite: bool, limit: int | None, quiet: bool, engine: str | None,
                address: str | None, policy: Policy, unit_order: Sequence[Unit],
                progress_interval: float, faults: Faults, pin: str | None, seen: dict[str, CommitLog]) -> RunResult:
    log = _existing(out, overwrite)
    seen["log"] = log
    log.on_point = faults.point
    state, base = log.state, spec.base_dir or None
    resumed = bool(state.runs) and state.runs[-1].status in ("running", "killed", "failed", "interrupted")
    if state.runs and state.runs[-1].status == "running":  # we hold the lock: that run is dead
        log.stage({"run_finished": {"status": "killed", "at": now(), "final": False}})
    plan, complete = plan_against(spec, state, limit, unit_order)
    resolved = source.resolve(spec.model)
    job_fingerprint = fingerprint(spec, resolved.identity)
    chosen_engine = engine or spec.runtime.engine
    if state.job and (refusal := another_job(state.fingerprint, job_fingerprint, out)) is not None:
        raise refusal
    log.stage({"run_started": {"started_at": now(), "engine": chosen_engine, "pid": os.getpid(),
                               "host": socket.gethostname()}})
    if spec.input.incremental == "ids":
        _increments(spec, log, out, plan, policy.on_changed(spec), complete)
        for unit in plan.units:  # a resumed night reads the rows its selection fixed
            if unit.selection and not unit.superseded and unit.key not in plan.selections:
                plan.selections[unit.key] = ids.read_selection(out.read_table(unit.selection))
    doomed = _apply_policy(log, plan, policy.on_changed(spec), policy.on_removed(spec), base, complete) \
        if state.job else []
    _record_plan(log, plan, limit, base)
    if doomed:  # no commit may list them by the time they go; their names are written again soon
        log.commit()
        _delete(out, doomed)
    stored = out.sizes()
    event("planned", "planned: " + (", ".join(f"{len(v)} {k}" for k, v in plan.changes.items() if v) or "no change")
          + f" input file(s); {plan.total_rows} rows in {plan.shard_count} parts", rows=plan.total_rows,
          parts=plan.shard_count, terminal=False, **{k: len(v) for k, v in plan.changes.items()})
    done = state.done_shards(plan, stored)
    retry = _to_retry(out, state, done) if policy.retry_errors else []
    if retry and chosen_engine == "ray":
        raise SpecError("--retry-errors", "rows are retried on the local engine; run with --engine local")
    if state.job and not retry and (finished := _nothing_to_do(log, plan, stored, done)) is not None:
        finished.resumed = resumed
        return finished
    plan.schema = _input_columns(spec, state, plan, done)
    job = describe_job(spec, plan, resolved, quiet)
    if state.job and state.pinned.input_schema != columns.serialize(plan.schema):  # a file added columns
        log.stage({"pin": {"input_schema": columns.serialize(plan.schema),
                           "arrow_schema": columns.serialize(job.schema),
                           "schema": [f"{f.name}: {f.type}" for f in job.schema]}})
    ctx = RunContext(job, log, out, quiet, done, address or spec.runtime.ray_address, progress_interval, faults,
                     job_fingerprint, pin, retry)
    if chosen_engine == "ray":
        from batchnlp.engines import ray as chosen
    else:
        from batchnlp.engines import local as chosen
    try:
        result = chosen.run(ctx)
    except BaseException as e:
        if log.pending and log.state.version >= 0:  # failed before its first commit (the model load):
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"  # the history says so
            with contextlib.suppress(Exception):
                log.commit({"run_finished": {"status": status, "at": now(), "error": f"{type(e).__name__}: {e}"}})
        raise
    result.changes, result.resumed = plan.changes, resumed
    return result


def plan_against(spec: JobSpec, state: OutputState, limit: int | None,
                 unit_order: Sequence[Unit] = ()) -> tuple[Plan, set[int]]:
    """The input as it is now, planned against the units the output recorded (new, touched,
    changed, removed; a unit not complete is hashed again), and the keys of the complete units.
    `unit_order`: a new output's units numbered as given (a rerun)."""
    previous = [unit_of(u, spec.base_dir or None) for u in state.unit_list()] if state.job else list(unit_order)
    complete = state.complete_units()
    recheck = {u.name for u in previous if u.key not in complete} if state.job else set()
    with watchdog.doing(f"listing and counting the input at {spec.input.path or spec.input.dataset}"):
        return plan_job(spec, limit, previous, recheck), complete


def plan_job(spec: JobSpec, limit: int | None = None, previous: Sequence[Unit] = (),
             recheck: set[str] | frozenset[str] = frozenset()) -> Plan:
    task_cls = task_class(spec.task.name)
    return make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params),
                     previous, recheck)


def _apply_policy(log: CommitLog, plan: Plan, on_changed: str, on_removed: str, base: str | None,
                  complete: set[int]) -> list[str]:
    """Refuse, or handle as the policy says, the files that changed or went away since they were
    annotated; return the parts to delete once a commit no longer lists them (before any is
    written again)."""
    state = log.state
    named, removed, refusals = policy_view(state, plan.changes, on_changed, on_removed, base)
    if refusals:
        raise refusals[0]
    if on_changed == "skip":
        _skip_changed(state, plan, list(plan.changes["changed"]), base, complete)
    changed = plan.changes["changed"]
    keys = {named[u.key]: u.key for u in state.unit_list() if not u.superseded}
    doomed = []
    for name in changed:
        doomed += _remove_parts(log, keys[name])
        for earlier in [u.key for u in state.unit_list() if u.superseded and named[u.key] == name]:
            doomed += _remove_parts(log, earlier)  # input.incremental: ids — its earlier versions too
            log.stage({"unit_removed": {"key": earlier, "kept": False}})
            plan.units[:] = [u for u in plan.units if u.key != earlier]
            plan.read_units[:] = [u for u in plan.read_units if u.key != earlier]
        event("input", f"{name} changed: its rows are annotated again", level=30, file=name)
    for name in removed:
        for key in [key for key, file in named.items() if file == name]:  # (ids: every version)
            if on_removed == "drop":
                doomed += _remove_parts(log, key)
            log.stage({"unit_removed": {"key": key, "kept": on_removed != "drop"}})
    plan.changes["dropped" if on_removed == "drop" else "kept"] = removed
    return doomed


def _skip_changed(state: OutputState, plan: Plan, names: list[str], base: str | None, complete: set[int]) -> None:
    """output.on_changed: skip — each of these changed files stays as the output annotated it:
    its recorded unit stands in for it in the plan (its parts are done: nothing is read, and the
    record keeps the content that was annotated, so the next run finds it changed again), the
    other files are annotated, and the run names it (event `input_skipped`, exit status 3)."""
    for name in names:
        unit = next(u for u in plan.units if u.name == name and not u.superseded)
        if unit.key not in complete:  # its missing rows exist only in the content that is gone
            raise OutputConflictError(f"input.path: {name} changed while its earlier rows were not all annotated, "
                                      "so it cannot be skipped; restore it and run again to finish them, or pass "
                                      "--reprocess-changed to annotate it again")
        plan.replace_unit(unit.key, [unit_of(state.units[unit.key], base)])
        plan.changes["changed"].remove(name)
        plan.changes.setdefault("skipped", []).append(name)
        event("input_skipped", f"{name} changed since it was annotated: skipped (output.on_changed: skip); its "
                               "earlier annotations are kept and its new content is not annotated: restore it, or "
                               "run with --reprocess-changed", level=logging.WARNING, file=name)


def policy_view(state: OutputState, changes: dict[str, list[str]], on_changed: str, on_removed: str,
                base: str | None) -> tuple[dict[int, str], list[str], list[OutputConflictError]]:
    """(each recorded unit's file as listed now, the removed files whose rows go or are noted, what
    the policy refuses: changed files with on_changed refuse, removed ones with on_removed
    refuse). `run` raises the first refusal; `--dry-run` lists them."""
    named = {u.key: unit_of(u, base).name for u in state.unit_list()}
    kept = {named[u.key] for u in state.kept_removed()}
    changed = changes["changed"]
    removed = [name for name in changes["removed"] if name not in kept or on_removed == "drop"]
    refusals = []
    if changed and on_changed == "refuse":
        refusals.append(OutputConflictError(
            f"input.path: {_names(changed)} changed since {_it(changed)} annotated (other content); pass "
            "--reprocess-changed to annotate it again, or restore it (unattended: output.on_changed: reprocess, or "
            "skip to annotate the other files and report it)"))
    if removed and on_removed == "refuse":
        one = len(removed) == 1
        refusals.append(OutputConflictError(
            f"input.path: {_names(removed)} {'was' if one else 'were'} annotated but no longer "
            f"{'exists' if one else 'exist'}; pass --drop-removed to drop {'its' if one else 'their'} rows from the "
            "output, or --keep-removed to keep them (unattended: output.on_removed: drop or keep)"))
    return named, removed, refusals


def _increments(spec: JobSpec, log: CommitLog, out: Folder, plan: Plan, on_changed: str, complete: set[int]) -> None:
    """input.incremental: ids — a new or changed file's rows whose id the output holds (same
    text) are skipped: the rows to annotate become a unit of their own, with its selection; a
    changed file's earlier unit is kept, superseded. A duplicate or null id is refused in one
    line; so is a changed text, unless the policy reprocesses (the whole file again) or skips
    (the whole file left as annotated) such a file."""
    state = log.state
    held = _held_indexes(out, state)
    next_key = max([u.key + 1 for u in plan.units] + [k + 1 for k in state.units], default=0)
    for name in [*plan.changes["new"], *plan.changes["changed"]]:
        unit = next(u for u in plan.units if u.name == name and not u.superseded)
        delta = ids.classify(spec.input, plan.source, unit, held)
        changed = name in plan.changes["changed"]
        if delta.changed_count and changed and delta.duplicate is None and delta.null_row is None:
            if on_changed == "reprocess":
                continue  # the whole file again, as with input.incremental: files
            if on_changed == "skip":
                _skip_changed(state, plan, [name], spec.base_dir or None, complete)
                continue
        ids.refuse(name, delta, spec.input)
        if not changed and len(delta.new_rows) == delta.rows:
            continue  # a new file, every id new: annotated whole
        key = next_key if changed else unit.key
        next_key += changed
        selected = replace(unit, rows=len(delta.new_rows), key=key, selection=ids.selection_name(key))
        out.write_table(selected.selection, ids.selection_table(delta.new_rows))  # durable before any commit
        plan.selections[key] = delta.new_rows
        earlier = []
        if changed:
            if unit.key not in complete:
                raise OutputConflictError(f"input.path: {name} changed while its earlier rows were not all "
                                          "annotated; restore it and run again to finish them, or pass "
                                          "--reprocess-changed to annotate the whole file again")
            earlier = [replace(unit_of(state.units[unit.key], spec.base_dir or None), superseded=True)]
            plan.changes["changed"].remove(name)
            plan.changes.setdefault("grown", []).append(name)
            event("input", f"{name} changed: {len(delta.new_rows)} of its {delta.rows} rows have ids the output "
                           "does not hold; they are annotated", file=name, rows=len(delta.new_rows))
        plan.replace_unit(unit.key, [*earlier, selected])
        plan.units.sort(key=lambda u: u.key)


def _held_indexes(out: Folder, state: OutputState) -> Any:
    """The id indexes of the output's current parts: their paths on a disk, a pyarrow dataset in a
    bucket (None: no parts)."""
    import pyarrow.dataset as ds

    names = [ids.index_name(p.name) for p in state.part_list()]
    if not names:
        return None
    if out.local:
        return [str(out.directory / n) for n in names]
    return ds.dataset([out.key(n) for n in names], format="parquet", filesystem=out.fs)


def _to_retry(out: Folder, state: OutputState, done: set) -> list[Any]:
    """--retry-errors: the parts with error rows to read back and rewrite. A part missing or
    altered on disk is not among them: this run annotates its shard whole (it is not in `done`),
    and so it does a part whose size is right and bytes are not: each part with error rows is
    hashed here (a shard's worth of bytes, read again to be rewritten), and a damaged one leaves
    `done`."""
    retry = []
    for part in state.part_list():
        if not part.stats.get("errors") or part.key not in done:
            continue
        if out.sha256(part.name) != part.sha256:
            event("verify", f"{part.name} is not the bytes the output's log recorded (damaged); its rows are "
                            "annotated again", level=logging.WARNING, part=part.name)
            done.discard(part.key)
            continue
        retry.append(part)
    return retry


def _remove_parts(log: CommitLog, unit: int) -> list[str]:
    parts = [p for p in log.state.part_list() if p.unit == unit]
    log.stage(*({"remove": {"unit": p.unit, "shard": p.shard}} for p in parts))
    return [p.name for p in parts]


def _delete(out: Folder, parts: list[str]) -> None:
    for part in parts:
        out.remove(part)
        out.remove(ids.index_name(part))  # its id index (input.incremental: ids), if any


def _nothing_to_do(log: CommitLog, plan: Plan, stored: dict[str, int], done: set) -> RunResult | None:
    """The result when every planned shard is already `done` (no model is loaded then), else None:
    this night's run is committed as complete with nothing added."""
    state = log.state
    keys = plan.shard_keys()
    for part in state.missing_parts(stored):
        event("verify", f"{part} is listed in the output's log but missing or altered on disk; its rows are "
                        "annotated again", level=30, part=part)
    if keys is None or not set(keys) <= done:
        return None
    status = "partial" if plan.partial else "complete"
    log.commit({"run_finished": {"status": status, "at": now()}})
    return RunResult(str(log.folder), status, 0, 0, len(keys), len(done), plan.changes)


def _record_plan(log: CommitLog, plan: Plan, limit: int | None, base: str | None) -> None:
    """Stage the units as read (whole row counts, not the ones a --limit cuts) and the plan."""
    state = log.state
    records = [record_of(u, base, removed=False) for u in plan.read_units
               if (old := state.units.get(u.key)) is None or record_of(u, base) != old.to_json()]
    if records:
        log.stage({"units": records})
    changes = {k: [portable_name(n, base) for n in v] for k, v in plan.changes.items() if v and k != "removed"}
    if changes:  # for the history: what this run found
        log.stage({"run_inputs": changes})
    kept_rows = sum(u.rows or 0 for u in state.kept_removed())
    planned = {"rows": None if plan.total_rows is None else plan.total_rows + kept_rows,
               "shards": plan.shard_count, "limit": limit,
               "input_rows": None if plan.input_rows is None else plan.input_rows + kept_rows}
    if planned != state.planned:
        log.stage({"planned": planned})


def _names(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _it(names: list[str]) -> str:
    return "it was" if len(names) == 1 else "they were"


def _existing(out: Folder, overwrite: bool) -> CommitLog:
    """The output's log to continue (an 0.2 manifest migrated), or an empty one to start afresh."""
    if overwrite:
        clear(out)
        return CommitLog(out, OutputState())
    out.remove_temporary()
    out.remove_temporary(LOG_DIR)
    log = CommitLog.read(out)
    if log is not None:
        migrate.remove_leftovers(out)
        return log
    legacy = migrate.legacy_manifest(out)
    if legacy is not None:
        return migrate.migrate(out, *legacy)
    if out.names():
        raise foreign_parts(out)
    if stray := out.names_in(LOG_DIR):  # a log without its first commit, and no part: nothing to keep
        event("log", f"{out}: {LOG_DIR} holds {len(stray)} file(s) but not the log's first commit (left by a run "
                     "that wrote while the output was deleted); they are removed and the output starts afresh",
              level=logging.WARNING, files=stray[:5])
        out.remove_tree(LOG_DIR)
    return CommitLog(out, OutputState())


def foreign_parts(out: Folder) -> OutputConflictError:
    """An output folder with Parquet parts that batchnlp did not record."""
    return OutputConflictError(f"output.path: {out} holds Parquet parts but no batchnlp log ({LOG_DIR}); choose "
                               "another output.path or pass --overwrite to replace them")


def another_job(recorded: dict[str, Any], wanted: dict[str, Any], out: Folder) -> OutputConflictError | None:
    """Two jobs never mix in one output: the refusal when the job's fingerprint (`wanted`) is not
    the one that started the output (`recorded`), else None."""
    changes = differences(recorded, wanted)
    if not changes:
        return None
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return OutputConflictError(f"output.path: {out} was started by a different job ({shown}); pass "
                               "--overwrite to start over, or choose another output.path")


def _input_columns(spec: JobSpec, state: OutputState, plan: Plan, done: set) -> Any:
    """The output's input columns for this run: those it holds (pinned), extended by the files
    this run reads, by name, as input.columns / new_columns / type_changes say."""
    pinned = columns.deserialize(state.pinned.input_schema) if state.pinned.input_schema else None
    if pinned is None and state.job:  # an output of batchnlp 0.2: its columns were its first file's
        pinned = plan.schema
    to_read = [u for u in plan.units if plan.shards_in(u) is None
               or any((u.key, j) not in done for j in range(plan.shards_in(u)))]
    return columns.merge(spec.input, pinned, [(u.name, plan.source.unit_schema(u)) for u in to_read])


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between the job that started an output and the one asked for now. A setting
    that a later batchnlp added is no change while it keeps its default."""
    before = dict(_flatten(old))
    after = dict(_flatten(json.loads(json.dumps(new, default=str))))
    added = _defaults()
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
            and not (key not in before and key in added and after.get(key) == added[key])]


def _defaults() -> dict[str, Any]:
    """The fingerprint key of each spec setting with a default, and that default."""
    from batchnlp import spec as specs

    sections = {"input": specs.InputSpec, "model": specs.ModelSpec, "runtime": specs.RuntimeSpec,
                "output": specs.OutputSpec}
    return {f"spec.{name}.{f.name}": f.default for name, cls in sections.items() for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _flatten(value: Any, prefix: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def clear(out: Folder) -> None:
    """Remove what batchnlp wrote (parts, log, old manifests, temporary files), nothing else."""
    out.remove_temporary()
    for name in [*out.names(), *migrate.MANIFEST_NAMES]:
        out.remove(name)
    out.remove_tree(".batchnlp")
