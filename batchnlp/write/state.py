"""The output's state, typed: what the commit log (`write/commits.py`) adds up to.

One `OutputState` holds the job's identity and pinned decisions (written once, at the output's
first commit), the input units annotated, the parts that are current, the runs with what each did,
and running totals. It changes only by applying *actions*, the small records a commit holds, so the
state read back from the log is the state the writer had. Totals are carried forward action by
action (Iceberg's snapshot summaries), never re-summed: a commit costs the same at any size.

Nothing outside this module indexes these records as dicts; `to_json()` is the documented shape
that `inspect --json` and `batchnlp.inspect()` return (docs/output.md: "The output's record").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from batchnlp.read.plan import Plan, ShardKey, part_name
from batchnlp.read.source import Unit
from batchnlp.storage import is_url

FORMAT_VERSION = 3
#: Sums carried forward over the current parts.
TOTAL_KEYS = ("rows", "features", "tokens", "padded_tokens", "errors", "rows_at_max_length")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(slots=True)
class Part:
    """A committed Parquet part: shard `shard` of unit `unit`, written by run `run` (1-based)."""

    unit: int
    shard: int
    rows: int
    bytes: int
    sha256: str
    run: int
    input: str  # the unit's name when it was written
    start: int  # its first row in the unit
    #: Figures of the work (features, tokens, padded_tokens, errors, rows_at_max_length, seconds,
    #: error_rate, batch_seconds_p50/p95) and the precision it ran in (device, dtype).
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> ShardKey:
        return (self.unit, self.shard)

    @property
    def name(self) -> str:
        return part_name(self.key)

    def to_json(self) -> dict[str, Any]:
        return {"part": self.name, "unit": self.unit, "shard": self.shard, "rows": self.rows, "bytes": self.bytes,
                "sha256": self.sha256, "run": self.run, "input": self.input, "start": self.start, **self.stats}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Part":
        fixed = {f.name for f in dataclasses.fields(cls)} - {"stats"}
        return cls(**{k: data[k] for k in fixed},
                   stats={k: v for k, v in data.items() if k not in fixed and k != "part"})

    def total(self, key: str) -> int:
        return self.rows if key == "rows" else int(self.stats.get(key) or 0)


@dataclass(slots=True)
class UnitRecord:
    """An input file (or dataset split) as annotated. `name` is portable: relative to the job's
    folder for a local file (so a project moved as a whole is the same input), a URL as is."""

    key: int
    name: str
    rows: int | None
    size: int | None
    mtime_ns: int | None
    content_hash: str | None
    version: str | None = None
    removed: bool = False  # its file is gone and its parts were kept (--keep-removed)
    selection: str | None = None  # input.incremental: ids — which of the file's rows it holds
    superseded: bool = False  # an earlier version of a file that grew (ids): parts kept, never read again

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UnitRecord":
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})


@dataclass(slots=True)
class Run:
    """One `batchnlp run` against this output, and what it did."""

    number: int
    started_at: str
    engine: str | None = None
    status: str = "running"  # running, complete, interrupted, failed, killed (found dead by the next run)
    finished_at: str | None = None
    error: str | None = None
    #: Where and how it ran: device, dtype, precision probe, batch settings, pid, host, argv, ...
    info: dict[str, Any] = field(default_factory=dict)
    rows: int = 0  # annotated by this run
    seconds: float = 0.0  # first shard to last commit (model loading excluded)
    parts_added: int = 0
    parts_removed: int = 0
    #: Input files this run found new, changed (annotated again), dropped or kept after removal.
    inputs: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.info, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "info"}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Run":
        names = {f.name for f in dataclasses.fields(cls)} - {"info"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   info={k: v for k, v in data.items() if k not in names})


@dataclass(slots=True)
class Pinned:
    """Decisions taken once, at the output's first commit, and kept by every later run, resume,
    Ray actor and rerun: the precision `dtype: auto` settled on (with the probe's figures), the
    model's resolved identity and the output schema."""

    precision: str | None = None  # float32, bfloat16, float16, int8
    probe: dict[str, Any] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    schema: list[str] = field(default_factory=list)
    #: The output's input columns and its whole schema (Arrow IPC, base64): they grow as later
    #: files add columns (input.new_columns: add), and parts written before lack those.
    input_schema: str | None = None
    arrow_schema: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class OutputState:
    """The whole state of one output (see the module docstring)."""

    version: int = -1  # the last commit applied
    job: dict[str, Any] = field(default_factory=dict)  # file, text, resolved, paths, base
    fingerprint: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    input: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, Any] = field(default_factory=dict)
    pinned: Pinned = field(default_factory=Pinned)
    units: dict[int, UnitRecord] = field(default_factory=dict)
    parts: dict[ShardKey, Part] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOTAL_KEYS, 0))
    planned: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    started_at: str | None = None
    finished_at: str | None = None
    migrated_from: str | None = None

    def fork(self) -> "OutputState":
        """A copy that actions can change without changing this state (what `decide` works on). The
        parts are shared: actions replace or drop a part, never change one; the units, runs and
        totals, which actions do change, are copied (a few records each, not one per part)."""
        forked = dataclasses.replace(self, job=dict(self.job), units={k: dataclasses.replace(u) for k, u in
                                                                       self.units.items()},
                                     parts=dict(self.parts), totals=dict(self.totals), planned=dict(self.planned),
                                     runs=[dataclasses.replace(r, info=dict(r.info), inputs=dict(r.inputs))
                                           for r in self.runs])
        return forked

    # -- applying actions (the only way the state changes) -----------------------------------

    def apply(self, action: dict[str, Any]) -> None:
        (kind, body), = action.items()
        getattr(self, f"_on_{kind}")(body)

    def _on_metadata(self, body: dict[str, Any]) -> None:
        self.job, self.fingerprint, self.model = body["job"], body["fingerprint"], body["model"]
        self.input, self.libraries = body["input"], body["libraries"]
        self.pinned = Pinned(**body["pinned"])
        self.started_at = body.get("created_at")

    def _on_snapshot(self, body: dict[str, Any]) -> None:
        """The whole state at once (an output migrated from a 0.2 manifest)."""
        replacement = OutputState.from_json(body)
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(replacement, f.name))

    def _on_pin(self, body: dict[str, Any]) -> None:
        self.pinned = dataclasses.replace(self.pinned, **body)

    def _on_run_started(self, body: dict[str, Any]) -> None:
        self.runs.append(Run.from_json({"number": len(self.runs) + 1, **body}))
        self.status, self.finished_at = "running", None

    def _on_run_progress(self, body: dict[str, Any]) -> None:
        run = self.runs[-1]
        for key, value in body.items():
            if key in ("rows", "seconds"):
                setattr(run, key, value)
            else:
                run.info[key] = value

    def _on_run_inputs(self, body: dict[str, list[str]]) -> None:
        inputs = self.runs[-1].inputs if self.runs else {}
        for kind, names in body.items():
            inputs[kind] = [*inputs.get(kind, []), *names]

    def _on_run_finished(self, body: dict[str, Any]) -> None:
        run = self.runs[-1]
        run.status, run.finished_at, run.error = body["status"], body["at"], body.get("error")
        if body.get("final", True):
            self.status, self.finished_at = body["status"], body["at"]

    def _on_units(self, body: list[dict[str, Any]]) -> None:
        for data in body:
            unit = UnitRecord.from_json(data)
            self.units[unit.key] = unit

    def _on_unit_removed(self, body: dict[str, Any]) -> None:
        if body["kept"]:
            self.units[body["key"]].removed = True
        else:
            del self.units[body["key"]]

    def _on_planned(self, body: dict[str, Any]) -> None:
        self.planned = body

    def _on_add(self, body: dict[str, Any]) -> None:
        part = Part.from_json(body)
        self._on_remove({"unit": part.unit, "shard": part.shard, "counted": False})
        self.parts[part.key] = part
        for key in TOTAL_KEYS:
            self.totals[key] += part.total(key)
        if self.runs:
            self.runs[-1].parts_added += 1

    def _on_remove(self, body: dict[str, Any]) -> None:
        part = self.parts.pop((body["unit"], body["shard"]), None)
        if part is None:
            return
        for key in TOTAL_KEYS:
            self.totals[key] -= part.total(key)
        if body.get("counted", True) and self.runs:
            self.runs[-1].parts_removed += 1

    # -- questions ----------------------------------------------------------------------------

    def part_list(self) -> list[Part]:
        """The current parts in shard order."""
        return [self.parts[key] for key in sorted(self.parts)]

    def unit_list(self) -> list[UnitRecord]:
        return [self.units[key] for key in sorted(self.units)]

    def kept_removed(self) -> list[UnitRecord]:
        return [u for u in self.unit_list() if u.removed]

    def complete_units(self) -> set[int]:
        """The keys of the units whose every row, as recorded, is in a current part."""
        annotated: dict[int, int] = {}
        for part in self.parts.values():
            annotated[part.unit] = annotated.get(part.unit, 0) + part.rows
        return {u.key for u in self.units.values() if annotated.get(u.key, 0) == u.rows}

    def done_shards(self, plan: Plan, stored: dict[str, int]) -> set[ShardKey]:
        """The plan's shards that a current part holds whole: on disk (`stored`: name -> size) with
        its recorded size and as many rows as the plan gives the shard (a --limit cut is not done)."""
        planned = plan.shard_rows()
        done = set()
        for key, part in self.parts.items():
            if planned is not None and planned.get(key) != part.rows:
                continue
            if stored.get(part.name) == part.bytes:
                done.add(key)
        return done

    def missing_parts(self, stored: dict[str, int]) -> list[str]:
        """Current parts that are not on disk whole (deleted, or replaced by other bytes)."""
        return [p.name for p in self.part_list() if stored.get(p.name) != p.bytes]

    def rows_in(self, keys: Iterable[ShardKey]) -> int:
        return sum(self.parts[k].rows for k in keys if k in self.parts)

    def summary(self) -> dict[str, Any]:
        """The totals with the rates (rates use the runs' wall time, model loading excluded: a
        part's own seconds overlap with its neighbours', as the stages run in parallel)."""
        out: dict[str, Any] = {**self.totals, "shards": len(self.parts)}
        seconds = round(sum(r.seconds for r in self.runs), 3)
        rows_timed = sum(r.rows for r in self.runs)
        out["seconds"] = seconds
        out["rows_per_second"] = round(rows_timed / seconds, 2) if seconds else None
        out["tokens_per_second"] = round(self.totals["tokens"] / seconds, 1) if seconds else None
        padded = self.totals["padded_tokens"]
        out["padding_efficiency"] = round(self.totals["tokens"] / padded, 4) if padded else None
        return out

    def partial_note(self) -> str:
        """What a partial output lacks, in words ("150 of 301 input rows; run without --limit ...")."""
        total = self.planned.get("input_rows")
        return (f"{self.totals['rows']} of {total if total is not None else 'more'} input rows; run without "
                "--limit (or with a larger one) to continue")

    # -- the documented shape -----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The state as plain data: what a checkpoint holds, and what `inspect --json` prints."""
        return {"format": FORMAT_VERSION, "version": self.version, "status": self.status,
                "started_at": self.started_at, "finished_at": self.finished_at, "job": self.job,
                "fingerprint": self.fingerprint, "model": self.model, "input": self.input,
                "libraries": self.libraries, "pinned": self.pinned.to_json(), "planned": self.planned,
                "units": [u.to_json() for u in self.unit_list()], "runs": [r.to_json() for r in self.runs],
                "parts": [p.to_json() for p in self.part_list()], "totals": self.summary(),
                "migrated_from": self.migrated_from}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "OutputState":
        state = cls(version=data["version"], job=data["job"], fingerprint=data["fingerprint"], model=data["model"],
                    input=data["input"], libraries=data["libraries"], pinned=Pinned(**data["pinned"]),
                    planned=data.get("planned") or {}, status=data["status"], started_at=data.get("started_at"),
                    finished_at=data.get("finished_at"), migrated_from=data.get("migrated_from"))
        state.units = {u["key"]: UnitRecord.from_json(u) for u in data["units"]}
        state.runs = [Run.from_json(r) for r in data["runs"]]
        for part in data["parts"]:
            p = Part.from_json(part)
            state.parts[p.key] = p
            for key in TOTAL_KEYS:
                state.totals[key] += p.total(key)
        return state


