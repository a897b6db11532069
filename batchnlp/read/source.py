"""What every input source offers the plan: its units (one file, or one dataset split), its
schema, what identifies it, and its rows from a given row on. Files (`read/files.py`) and Hugging
Face datasets (`read/hf.py`) implement it; the plan picks one source per job, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Unit:
    """One input file (or one dataset split): the unit that shards are cut from."""

    name: str
    rows: int | None  # None: a streamed hub dataset whose length is not known up front
    size: int | None = None
    mtime_ns: int | None = None


class InputSource(Protocol):
    def schema(self) -> pa.Schema:
        """The columns of the input (of its first file, for files; each file is checked in `units`)."""

    def units(self, limit: int | None, check: Any) -> list[Unit]:
        """The units in plan order, counted. `check(schema, where)` validates each unit's columns.
        Units wholly past `limit` rows need not be counted."""

    def identity(self) -> dict[str, Any]:
        """What identifies the input beyond its units (format, dataset fingerprint, revision)."""

    def iter_batches(self, unit: Unit, start: int) -> Iterator[pa.RecordBatch]:
        """The unit's rows from row `start` on, in order."""
