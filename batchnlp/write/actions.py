"""The actions a commit of the output's log holds, typed: what a run decides and what its workers
wrote become these frozen records, and only `CommitLog` turns them into the log's JSON
(`to_json`, one `{kind: body}` object each, the on-disk shape `write/state.py` applies). As in
pyiceberg's `AddSnapshotUpdate` and delta-rs's `AddAction`: callers say what happened, the log
says how it is written.

Bodies whose keys are open by design (a part's statistics, a run's device and batch settings, the
state of a migrated output) are carried as dicts; the rest are fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Action:
    kind: ClassVar[str]

    def body(self) -> Any:
        """The action's fields by name (not `dataclasses.asdict`: that would copy the dicts it holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> dict[str, Any]:
        return {self.kind: self.body()}


@dataclass(frozen=True)
class Metadata(Action):
    """The output's first action: what the job is, and the decisions later runs keep (pinned)."""

    kind: ClassVar[str] = "metadata"
    created_at: str
    job: dict[str, Any]
    fingerprint: dict[str, Any]
    model: dict[str, Any]
    input: dict[str, Any]
    libraries: dict[str, Any]
    pinned: dict[str, Any]



@dataclass(frozen=True)
class Snapshot(Action):
    """The whole state at once (`OutputState.to_json`'s shape): an output migrated from 0.2."""

    kind: ClassVar[str] = "snapshot"
    state: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return self.state


@dataclass(frozen=True)
class PinSchema(Action):
    """A file with more columns than the output had: the output's columns as they are now."""

    kind: ClassVar[str] = "pin"
    input_schema: str
    arrow_schema: str
    schema: list[str]



@dataclass(frozen=True)
class RunStarted(Action):
    kind: ClassVar[str] = "run_started"
    started_at: str
    engine: str
    pid: int
    host: str



@dataclass(frozen=True)
class RunProgress(Action):
    """Where and how the run annotates (its start), or its rows and seconds so far."""

    kind: ClassVar[str] = "run_progress"
    info: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return self.info


@dataclass(frozen=True)
class RunInputs(Action):
    """What this run found in the input (file names by kind: new, touched, changed, ...)."""

    kind: ClassVar[str] = "run_inputs"
    changes: dict[str, list[str]]

    def body(self) -> dict[str, list[str]]:
        return self.changes


@dataclass(frozen=True)
class RunFinished(Action):
    kind: ClassVar[str] = "run_finished"
    status: str
    at: str
    error: str | None = None
    #: False: only the run ends (a dead run found by the next one), not the output's status.
    final: bool = True

    def body(self) -> dict[str, Any]:
        return {"status": self.status, "at": self.at, "error": self.error,
                **({} if self.final else {"final": False})}


@dataclass(frozen=True)
class Units(Action):
    """Input units as read (their records: `write/state.record_of`)."""

    kind: ClassVar[str] = "units"
    records: tuple[dict[str, Any], ...]

    def body(self) -> list[dict[str, Any]]:
        return list(self.records)


@dataclass(frozen=True)
class UnitRemoved(Action):
    """An annotated input file that went away: its record kept (marked removed) or dropped."""

    kind: ClassVar[str] = "unit_removed"
    key: int
    kept: bool



@dataclass(frozen=True)
class Planned(Action):
    kind: ClassVar[str] = "planned"
    rows: int | None
    shards: int | None
    limit: int | None
    input_rows: int | None



@dataclass(frozen=True)
class Add(Action):
    """A durable part: its statistics as `write/committer.write_part` returned them, the input
    unit's name as the units are named, and the run that wrote it."""

    kind: ClassVar[str] = "add"
    part: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return self.part


@dataclass(frozen=True)
class Remove(Action):
    kind: ClassVar[str] = "remove"
    unit: int
    shard: int
