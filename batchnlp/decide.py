"""What a run will do, decided before anything is done: `decide(spec, seen, options)` plans the
input against what the output holds (new, touched, changed and removed files), checks that the
output belongs to this job, applies the input policies (output.on_changed / on_removed, the
command line's overrides, input.incremental: ids), and returns a `Decision`: the plan, the shards
already done, the parts to drop and to retry, the refusals, the notes for the log and the typed
actions to commit.

It reads what it is given (the output's state and files through `Seen`, the input through the
plan, the model's files to identify its weights) and writes nothing: no commit, no part, no log
line, no model loaded. The run commits the decision
once and hands it to an engine (`runner.py`); `--dry-run` and `validate` print it (`preview.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pyarrow as pa

from batchnlp import watchdog
from batchnlp.errors import OutputConflictError, UserError
from batchnlp.model import source
from batchnlp.model.resolved import ResolvedModel
from batchnlp.options import RunOptions
from batchnlp.read import columns, ids
from batchnlp.read.plan import Plan, ShardKey, make_plan
from batchnlp.spec import JobSpec
from batchnlp.tasks import task_class
from batchnlp.write import actions
from batchnlp.write.actions import Action
from batchnlp.write.commits import LOG_DIR
from batchnlp.write.folder import Folder
from batchnlp.write.state import OutputState, Part, now, portable_name, record_of, unit_of


@dataclass
class Seen:
    """What the run read before deciding: the output (read only here), its state as the log says,
    and its files' sizes. `identify_model` False: the model's weights are not hashed (`validate`
    reads no weights and compares the job's settings alone)."""

    out: Folder
    state: OutputState
    stored: dict[str, int]
    identify_model: bool = True


@dataclass(frozen=True)
class Note:
    """A log event the decision asks for (the run logs it; `--dry-run` shows what it would)."""

    kind: str
    message: str
    level: int = logging.INFO
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    plan: Plan
    fingerprint: dict[str, Any]
    #: The model as resolved (its directory and identity; None: not identified).
    model: ResolvedModel | None = None
    #: The output's previous run did not finish: this one resumes it.
    resumed: bool = False
    #: What the run refuses (it raises the first; `--dry-run` and `validate` list them all).
    refusals: list[UserError] = field(default_factory=list)
    #: To stage, in order, before the run's first commit.
    actions: list[Action] = field(default_factory=list)
    #: Parts to delete once a commit no longer lists them (dropped files, files annotated again).
    drop: list[str] = field(default_factory=list)
    #: input.incremental: ids — selection tables to write, durable before any commit lists them.
    selections: dict[str, pa.Table] = field(default_factory=dict)
    #: The plan's shards whose parts are current and whole.
    done: set[ShardKey] = field(default_factory=set)
    #: The rows those shards hold (where the progress starts).
    rows_done: int = 0
    #: Current parts listed in the log but missing or altered on disk (annotated again).
    missing: list[str] = field(default_factory=list)
    #: --retry-errors: the parts whose error rows are annotated again.
    retry: list[Part] = field(default_factory=list)
    #: Every planned shard is done (and nothing to retry): the run's status, with no model loaded.
    finished: str | None = None
    notes: list[Note] = field(default_factory=list)
    #: The output's input columns changed (a file added columns): pinned again once the output
    #: schema is known (`schema_pin`).
    schema_changed: bool = False

    def schema_pin(self, schema: pa.Schema) -> list[Action]:
        """The action that pins the output's columns as they are now (none when they did not
        change); `schema` is the whole output schema, known once the task is described."""
        if not self.schema_changed:
            return []
        return [actions.PinSchema(columns.serialize(self.plan.schema), columns.serialize(schema),
                                  [f"{f.name}: {f.type}" for f in schema])]



class _Draft:
    """The decision being made, on a fork of the output's state that its actions change as the
    log's state will once they are staged."""

    def __init__(self, state: OutputState, decision: Decision):
        self.state, self.decision = state, decision

    def stage(self, *staged: Action) -> None:
        for action in staged:
            self.state.apply(action.to_json())
        self.decision.actions.extend(staged)

    def note(self, kind: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
        self.decision.notes.append(Note(kind, message, level, fields))


def decide(spec: JobSpec, seen: Seen, options: RunOptions) -> Decision:
    """What this run does (see the module docstring). `options`: resolved against the job
    (`RunOptions.for_job`)."""
    state, base = seen.state.fork(), spec.base_dir or None
    plan, complete = plan_against(spec, state, options.limit, options.unit_order)
    model = source.resolve(spec.model) if seen.identify_model else None  # (the input's errors come first)
    decision = Decision(plan, fingerprint(spec, model.identity if model else {}), model)
    draft = _Draft(state, decision)
    decision.resumed = bool(state.runs) and state.runs[-1].status in ("running", "killed", "failed", "interrupted")
    if state.runs and state.runs[-1].status == "running":  # the run holds the lock: that run is dead
        draft.stage(actions.RunFinished("killed", now(), final=False))
    if state.job:
        _same_job(spec, seen, decision)
    draft.stage(actions.RunStarted(now(), options.engine, os.getpid(), socket.gethostname()))
    if spec.input.incremental == "ids" and not decision.refusals:  # (another job's output: no id lookup)
        _refusing(decision, lambda: _increments(spec, seen, draft, plan, options.on_changed, complete))
        _selections(seen, plan)
    if state.job:
        _refusing(decision, lambda: _apply_policy(draft, plan, options, base, complete))
    _record_plan(draft, plan, options.limit, base)
    draft.note("planned", "planned: " + (", ".join(f"{len(v)} {k}" for k, v in plan.changes.items() if v)
                                         or "no change") + f" input file(s); {plan.total_rows} rows in "
               f"{plan.shard_count} parts", rows=plan.total_rows, parts=plan.shard_count, terminal=False,
               **{k: len(v) for k, v in plan.changes.items()})
    decision.done = state.done_shards(plan, seen.stored)
    decision.missing = state.missing_parts(seen.stored)
    if options.retry_errors:
        decision.retry = _to_retry(seen, draft)
    decision.rows_done = state.rows_in(decision.done)
    if decision.refusals:  # the run stops at the first; a dry run has every figure it shows
        return decision
    if state.job and not decision.retry and _nothing_to_do(draft):
        return decision
    plan.schema = _input_columns(spec, state, plan, decision.done)
    decision.schema_changed = bool(state.job) and state.pinned.input_schema != columns.serialize(plan.schema)
    return decision


def _refusing(decision: Decision, step: Callable[[], None]) -> None:
    """Run a step of the decision; what it refuses is listed rather than raised, so that a dry run
    shows every refusal and the figures of the rest."""
    try:
        step()
    except UserError as e:
        decision.refusals.append(e)


def _same_job(spec: JobSpec, seen: Seen, decision: Decision) -> None:
    """Two jobs never mix in one output."""
    recorded = seen.state.fingerprint
    if decision.model is None:  # the job's settings only: no weights hashed
        recorded, wanted = {"spec": recorded.get("spec", {})}, {"spec": decision.fingerprint["spec"]}
    else:
        wanted = decision.fingerprint
    if (refusal := another_job(recorded, wanted, seen.out)) is not None:
        decision.refusals.append(refusal)


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


def plan_against(spec: JobSpec, state: OutputState, limit: int | None,
                 unit_order: Any = ()) -> tuple[Plan, set[int]]:
    """The input as it is now, planned against the units the output recorded (new, touched,
    changed, removed; a unit not complete is hashed again), and the keys of the complete units.
    `unit_order`: a new output's units numbered as given (a rerun)."""
    previous = [unit_of(u, spec.base_dir or None) for u in state.unit_list()] if state.job else list(unit_order)
    complete = state.complete_units()
    recheck = {u.name for u in previous if u.key not in complete} if state.job else set()
    with watchdog.doing(f"listing and counting the input at {spec.input.path or spec.input.dataset}"):
        return plan_job(spec, limit, previous, recheck), complete


def plan_job(spec: JobSpec, limit: int | None = None, previous: Any = (),
             recheck: set[str] | frozenset[str] = frozenset()) -> Plan:
    """The job's input cut into shards (`previous`: the units an output recorded, by name)."""
    task_cls = task_class(spec.task.name)
    return make_plan(spec.input, spec.output.rows_per_shard, limit, task_cls.extra_columns(spec.task.params),
                     previous, recheck, messages=task_cls.takes_messages)


# -- the input policies --------------------------------------------------------------------------


def _apply_policy(draft: _Draft, plan: Plan, options: RunOptions, base: str | None, complete: set[int]) -> None:
    """Refuse, or handle as the policy says, the files that changed or went away since they were
    annotated; the parts that go are deleted once a commit no longer lists them (before any is
    written again)."""
    state, decision = draft.state, draft.decision
    on_changed, on_removed = options.on_changed, options.on_removed
    named, removed, refusals = policy_view(state, plan.changes, on_changed, on_removed, base)
    if refusals:
        decision.refusals += refusals
        return
    if on_changed == "skip":
        _skip_changed(draft, plan, list(plan.changes["changed"]), base, complete)
    keys = {named[u.key]: u.key for u in state.unit_list() if not u.superseded}
    for name in plan.changes["changed"]:
        _remove_parts(draft, keys[name])
        for earlier in [u.key for u in state.unit_list() if u.superseded and named[u.key] == name]:
            _remove_parts(draft, earlier)  # input.incremental: ids — its earlier versions too
            draft.stage(actions.UnitRemoved(earlier, kept=False))
            plan.units[:] = [u for u in plan.units if u.key != earlier]
            plan.read_units[:] = [u for u in plan.read_units if u.key != earlier]
        draft.note("input", f"{name} changed: its rows are annotated again", logging.WARNING, file=name)
    for name in removed:
        for key in [key for key, file in named.items() if file == name]:  # (ids: every version)
            if on_removed == "drop":
                _remove_parts(draft, key)
            draft.stage(actions.UnitRemoved(key, kept=on_removed != "drop"))
    plan.changes["dropped" if on_removed == "drop" else "kept"] = removed


def _skip_changed(draft: _Draft, plan: Plan, names: list[str], base: str | None, complete: set[int]) -> None:
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
        plan.replace_unit(unit.key, [unit_of(draft.state.units[unit.key], base)])
        plan.changes["changed"].remove(name)
        plan.changes.setdefault("skipped", []).append(name)
        draft.note("input_skipped", f"{name} changed since it was annotated: skipped (output.on_changed: skip); "
                                    "its earlier annotations are kept and its new content is not annotated: "
                                    "restore it, or run with --reprocess-changed", logging.WARNING, file=name)


def policy_view(state: OutputState, changes: dict[str, list[str]], on_changed: str, on_removed: str,
                base: str | None) -> tuple[dict[int, str], list[str], list[OutputConflictError]]:
    """(each recorded unit's file as listed now, the removed files whose rows go or are noted, what
    the policy refuses: changed files with on_changed refuse, removed ones with on_removed
    refuse)."""
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


def _increments(spec: JobSpec, seen: Seen, draft: _Draft, plan: Plan, on_changed: str, complete: set[int]) -> None:
    """input.incremental: ids — a new or changed file's rows whose id the output holds (same
    text) are skipped: the rows to annotate become a unit of their own, with its selection; a
    changed file's earlier unit is kept, superseded. A duplicate or null id is refused in one
    line; so is a changed text, unless the policy reprocesses (the whole file again) or skips
    (the whole file left as annotated) such a file."""
    state = draft.state
    held = _held_indexes(seen.out, state)
    next_key = max([u.key + 1 for u in plan.units] + [k + 1 for k in state.units], default=0)
    for name in [*plan.changes["new"], *plan.changes["changed"]]:
        unit = next(u for u in plan.units if u.name == name and not u.superseded)
        delta = ids.classify(spec.input, plan.source, unit, held)
        changed = name in plan.changes["changed"]
        if delta.changed_count and changed and delta.duplicate is None and delta.null_row is None:
            if on_changed == "reprocess":
                continue  # the whole file again, as with input.incremental: files
            if on_changed == "skip":
                _skip_changed(draft, plan, [name], spec.base_dir or None, complete)
                continue
        ids.refuse(name, delta, spec.input)
        if not changed and len(delta.new_rows) == delta.rows:
            continue  # a new file, every id new: annotated whole
        key = next_key if changed else unit.key
        next_key += changed
        selected = replace(unit, rows=len(delta.new_rows), key=key, selection=ids.selection_name(key))
        draft.decision.selections[selected.selection] = ids.selection_table(delta.new_rows)
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
            draft.note("input", f"{name} changed: {len(delta.new_rows)} of its {delta.rows} rows have ids the "
                                "output does not hold; they are annotated", file=name, rows=len(delta.new_rows))
        plan.replace_unit(unit.key, [*earlier, selected])
        plan.units.sort(key=lambda u: u.key)


def _selections(seen: Seen, plan: Plan) -> None:
    """A resumed night reads the rows its selection fixed (a selection this run makes is in the
    plan already)."""
    for unit in plan.units:
        if unit.selection and not unit.superseded and unit.key not in plan.selections:
            plan.selections[unit.key] = ids.read_selection(seen.out.read_table(unit.selection))


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


def _remove_parts(draft: _Draft, unit: int) -> None:
    parts = [p for p in draft.state.part_list() if p.unit == unit]
    draft.stage(*(actions.Remove(p.unit, p.shard) for p in parts))
    draft.decision.drop += [p.name for p in parts]


# -- what is done, what is left --------------------------------------------------------------------


def _record_plan(draft: _Draft, plan: Plan, limit: int | None, base: str | None) -> None:
    """Stage the units as read (whole row counts, not the ones a --limit cuts) and the plan."""
    state = draft.state
    records = [record_of(u, base, removed=False) for u in plan.read_units
               if (old := state.units.get(u.key)) is None or record_of(u, base) != old.to_json()]
    if records:
        draft.stage(actions.Units(tuple(records)))
    changes = {k: [portable_name(n, base) for n in v] for k, v in plan.changes.items() if v and k != "removed"}
    if changes:  # for the history: what this run found
        draft.stage(actions.RunInputs(changes))
    kept_rows = sum(u.rows or 0 for u in state.kept_removed())
    planned = actions.Planned(rows=None if plan.total_rows is None else plan.total_rows + kept_rows,
                              shards=plan.shard_count, limit=limit,
                              input_rows=None if plan.input_rows is None else plan.input_rows + kept_rows)
    if planned.body() != state.planned:
        draft.stage(planned)


def _to_retry(seen: Seen, draft: _Draft) -> list[Part]:
    """--retry-errors: the parts with error rows to read back and rewrite. A part missing or
    altered on disk is not among them: this run annotates its shard whole (it is not in `done`),
    and so it does a part whose size is right and bytes are not: each part with error rows is
    hashed here (a shard's worth of bytes, read again to be rewritten), and a damaged one leaves
    `done`."""
    retry, done = [], draft.decision.done
    for part in draft.state.part_list():
        if not part.stats.get("errors") or part.key not in done:
            continue
        if seen.out.sha256(part.name) != part.sha256:
            draft.note("verify", f"{part.name} is not the bytes the output's log recorded (damaged); its rows are "
                                 "annotated again", logging.WARNING, part=part.name)
            done.discard(part.key)
            continue
        retry.append(part)
    return retry


def _nothing_to_do(draft: _Draft) -> bool:
    """Every planned shard already done (no model is loaded then): this night's run ends as
    complete (or partial) with nothing added. The parts missing on disk are noted either way."""
    decision = draft.decision
    for part in decision.missing:
        draft.note("verify", f"{part} is listed in the output's log but missing or altered on disk; its rows are "
                             "annotated again", logging.WARNING, part=part)
    keys = decision.plan.shard_keys()
    if keys is None or not set(keys) <= decision.done:
        return False
    decision.finished = "partial" if decision.plan.partial else "complete"
    return True


def _input_columns(spec: JobSpec, state: OutputState, plan: Plan, done: set) -> Any:
    """The output's input columns for this run: those it holds (pinned), extended by the files
    this run reads, by name, as input.columns / new_columns / type_changes say."""
    pinned = columns.deserialize(state.pinned.input_schema) if state.pinned.input_schema else None
    if pinned is None and state.job:  # an output of batchnlp 0.2: its columns were its first file's
        pinned = plan.schema
    to_read = [u for u in plan.units if plan.shards_in(u) is None
               or any((u.key, j) not in done for j in range(plan.shards_in(u)))]
    return columns.merge(spec.input, pinned, [(u.name, plan.source.unit_schema(u)) for u in to_read])


# -- refusals' words ---------------------------------------------------------------------------


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


def _names(names: list[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def _it(names: list[str]) -> str:
    return "it was" if len(names) == 1 else "they were"
