"""Input files (CSV, Parquet, JSONL) through pyarrow.dataset: discovery, schema, streaming batches.

Errors from pyarrow are rewritten into one line naming the file and, where pyarrow knows it,
the row; the raw text of pyarrow's message is kept after that.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.json as pajson

from batchnlp import checksums
from batchnlp.errors import InputError
from batchnlp.log import event
from batchnlp.read.source import Entry, Unit
from batchnlp.spec import InputSpec

EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".json", ".ndjson")}
# A CSV record spanning this many lines is legal but suspect (a misplaced quote that closes late).
LONG_RECORD_LINES = 50
# Rows pyarrow reads at a time: small enough to bound memory, big enough to be fast.
BATCH_ROWS = 8192


class FileSource:
    """CSV, Parquet or JSONL files: a file, a directory or a glob."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def inventory(self) -> list[Entry]:
        entries = []
        for path in discover(self.spec):
            stat = path.stat()
            entries.append(Entry(str(path.resolve()), stat.st_size, stat.st_mtime_ns))
        return entries

    def content_hash(self, entry: Entry) -> str:
        return checksums.content_hash(Path(entry.name))

    def count(self, entry: Entry, check: Callable[[pa.Schema, str], None]) -> int:
        path = Path(entry.name)
        check(schema(self.spec, path), str(path))
        return count_rows(self.spec, path)

    def schema(self) -> pa.Schema:
        return schema(self.spec, discover(self.spec)[0])

    def identity(self) -> dict[str, Any]:
        return {"format": self.spec.format}

    def iter_batches(self, unit: Unit, start: int) -> Iterator[pa.RecordBatch]:
        return iter_batches(self.spec, Path(unit.name), start)


def discover(spec: InputSpec) -> list[Path]:
    """The input files in a deterministic order (sorted paths); hidden and `_`-prefixed files skipped."""
    raw = spec.path
    path = Path(raw)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.is_file() and _wanted(p, spec.format)]
    elif any(c in raw for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(raw, recursive=True)) if Path(p).is_file()]
        files = [p for p in files if not p.name.startswith((".", "_"))]
    else:
        raise InputError(f"input.path: {raw} does not exist (relative paths in a job file are relative to "
                         "the job file's folder)")
    if not files:
        raise InputError(f"input.path: no {spec.format or 'input'} files found at {raw}")
    formats = {spec.format or _format_of(p) for p in files}
    if None in formats or len(formats) > 1:
        raise InputError(f"input.format: cannot tell one format for the files at {raw}; set input.format")
    for p in files:
        if p.stat().st_size == 0:
            raise InputError(f"{p}: the file is empty (0 bytes); remove it or fill it")
    return files


def _wanted(path: Path, fmt: str | None) -> bool:
    if path.name.startswith((".", "_")):
        return False
    return _format_of(path) == fmt if fmt else _format_of(path) is not None


def _format_of(path: Path) -> str | None:
    for fmt, exts in EXTENSIONS.items():
        if path.suffix.lower() in exts:
            return fmt
    return None


def file_format(spec: InputSpec, path: Path) -> ds.FileFormat:
    fmt = spec.format or _format_of(path)
    text_columns = {c: pa.string() for c in (spec.text_column, spec.text_pair_column) if c}
    if fmt == "csv":
        # Text columns are read as strings, never inferred, so bytes that are not valid text fail
        # loudly (with the row) instead of becoming a binary column.
        return ds.CsvFileFormat(
            read_options=pacsv.ReadOptions(encoding=spec.encoding, block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types=text_columns, strings_can_be_null=True))
    if fmt == "jsonl":
        return ds.JsonFileFormat(read_options=pajson.ReadOptions(block_size=1 << 22))
    return ds.ParquetFileFormat()


def open_dataset(spec: InputSpec, path: Path) -> ds.Dataset:
    try:
        return ds.dataset(str(path), format=file_format(spec, path))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, LookupError) as e:
        raise InputError(describe(path, e)) from None


