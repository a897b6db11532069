"""The shard plan: which rows of which input make up each shard, decided before anything runs.

Each input file (a *unit*) has a number, its key, given when it is first annotated; shard j of
unit k holds rows [j * rows_per_shard, (j + 1) * rows_per_shard) of that file and is written to
`part-kkkkk-jjjjj.parquet`. The plan is deterministic, so a rerun maps each shard to the same rows
and resume skips the shards already committed; files that arrive later get the next keys, so the
parts written before stay as they are. Shards never span two files. Reading streams: at most one
shard of rows is held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Container, Iterator, Sequence

import pyarrow as pa

from batchnlp.errors import InputError, SpecError
from batchnlp.read.source import Entry, InputSource, Unit, skipped
from batchnlp.spec import InputSpec

#: Shard j of unit k samples with seed + k * SEED_STRIDE + j: stable whatever other files arrive.
SEED_STRIDE = 1 << 20

ShardKey = tuple[int, int]  # (unit key, shard number within the unit)


def part_name(key: ShardKey) -> str:
    return f"part-{key[0]:05d}-{key[1]:05d}.parquet"


@dataclass(frozen=True)
class Shard:
    unit: Unit  # the file (or dataset) it is cut from
    number: int  # within its unit
    start: int  # its first row in the unit
    rows: int

    @property
    def key(self) -> ShardKey:
        return (self.unit.key, self.number)

    @property
    def part(self) -> str:
        return part_name(self.key)

    @property
    def seed_offset(self) -> int:
        return self.unit.key * SEED_STRIDE + self.number


@dataclass
class Plan:
    spec: InputSpec
    rows_per_shard: int
    units: list[Unit]  # in key order
    schema: pa.Schema
    source: InputSource
    limit: int | None = None
    #: What identifies the input beyond its units (format, dataset revision).
    identity: dict[str, Any] = field(default_factory=dict)
    #: How the input differs from the units an earlier run annotated: names under new, touched
    #: (same content, other modification time), changed (other content) and removed.
    changes: dict[str, list[str]] = field(default_factory=dict)
    #: The units as read, before a --limit cut them (what the output's record keeps).
    read_units: list[Unit] = field(default_factory=list)
    #: A --limit left input rows out (a file cut, or files not even read).
    partial: bool = False
    #: Rows of the whole input, where every file was read (None: a --limit stopped before some).
    input_rows: int | None = None
    #: input.incremental: ids — the row numbers of each unit that has a selection, by unit key.
    selections: dict[int, Any] = field(default_factory=dict)

    @property
    def total_rows(self) -> int | None:
        if any(u.rows is None for u in self.units):
            return self.limit
        return sum(u.rows for u in self.units)

    @property
    def shard_count(self) -> int | None:
        keys = self.shard_keys()
        return None if keys is None else len(keys)

    def shards_in(self, unit: Unit) -> int | None:
        return None if unit.rows is None else math.ceil(unit.rows / self.rows_per_shard)

    def shard_keys(self) -> list[ShardKey] | None:
        """Every shard of the plan in order (None when a streamed input's length is unknown)."""
        if any(u.rows is None for u in self.units):
            return None
        return [(u.key, j) for u in self.units for j in range(self.shards_in(u))]

    def shard_rows(self) -> dict[ShardKey, int] | None:
        """Each planned shard's row count (None when a streamed input's length is unknown)."""
        if any(u.rows is None for u in self.units):
            return None
        return {(u.key, j): min(self.rows_per_shard, u.rows - j * self.rows_per_shard)
                for u in self.units for j in range(self.shards_in(u))}

    def replace_unit(self, key: int, by: list[Unit]) -> None:
        """Put `by` where unit `key` (its current version, not a superseded one) stands, in the
        units to annotate and in the units as read (often one list)."""
        for units in {id(each): each for each in (self.units, self.read_units)}.values():
            at = next(i for i, u in enumerate(units) if u.key == key and not u.superseded)
            units[at:at + 1] = by


def open_source(spec: InputSpec) -> InputSource:
    """Files or a Hugging Face dataset: the one place that tells them apart."""
    if spec.dataset:
        from batchnlp.read.hf import DatasetSource  # imports `datasets` lazily, only for dataset inputs

        return DatasetSource(spec)
    from batchnlp.read.files import FileSource

    return FileSource(spec)


def make_plan(spec: InputSpec, rows_per_shard: int, limit: int | None = None,
              task_columns: dict[str, str] | None = None, previous: Sequence[Unit] = (),
              recheck: Container[str] = (), messages: bool = False) -> Plan:
    """Find the input and plan it. `previous`: the units an earlier run annotated; an entry with
    the same name, size and modification time keeps their content hash and row count without
    being read (unless its name is in `recheck`). Other entries are hashed, checked and counted
    (CSV/JSONL parsed whole, so a bad row fails here, before anything is written). `messages`:
    the task takes chat messages in input.text_column."""
    source = open_source(spec)

    def check(schema: pa.Schema, where: str) -> None:
        check_columns(spec, schema, where, task_columns, messages)

    known = {u.name: u for u in previous if not u.superseded}  # a file's latest unit
    changes: dict[str, list[str]] = {"new": [], "touched": [], "changed": [], "removed": []}
    units, rows, next_key = [], 0, max((u.key + 1 for u in previous), default=0)
    entries = source.inventory()
    unread = False
    for entry in entries:
        if limit is not None and rows >= limit:
            unread = True
            break  # no need to read files past the limit
        unit = known.get(entry.name)
        if unit is None:
            unit, next_key = _counted(source, entry, None, next_key, check), next_key + 1
            changes["new"].append(entry.name)
        elif not entry.same_as(unit) or entry.name in recheck:  # (a dataset has no time: always rehashed)
            unit = _rehashed(source, entry, unit, check, changes)
        units.append(unit)
        rows += unit.rows or 0
    listed = {e.name for e in entries}
    changes["removed"] = list(dict.fromkeys(u.name for u in previous if u.name not in listed))
    units += [u for u in previous if u.superseded and u.name in listed]  # all done: counted, never read
    units.sort(key=lambda u: u.key)
    plan = Plan(spec, rows_per_shard, units, source.schema(), source, limit, source.identity(), changes, units)
    if limit is not None:
        plan.units = _cut(plan.units, limit)
    if not unread and all(u.rows is not None for u in units):
        plan.input_rows = sum(u.rows for u in units)
    # Partial unless every input row is provably in: a limit that cut a file, left files unread,
    # or met a streamed dataset of unknown length.
    plan.partial = limit is not None and (plan.input_rows is None or plan.input_rows > limit)
    if plan.total_rows == 0 and not previous:
        raise InputError(f"input.path: {spec.path or spec.dataset} has no rows (only a header?)")
    return plan


def _counted(source: InputSource, entry: Entry, content_hash: str | None, key: int,
             check: Callable[[pa.Schema, str], None]) -> Unit:
    rows = source.count(entry, check)
    return Unit.of(entry, rows, content_hash or source.content_hash(entry), key)


def _rehashed(source: InputSource, entry: Entry, unit: Unit, check: Callable[[pa.Schema, str], None],
              changes: dict[str, list[str]]) -> Unit:
    """A known entry whose size or time changed (or that must be checked): the same content keeps
    its row count; other content is counted again, under the same key."""
    content = source.content_hash(entry)
    if content == unit.content_hash:
        if (entry.size, entry.mtime_ns, entry.version) != (unit.size, unit.mtime_ns, unit.version):
            changes["touched"].append(entry.name)
        return replace(unit, size=entry.size, mtime_ns=entry.mtime_ns, version=entry.version)
    changes["changed"].append(entry.name)
    return _counted(source, entry, content, unit.key, check)


def _cut(units: list[Unit], limit: int) -> list[Unit]:
    out, left = [], limit
    for unit in units:
        if left <= 0:
            break
        rows = left if unit.rows is None else min(unit.rows, left)
        out.append(unit.cut(rows))
        left -= rows
    return out


def check_columns(spec: InputSpec, schema: pa.Schema, where: str,
                  task_columns: dict[str, str] | None = None, messages: bool = False) -> None:
    """Every column the job names exists; text columns hold text (or, where the task takes them,
    `messages`, chat messages). task_columns: {"task.<key>": column}."""
    named = {f"input.{key}": getattr(spec, key) for key in ("text_column", "text_pair_column", "id_column")}
    for key, column in {**named, **(task_columns or {})}.items():
        if column is None:
            continue
        if column not in schema.names:
            raise SpecError(key, f'column "{column}" not found in {where}; columns are: {", ".join(schema.names)}')
        kind = schema.field(column).type
        if key == "input.text_column" and is_messages(kind):
            if not messages:
                raise SpecError(key, f'column "{column}" in {where} holds chat messages; this task takes text '
                                     "(text-generation and extraction take messages)")
            continue
        if key in ("input.text_column", "input.text_pair_column") and not is_text(kind):
            raise SpecError(key, f'column "{column}" in {where} holds {kind}, not text')


def is_messages(kind: pa.DataType) -> bool:
    """Whether a column of this type holds chat messages: lists of {role, content} texts."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
        return False
    fields = {f.name: f.type for f in kind.value_type}
    return {"role", "content"} <= set(fields) and is_text(fields["role"]) and is_text(fields["content"])


def is_text(kind: pa.DataType) -> bool:
    """Whether an Arrow column of this type holds texts (or nothing at all)."""
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
            or pa.types.is_null(kind))


def read_shards(plan: Plan, skip: Container[ShardKey]) -> Iterator[tuple[Shard, pa.Table]]:
    """Yield (shard, rows) in plan order, except the shards in `skip`; each table holds one shard."""
    for unit in plan.units:
        count = plan.shards_in(unit)
        first = 0  # the unit's leading committed shards are not even read (Parquet seeks past them)
        while (count is None or first < count) and (unit.key, first) in skip:
            first += 1
        if first == count:
            continue  # every shard of this unit is committed: don't even open it
        number = first
        for start, table in _chunks(plan, unit, first * plan.rows_per_shard):
            if (unit.key, number) not in skip:
                yield Shard(unit, number, start, table.num_rows), table
            number += 1


def read_shard(plan: Plan, key: ShardKey) -> tuple[Shard, pa.Table]:
    """One shard alone (a Ray actor's unit of work): only its unit is opened, from its row group."""
    unit = next((u for u in plan.units if u.key == key[0]), None)
    if unit is None or plan.shards_in(unit) is None or not 0 <= key[1] < plan.shards_in(unit):
        raise IndexError(f"shard {key} is not in the plan")
    start = key[1] * plan.rows_per_shard
    start, table = next(_chunks(plan, unit, start))
    return Shard(unit, key[1], start, table.num_rows), table


def _chunks(plan: Plan, unit: Unit, start: int) -> Iterator[tuple[int, pa.Table]]:
    """Cut a unit's stream of record batches, from row `start` (a shard boundary) on, into tables of
    rows_per_shard rows (the last may be short)."""
    if unit.selection is not None:  # input.incremental: ids — the selected rows only
        from batchnlp.read.ids import selected_batches

        whole = plan.source.iter_batches(replace(unit, rows=None, selection=None), 0)
        batches = skipped(selected_batches(whole, plan.selections[unit.key]), start)
    else:
        batches = plan.source.iter_batches(unit, start)
    size, pending, have = plan.rows_per_shard, [], 0
    limit = unit.rows
    for batch in batches:
        if limit is not None and start + have + batch.num_rows > limit:
            batch = batch.slice(0, limit - start - have)
        pending.append(batch)
        have += batch.num_rows
        while have >= size:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield start, table.slice(0, size)
            rest = table.slice(size)
            pending, have, start = rest.to_batches(), rest.num_rows, start + size
        if limit is not None and start + have >= limit:
            break
    if have:
        yield start, pa.Table.from_batches(pending).combine_chunks()
