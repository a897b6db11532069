"""Row-level incremental runs (`input.incremental: ids`): a file that grows (a database export
rewritten every night with yesterday's rows plus today's) is not annotated again whole; only the
rows whose id the output does not hold yet are.

- Every part written in this mode has an id index beside it in the output's hidden folder,
  `.batchnlp/ids/part-KKKKK-JJJJJ.parquet`: each row's id and a hash of what the model read (the
  text, and the pair text) — 64 bits of MD5, stable across versions.
- A new or changed file is read once; DuckDB joins its (row, id, hash) with the indexes of the
  current parts, spilling to disk past a memory limit, so the lookup never needs every id in
  memory at once. It yields the rows to annotate (ids not in the output), the ids whose text
  changed, and the first duplicate id of the file.
- The rows to annotate become a new unit of that file whose `selection` (`.batchnlp/ids/
  selection-KKKKK.parquet`, the row numbers) fixes which rows its shards hold, so a killed run
  resumes on the same rows; the file's earlier unit and its parts are kept as they are.

Deliberately DuckDB rather than a hand-written join: an external (spilling) hash join, MD5 in
vectorised C++, and it reads the Arrow stream and the indexes in place.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import InputError
from batchnlp.read.source import InputSource, Unit
from batchnlp.spec import InputSpec

IDS_DIR = ".batchnlp/ids"
#: DuckDB's memory for the join; past it, it spills to a temporary folder.
MEMORY_LIMIT = "1GB"


def index_name(part: str) -> str:
    return f"{IDS_DIR}/{part}"


def selection_name(key: int) -> str:
    return f"{IDS_DIR}/selection-{key:05d}.parquet"


def _hash_sql(spec: InputSpec) -> str:
    """What identifies a row's content: the text (and pair text), as the model reads it."""
    pair = f" || chr(31) || coalesce(\"{spec.text_pair_column}\", '')" if spec.text_pair_column else ""
    return f"md5_number_lower(coalesce(\"{spec.text_column}\", chr(0)){pair})"


def index_table(spec: InputSpec, rows: pa.Table) -> pa.Table:
    """A part's id index: (id, hash) of each of its rows."""
    import duckdb

    with duckdb.connect() as con:
        con.register("rows", rows)
        return _arrow(con, f'SELECT CAST("{spec.id_column}" AS VARCHAR) AS id, {_hash_sql(spec)} AS h FROM rows')


def _arrow(con: Any, query: str) -> pa.Table:
    """A query's result as an Arrow table (DuckDB 2 named `arrow()` `to_arrow_table()`)."""
    relation = con.sql(query)
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


@dataclass
class Delta:
    """How a file's rows stand against the output."""

    new_rows: np.ndarray  # row numbers (ascending) whose id the output does not hold
    rows: int  # rows in the file
    changed: list[str] = field(default_factory=list)  # ids held with another text (the first few)
    changed_count: int = 0
    duplicate: str | None = None  # the first id the file holds twice
    null_row: int | None = None  # the first row (0-based) without an id (null or blank)


