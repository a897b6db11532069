"""The shard plan: which rows of which input make up shard i, decided before anything runs.

The plan is deterministic (sorted files, fixed rows per shard), so a rerun of the same job maps
shard i to exactly the same rows and resume can skip the shards already committed. Shards never
span two files. Reading streams: at most one shard of rows is held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from batchnlp.errors import InputError, SpecError
from batchnlp.read.source import InputSource, Unit
from batchnlp.spec import InputSpec


@dataclass(frozen=True)
class Shard:
    index: int  # in the plan, over all units
    unit: Unit  # the file (or dataset) it is cut from
    start: int  # its first row in the unit
    rows: int


@dataclass
class Plan:
    spec: InputSpec
    rows_per_shard: int
    units: list[Unit]
    schema: pa.Schema
    source: InputSource
    limit: int | None = None
    #: What identifies the input beyond its units (format, dataset fingerprint), for the fingerprint.
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def total_rows(self) -> int | None:
        if any(u.rows is None for u in self.units):
            return self.limit
        return sum(u.rows for u in self.units)

    @property
    def shard_count(self) -> int | None:
        if any(u.rows is None for u in self.units):
            return None
        return sum(math.ceil(u.rows / self.rows_per_shard) for u in self.units)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the input: file names, sizes and modification times, row counts."""
        return {
            "units": [{"name": u.name, "rows": u.rows, "size": u.size, "mtime_ns": u.mtime_ns} for u in self.units],
            "total_rows": self.total_rows,
            "shards": self.shard_count,
            **self.identity,
        }


def open_source(spec: InputSpec) -> InputSource:
    """Files or a Hugging Face dataset: the one place that tells them apart."""
    if spec.dataset:
        from batchnlp.read.hf import DatasetSource  # imports `datasets` lazily, only for dataset inputs

        return DatasetSource(spec)
    from batchnlp.read.files import FileSource

    return FileSource(spec)


def make_plan(spec: InputSpec, rows_per_shard: int, limit: int | None = None,
              task_columns: dict[str, str] | None = None) -> Plan:
    """Find the input, check its columns and count its rows (parsing CSV/JSONL whole, so a bad row
    fails here, before anything is written)."""
    source = open_source(spec)
    units = source.units(limit, lambda schema, where: check_columns(spec, schema, where, task_columns))
    plan = Plan(spec, rows_per_shard, units, source.schema(), source, limit, source.identity())
    if limit is not None:
        plan.units = _cut(units, limit)
    if plan.total_rows == 0:
        raise InputError(f"input.path: {spec.path or spec.dataset} has no rows (only a header?)")
    return plan


def _cut(units: list[Unit], limit: int) -> list[Unit]:
    out, left = [], limit
    for unit in units:
        if left <= 0:
            break
        rows = left if unit.rows is None else min(unit.rows, left)
        out.append(Unit(unit.name, rows, unit.size, unit.mtime_ns))
        left -= rows
    return out


def check_columns(spec: InputSpec, schema: pa.Schema, where: str,
                  task_columns: dict[str, str] | None = None) -> None:
    """Every column the job names exists; text columns hold text. task_columns: {"task.<key>": column}."""
    named = {f"input.{key}": getattr(spec, key) for key in ("text_column", "text_pair_column", "id_column")}
    for key, column in {**named, **(task_columns or {})}.items():
        if column is None:
            continue
        if column not in schema.names:
            raise SpecError(key, f'column "{column}" not found in {where}; columns are: {", ".join(schema.names)}')
        kind = schema.field(column).type
        is_text = (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
                   or pa.types.is_null(kind))
        if key in ("input.text_column", "input.text_pair_column") and not is_text:
            raise SpecError(key, f'column "{column}" in {where} holds {kind}, not text')


def read_shards(plan: Plan, skip: set[int]) -> Iterator[tuple[Shard, pa.Table]]:
    """Yield (shard, rows) in plan order, except the shards in `skip`; each table holds one shard."""
    base = 0
    for unit in plan.units:
        count = None if unit.rows is None else math.ceil(unit.rows / plan.rows_per_shard)
        first = 0  # the unit's leading committed shards are not even read (Parquet seeks past them)
        while (count is None or first < count) and base + first in skip:
            first += 1
        if first == count:
            base += count  # every shard of this unit is committed: don't even open it
            continue
        index = base + first
        for start, table in _chunks(plan, unit, first * plan.rows_per_shard):
            if index not in skip:
                yield Shard(index, unit, start, table.num_rows), table
            index += 1
        base = index


def read_shard(plan: Plan, index: int) -> tuple[Shard, pa.Table]:
    """Shard `index` alone (a Ray actor's unit of work): only its unit is opened."""
    if plan.shard_count is None or not 0 <= index < plan.shard_count:
        raise IndexError(f"shard {index} is not in the plan")
    return next(read_shards(plan, set(range(index)) | set(range(index + 1, plan.shard_count))))


def _chunks(plan: Plan, unit: Unit, start: int) -> Iterator[tuple[int, pa.Table]]:
    """Cut a unit's stream of record batches, from row `start` (a shard boundary) on, into tables of
    rows_per_shard rows (the last may be short)."""
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
