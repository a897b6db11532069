"""The conductor of a run: lock the output, read what it holds, `decide` (decide.py), commit the
decision once, hand the work to an engine (local or Ray), record the end.

    run -> lock -> read the state -> decide -> commit the decision -> engine.open (the model, the
    precision) -> the run's start committed -> engine.run (the shards, each part recorded as it
    becomes durable: record.py) -> the run's end committed

Deciding reads and returns; only this module acts on a decision.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from batchnlp import watchdog
from batchnlp.decide import Decision, Seen, decide, foreign_parts
from batchnlp.errors import SKIPPED, OutputConflictError, UserError, exit_code, is_disk_full
from batchnlp.job import describe_job, metadata
from batchnlp.log import bars_allowed, event
from batchnlp.options import RunOptions, RunResult
from batchnlp.progress import Progress
from batchnlp.record import Recorder
from batchnlp.spec import JobSpec
from batchnlp.storage import configure_retries
from batchnlp.version import __version__
from batchnlp.work import Retry
from batchnlp.write import lock, migrate
from batchnlp.write.commits import LOG_DIR, CommitLog
from batchnlp.write.committer import Committer
from batchnlp.write.folder import Folder
from batchnlp.write.lock import LOCK_NAME
from batchnlp.write.state import OutputState, unit_of

__all__ = ["RunOptions", "RunResult", "clear", "run"]


def run(spec: JobSpec, options: RunOptions = RunOptions()) -> RunResult:
    """Run (or continue) a job; `options` as the command line or the API resolved them
    (`RunOptions.for_job`), else resolved here."""
    options = options if options.resolved else options.for_job(spec)
    if options.engine == "ray":
        from batchnlp.engines.ray_cluster import check_cluster_paths

        check_cluster_paths(spec, options.address)
    out = Folder(spec.output.path, spec.output.storage_options)
    configure_retries(spec.runtime.retry_seconds)
    created = False
    began = time.perf_counter()
    event("started", f"run {spec.source_file or 'a job'} into {out} (engine {options.engine}, "
                     f"batchnlp {__version__})", job=spec.source_file, output=str(out),
          engine=options.engine, version=__version__, terminal=False)
    seen: dict[str, CommitLog] = {}  # the output's log, once opened: what the run committed
    with watchdog.watching(spec.runtime.stall_seconds, options.progress_interval, bars_allowed(options.quiet),
                           options.exit_at_once):
        try:
            created = out.create()
            with lock.hold(out):
                result = _locked_run(spec, out, options, seen)
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


def _locked_run(spec: JobSpec, out: Folder, options: RunOptions, seen: dict[str, CommitLog]) -> RunResult:
    log = _existing(out, options.overwrite)
    seen["log"] = log
    log.on_point = options.faults.point
    decision = decide(spec, Seen(out, log.state, out.sizes()), options)
    if decision.refusals:
        raise decision.refusals[0]
    for note in decision.notes:
        event(note.kind, note.message, level=note.level, **note.fields)
    if decision.finished:  # every planned shard is done: no model is loaded
        committer = Committer(log, options.faults, decision.plan.partial)
        committer.begin(decision.actions, decision.selections, decision.drop)
        committer.finish(decision.finished)
        return _result(out, decision, committer, None)
    job = describe_job(spec, decision.plan, decision.model, options.quiet)
    committer = Committer(log, options.faults, decision.plan.partial)
    committer.begin([*decision.actions, *decision.schema_pin(job.schema)], decision.selections, decision.drop)
    state = log.state
    pinned = state.pinned.precision if state.job else options.pin
    try:
        if options.engine == "ray":
            from batchnlp.engines.ray import RayEngine as Engine
        else:
            from batchnlp.engines.local import LocalEngine as Engine
        engine = Engine(job, out, options)
        precision, probe, info = engine.open(decision.done, pinned)
    except BaseException as e:
        if log.pending and log.state.version >= 0:  # failed before its first commit (the model load):
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"  # the history says so
            with contextlib.suppress(Exception):
                committer.finish(status, f"{type(e).__name__}: {e}")
        raise
    if not state.job:
        log.stage(metadata(job, decision.fingerprint, str(out), probe, precision), first=True)
    committer.start_run({**info, "resumed_from_shards": len(decision.done), "cwd": os.getcwd(), "argv": sys.argv})
    base = state.job.get("base")
    retries = [Retry(part, unit_of(state.units[part.unit], base)) for part in decision.retry]
    recorder = Recorder(committer, Progress(decision.plan.total_rows, decision.rows_done, options.quiet,
                                            options.progress_interval))
    try:
        with committer.recording():
            engine.run(decision.done, retries, recorder)
    finally:
        recorder.progress.close()
    return _result(out, decision, committer, recorder.retried(len(retries)) if retries else None)


def _result(out: Folder, decision: Decision, committer: Committer, retried: dict[str, Any] | None) -> RunResult:
    plan = decision.plan
    status = "partial" if plan.partial else "complete"
    return RunResult(str(out), status, committer.rows, committer.parts, plan.shard_count, len(decision.done),
                     plan.changes, retried, decision.resumed)


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


def clear(out: Folder) -> None:
    """Remove what batchnlp wrote (parts, log, old manifests, temporary files), nothing else."""
    out.remove_temporary()
    for name in [*out.names(), *migrate.MANIFEST_NAMES]:
        out.remove(name)
    out.remove_tree(".batchnlp")