def classify(spec: InputSpec, source: InputSource, unit: Unit, indexes: Any) -> Delta:
    """Join a file's rows with the output's id indexes (`indexes`: local paths, a pyarrow dataset
    for a bucket, or None when the output holds no parts)."""
    import duckdb

    columns = [c for c in (spec.id_column, spec.text_column, spec.text_pair_column) if c]
    # A database file, not an in-memory one: its tables live in DuckDB's buffer pool, which the
    # memory limit bounds, and go to disk past it.
    with tempfile.TemporaryDirectory(prefix="batchnlp-ids-") as spill, \
            duckdb.connect(f"{spill}/ids.duckdb") as con:
        con.execute(f"SET memory_limit='{MEMORY_LIMIT}'; SET temp_directory='{spill}'; "
                    "SET preserve_insertion_order=false; SET enable_progress_bar=false")
        reader = pa.RecordBatchReader.from_batches(_schema(source, unit, columns), _numbered(source, unit, columns))
        con.register("file_rows", reader)
        con.execute(f'CREATE TEMP TABLE incoming AS SELECT row, CAST("{spec.id_column}" AS VARCHAR) AS id, '
                    f"{_hash_sql(spec)} AS h FROM file_rows")
        # fetchall(), not fetchone(): DuckDB 2 refuses other work while a result is unfinished.
        rows = con.execute("SELECT count(*) FROM incoming").fetchall()[0][0]
        duplicate = next(iter(con.execute("SELECT id FROM incoming WHERE id IS NOT NULL GROUP BY id HAVING "
                                          "count(*) > 1 ORDER BY min(row) LIMIT 1").fetchall()), None)
        # A row without an id never matches a held one: it would be annotated again every night.
        null_row = con.execute("SELECT min(row) FROM incoming WHERE id IS NULL OR trim(id) = ''").fetchall()[0][0]
        if indexes is None:
            new = _arrow(con, "SELECT row FROM incoming ORDER BY row").column(0)
            return Delta(new.to_numpy(), rows, duplicate=duplicate[0] if duplicate else None, null_row=null_row)
        if isinstance(indexes, list):  # local files: DuckDB's own Parquet reader, streaming
            held = "read_parquet([" + ", ".join("'" + p.replace("'", "''") + "'" for p in indexes) + "])"
        else:
            con.register("held_dataset", indexes)
            held = "held_dataset"
        con.execute("CREATE TEMP TABLE matched AS SELECT i.row, i.id, i.h AS h_now, o.h AS h_then "
                    f"FROM incoming i LEFT JOIN {held} o ON i.id = o.id")
        new = _arrow(con, "SELECT row FROM matched WHERE h_then IS NULL ORDER BY row").column(0)
        changed_count = con.execute("SELECT count(*) FROM matched WHERE h_then IS NOT NULL AND h_then != h_now"
                                    ).fetchall()[0][0]
        changed = [r[0] for r in con.execute("SELECT id FROM matched WHERE h_then IS NOT NULL AND h_then != h_now "
                                             "ORDER BY row LIMIT 3").fetchall()]
    return Delta(new.to_numpy(), rows, changed, changed_count, duplicate[0] if duplicate else None, null_row)


def _schema(source: InputSource, unit: Unit, columns: Sequence[str]) -> pa.Schema:
    schema = source.unit_schema(unit)
    return pa.schema([pa.field("row", pa.int64()), *(schema.field(c) for c in columns)])


def _numbered(source: InputSource, unit: Unit, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """The file's id and text columns, each row with its number in the file."""
    row = 0
    for batch in source.iter_batches(Unit(unit.name, None, key=unit.key), 0):
        n = batch.num_rows
        picked = [batch.column(batch.schema.get_field_index(c)) for c in columns]
        yield pa.RecordBatch.from_arrays([pa.array(np.arange(row, row + n, dtype=np.int64)), *picked],
                                         names=["row", *columns])
        row += n


def refuse(name: str, delta: Delta, spec: InputSpec) -> None:
    """One line for what ids mode does not do on its own: a missing or duplicate id, a changed text."""
    if delta.null_row is not None:
        raise InputError(f"{name}: data row {delta.null_row + 1} has no id (input.id_column {spec.id_column} is null "
                         "or blank there); with input.incremental: ids every row needs one, or it would be annotated "
                         "again every night: fix the file")
    if delta.duplicate is not None:
        raise InputError(f"{name}: id {delta.duplicate!r} appears more than once (input.id_column "
                         f"{spec.id_column} must be unique with input.incremental: ids); fix the file")
    if delta.changed_count:
        shown = ", ".join(repr(i) for i in delta.changed)
        rest = delta.changed_count - len(delta.changed)
        more = f" and {rest} more" if rest > 0 else ""
        raise InputError(f"{name}: the text of id {shown}{more} changed since it was annotated; pass "
                         "--reprocess-changed to annotate the whole file again, or restore the texts")


def selected_batches(batches: Iterator[pa.RecordBatch], selection: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Only the rows of `batches` (a file from its first row) whose numbers are in `selection`
    (ascending), in order."""
    row = 0
    for batch in batches:
        n = batch.num_rows
        lo, hi = np.searchsorted(selection, [row, row + n])
        if hi > lo:
            yield batch.take(pa.array(selection[lo:hi] - row))
        row += n
        if hi == len(selection):
            return


def read_selection(table: pa.Table) -> np.ndarray:
    return table.column("row").to_numpy()


def selection_table(rows: np.ndarray) -> pa.Table:
    return pa.table({"row": pa.array(rows, pa.int64())})
