"""`batchnlp run JOB --dry-run`: what a run would do against the output as it is now — the input
files new, changed or removed since the output's last run, the rows and parts to annotate, what
the run would refuse and why, and an estimate of its time from the rows/s the output's earlier
runs recorded — with nothing written (no lock, no log, no folder) and no model loaded (its files
are hashed, as a run's fingerprint needs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from batchnlp.decide import Decision, Seen, decide, foreign_parts
from batchnlp.errors import UserError
from batchnlp.options import RunOptions
from batchnlp.spec import JobSpec
from batchnlp.write import lock, migrate
from batchnlp.write.commits import CommitLog
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState


@dataclass
class Preview:
    lines: list[str] = field(default_factory=list)
    #: What the run would refuse (each would stop it with exit 2), in `run`'s own words.
    refusals: list[UserError] = field(default_factory=list)
    #: Another live run holds the output now (the run would exit 75), else None.
    busy: str | None = None
    rows_to_do: int | None = None
    parts_to_do: int | None = None
    estimate_seconds: float | None = None


def preview(spec: JobSpec, options: RunOptions = RunOptions(), identify_model: bool = True) -> Preview:
    """What a run would do now: the run's own `decide` on the output as it is. `identify_model`
    False (validate: it reads no weights): the job is compared with the output's without the
    model's weight hashes."""
    options = options if options.resolved else options.for_job(spec)
    result = Preview(["dry run: nothing is written and no model is loaded"])
    out = Folder(spec.output.path, spec.output.storage_options)
    if options.engine == "ray":
        from batchnlp.engines.ray_cluster import check_cluster_paths

        try:
            check_cluster_paths(spec, options.address)
        except UserError as e:
            result.refusals.append(e)
    if lock.held(out):
        result.busy = f"output.path: {out} is in use by a running job now (the run would exit 75)"
    state = _state(out, options.overwrite, result)
    decision = decide(spec, Seen(out, state, out.sizes() if state.job else {}, identify_model), options)
    result.refusals += decision.refusals
    _inputs(decision, options, result)
    if decision.missing and state.job:
        result.lines.append(f"{len(decision.missing)} recorded part(s) missing or altered on disk "
                            f"({decision.missing[0]}...): their rows are annotated again")
    plan = decision.plan
    keys, rows = plan.shard_keys(), plan.shard_rows()
    if keys is None or rows is None:
        result.lines.append("to do: the rows of a streamed dataset (its length is known once read)")
    else:
        to_do = [k for k in keys if k not in decision.done]
        result.rows_to_do, result.parts_to_do = sum(rows[k] for k in to_do), len(to_do)
        result.lines.append(f"to do: {result.rows_to_do} rows in {result.parts_to_do} parts (of {len(keys)}"
                            f"{'; --limit ' + str(options.limit) if options.limit else ''})")
    if options.retry_errors:
        failing = decision.retry
        rows = sum(int(p.stats["errors"]) for p in failing)
        result.lines.append(f"retry: {rows} rows with an error in {len(failing)} parts would be annotated again "
                            f"(--retry-errors){': ' + ', '.join(p.name for p in failing[:3]) if failing else ''}"
                            f"{', ...' if len(failing) > 3 else ''}")
    _estimate(state, result)
    return result


def _state(out: Folder, overwrite: bool, result: Preview) -> OutputState:
    """The output's state as recorded (read only: a 0.2 manifest is not migrated here)."""
    if overwrite:
        result.lines.append(f"output: {out}: --overwrite: its parts and record would be deleted first")
        return OutputState()
    log = CommitLog.read(out)
    if log is not None:
        state = log.state
        result.lines.append(f"output: {out}: {len(state.parts)} parts, {state.totals.get('rows', 0)} rows, "
                            f"{state.status}, {len(state.runs)} run(s)")
        return state
    if migrate.legacy_manifest(out) is not None:
        result.lines.append(f"output: {out}: written by batchnlp 0.2: the run would turn its manifest into a log "
                            "first (shown here as a new output)")
    elif out.names():
        result.refusals.append(foreign_parts(out))
    else:
        result.lines.append(f"output: {out}: new")
    return OutputState()


def _inputs(decision: Decision, options: RunOptions, result: Preview) -> None:
    changes = decision.plan.changes
    shown = [f"{len(names)} {kind} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
             for kind, names in changes.items() if names]
    result.lines.append("input files: " + ("; ".join(shown) if shown else "no change"))
    if changes.get("skipped"):
        result.lines.append(f"would skip (output.on_changed: skip; exit 3): {', '.join(changes['skipped'])} "
                            "(changed; its earlier annotations kept)")


def _estimate(state: OutputState, result: Preview) -> None:
    rate = state.summary().get("rows_per_second") if state.runs else None
    if not result.rows_to_do:
        result.lines.append("estimate: nothing to annotate" + (" (no model would load)" if state.job else ""))
        return
    if not rate:
        result.lines.append("estimate: none (no earlier run of this output recorded a speed)")
        return
    load = next((r.info.get("model_load_seconds") for r in reversed(state.runs) if r.info.get("model_load_seconds")),
                0) or 0
    result.estimate_seconds = round(result.rows_to_do / rate + load, 1)
    result.lines.append(f"estimate: about {result.estimate_seconds:.0f} s ({rate:.1f} rows/s as this output's runs "
                        f"recorded, plus {load:.1f} s to load the model)")

