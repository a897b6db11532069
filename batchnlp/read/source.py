"""What every input source offers the plan: what it holds now (`inventory`, cheap: names, sizes,
modification times), each entry's content hash and row count (which read it), its schema, and a
unit's rows from a given row on. Files (`read/files.py`) and Hugging Face datasets (`read/hf.py`)
implement it; the plan picks one source per job, once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Entry:
    """An input file (or dataset) as listed, before it is read."""

    name: str
    size: int | None = None
    mtime_ns: int | None = None
    #: What the store says changes with the content, where it has one (an object's ETag).
    version: str | None = None

    def same_as(self, unit: "Unit") -> bool:
        """Listed as the unit was recorded: same size, time (and version), so it is not read again."""
        return self.mtime_ns is not None and (self.size, self.mtime_ns, self.version) == \
            (unit.size, unit.mtime_ns, unit.version)


@dataclass(frozen=True)
class Unit:
    """One input file (or one dataset split): the unit that shards are cut from.

    `key` is its number in the output, given when it is first annotated and kept for good: parts
    are named after it, so an output that grows file by file keeps every earlier part as it was."""

    name: str
    rows: int | None  # None: a streamed hub dataset whose length is not known up front
    size: int | None = None
    mtime_ns: int | None = None
    content_hash: str | None = None
    key: int = 0
    version: str | None = None
    #: input.incremental: ids — the file's rows this unit holds (a selection in the output's
    #: folder, by row number); None: all of them.
    selection: str | None = None
    #: An earlier version of a file that grew (ids): its parts stay, it is never read again.
    superseded: bool = False

    @classmethod
    def of(cls, entry: Entry, rows: int | None, content_hash: str | None, key: int) -> "Unit":
        return cls(entry.name, rows, entry.size, entry.mtime_ns, content_hash, key, entry.version)

    def cut(self, rows: int | None) -> "Unit":
        return replace(self, rows=rows)


class InputSource(Protocol):
    def inventory(self) -> list[Entry]:
        """The entries in plan order (sorted paths), without reading them."""

    def content_hash(self, entry: Entry) -> str:
        """What identifies the entry's content (reads a file whole; a dataset's own fingerprint)."""

    def count(self, entry: Entry, check: Callable[[pa.Schema, str], None]) -> int | None:
        """Check the entry's columns with `check(schema, where)`, then count its rows (None: unknown)."""

    def schema(self) -> pa.Schema:
        """The columns of the input (of its first file, for files)."""

    def unit_schema(self, unit: Unit) -> pa.Schema:
        """The columns of one unit (a file's own: its metadata or header)."""

    def identity(self) -> dict[str, Any]:
        """What identifies the input beyond its units (format, dataset revision)."""

    def iter_batches(self, unit: Unit, start: int) -> Iterator[pa.RecordBatch]:
        """The unit's rows from row `start` on, in order."""


def skipped(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """`batches` without their first `rows` rows."""
    for batch in batches:
        if rows >= batch.num_rows:
            rows -= batch.num_rows
            continue
        yield batch.slice(rows) if rows else batch
        rows = 0