def schema(spec: InputSpec, path: Path) -> pa.Schema:
    return open_dataset(spec, path).schema


def count_rows(spec: InputSpec, path: Path) -> int:
    """Rows in a file. Parquet reads its metadata; CSV and JSONL are parsed whole, which also
    surfaces a malformed row before anything is written."""
    fmt = spec.format or _format_of(path)
    if fmt == "csv":
        check_quotes(spec, path)
    dataset = open_dataset(spec, path)
    try:
        if fmt == "parquet":
            return dataset.count_rows()
        return sum(b.num_rows for b in dataset.to_batches(batch_size=BATCH_ROWS))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        raise InputError(describe(path, e)) from None


def check_quotes(spec: InputSpec, path: Path) -> None:
    """A quote that never closes makes pyarrow read the rest of the file (or the rest of a block)
    as one text, silently. Python's csv module, strict, stops at it: quoted newlines and doubled
    quotes stay fine. Deliberately not pyarrow: it accepts end-of-file inside quotes."""
    import csv

    start, said = 1, 0
    with open(path, newline="", encoding=spec.encoding, errors="replace") as f:
        reader = csv.reader(f, strict=True)
        try:
            for _ in reader:
                if reader.line_num - start >= LONG_RECORD_LINES and said < 3:  # quoted newlines, many
                    said += 1
                    event("input", f"{path}: line {start}: one record spans {reader.line_num - start + 1} lines "
                                   "(a quoted field with many line breaks); check that its quotes are where you "
                                   "expect", level=30, file=str(path), line=start)
                start = reader.line_num + 1
        except csv.Error as e:
            raise InputError(f"{path}: line {start}: a quoted field opens there and never closes ({e}), so every "
                             "line after it would be read as part of one text; close the quote (a quote inside "
                             "a quoted field is written twice) and run again") from None


def iter_batches(spec: InputSpec, path: Path, start: int = 0) -> Iterator[pa.RecordBatch]:
    """The file's rows from row `start` on, in file order. Parquet seeks to the row group that holds
    `start`, so resuming late in a big file, or a Ray actor reading its one shard, decodes little
    more than it needs; CSV and JSONL have no index to seek by: they are parsed from the top."""
    dataset = open_dataset(spec, path)
    try:
        skip = start
        if start and isinstance(dataset.format, ds.ParquetFileFormat):
            batches, skip = _parquet_from(dataset, start)
        else:
            # use_threads=False keeps the batch order equal to the file order, which resume relies on.
            batches = dataset.to_batches(batch_size=BATCH_ROWS, use_threads=False)
        for batch in batches:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip) if skip else batch
            skip = 0
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        raise InputError(describe(path, e)) from None


def _parquet_from(dataset: ds.Dataset, start: int) -> tuple[Iterator[pa.RecordBatch], int]:
    """Batches from the row group holding row `start`, and how many rows of them precede it."""
    (fragment,) = dataset.get_fragments()
    groups = fragment.row_groups
    first, before = 0, 0
    while first < len(groups) and before + groups[first].num_rows <= start:
        before += groups[first].num_rows
        first += 1
    rest = fragment.subset(row_group_ids=list(range(first, len(groups))))
    return rest.to_batches(schema=dataset.schema, batch_size=BATCH_ROWS, use_threads=False), start - before


def describe(path: Path, error: Exception) -> str:
    """One line naming the file, the row where pyarrow gives it, and what to do."""
    message = str(error).strip().splitlines()[0]
    for marker in ("CSV parse error", "In CSV column", "JSON parse error", "CSV conversion error"):
        at = message.find(marker)
        if at >= 0:
            message = message[at:]
            break
    hint = ""
    if "UTF8" in message or "utf-8" in message.lower() or isinstance(error, UnicodeDecodeError):
        hint = "; the file is not valid UTF-8: set input.encoding (e.g. latin-1) or convert it"
    elif "Expected" in message and "columns" in message:
        hint = "; fix or quote that row"
    return f"{path}: {message}{hint}"