# -- portable unit names ------------------------------------------------------------------------

def portable_name(name: str, base: str | None) -> str:
    """A local input's name relative to the job's folder (a moved project keeps its names)."""
    if base is None or is_url(name) or not os.path.isabs(name):
        return name
    return os.path.relpath(name, base)


def resolved_name(name: str, base: str | None) -> str:
    """The other way: a recorded name as a path (or URL) to open now."""
    if base is None or is_url(name) or os.path.isabs(name) or "://" in name:
        return name
    return os.path.normpath(os.path.join(base, name))


def unit_of(record: UnitRecord, base: str | None) -> Unit:
    return Unit(resolved_name(record.name, base), record.rows, record.size, record.mtime_ns, record.content_hash,
                record.key, record.version, record.selection, record.superseded)


def record_of(unit: Unit, base: str | None, removed: bool = False) -> dict[str, Any]:
    return UnitRecord(unit.key, portable_name(unit.name, base), unit.rows, unit.size, unit.mtime_ns,
                      unit.content_hash, unit.version, removed, unit.selection, unit.superseded).to_json()


def base_of_output(state: OutputState, output: str) -> str | None:
    """The job's folder as seen from where the output is now: the output moved together with the
    project finds its inputs in their new place; an output moved alone uses the recorded folder."""
    job = state.job
    relative = job.get("base_from_output")
    if relative is not None and not is_url(output):
        return os.path.normpath(os.path.join(os.path.abspath(output), relative))
    return job.get("base")


def relative_base(base: str | None, output: str) -> str | None:
    if base is None or is_url(output):
        return None
    return os.path.relpath(base, os.path.abspath(output))
