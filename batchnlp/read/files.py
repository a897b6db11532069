"""Input files (CSV, Parquet, JSONL) through pyarrow.dataset: discovery, schema, streaming batches.
Files are local paths or URLs into object storage; pyarrow reads the latter through the fsspec
filesystem (`storage.py`), so Parquet still seeks to the row groups it needs.

Errors from pyarrow are rewritten into one line naming the file and, where pyarrow knows it,
the row; the raw text of pyarrow's message is kept after that.
"""

from __future__ import annotations

import glob
import io
import os
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pajson

from batchnlp import checksums
from batchnlp.errors import InputError, UserError
from batchnlp.log import event
from batchnlp.read.source import Entry, Unit, skipped
from batchnlp.spec import InputSpec
from batchnlp.storage import bucket_exists, describe_error, filesystem, fresh_listing, is_store_error, is_url, open_file

EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet", ".pq"), "jsonl": (".jsonl", ".json", ".ndjson")}
# A CSV record spanning this many lines is legal but suspect (a misplaced quote that closes late).
LONG_RECORD_LINES = 50
# Rows pyarrow reads at a time: small enough to bound memory, big enough to be fast.
BATCH_ROWS = 8192


class FileSource:
    """CSV, Parquet or JSONL files: a file, a directory or a glob."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self._first: str | None = None  # the first file the last inventory found

    def inventory(self) -> list[Entry]:
        if is_url(self.spec.path):
            entries = [Entry(url, size, mtime, version) for url, size, mtime, version in _remote_files(self.spec)]
        else:
            entries = []
            for name in discover(self.spec):
                stat = os.stat(name)  # a symbolic link's target: its content is what counts
                entries.append(Entry(local_name(name), stat.st_size, stat.st_mtime_ns))
        self._first = entries[0].name
        return entries

    def content_hash(self, entry: Entry) -> str:
        with open_binary(self.spec, entry.name) as f:
            return checksums.content_hash(f)

    def count(self, entry: Entry, check: Callable[[pa.Schema, str], None]) -> int:
        check(schema(self.spec, entry.name), entry.name)
        return count_rows(self.spec, entry.name)

    def schema(self) -> pa.Schema:
        # The plan asks right after its inventory: no second listing (a LIST request per page in a bucket).
        return schema(self.spec, self._first or discover(self.spec)[0])

    def unit_schema(self, unit: Unit) -> pa.Schema:
        return schema(self.spec, unit.name)

    def identity(self) -> dict[str, Any]:
        return {"format": self.spec.format}

    def iter_batches(self, unit: Unit, start: int) -> Iterator[pa.RecordBatch]:
        return iter_batches(self.spec, unit.name, start)


def local_name(name: str) -> str:
    """A local input's name: its folder resolved (one name whatever link leads to the folder), the
    file's own name kept, so a file replaced by a link to the same bytes is the same input."""
    path = os.path.abspath(name)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def discover(spec: InputSpec) -> list[str]:
    """The input files (paths or URLs) in a deterministic order (sorted); hidden and `_`-prefixed
    files skipped."""
    if is_url(spec.path):
        return [url for url, *_ in _remote_files(spec)]
    return [str(p) for p in _local_files(spec)]


def _local_files(spec: InputSpec) -> list[Path]:
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
    _check_found(spec, [(str(p), p.stat().st_size) for p in files])
    return files


def _check_found(spec: InputSpec, found: list[tuple[str, int]]) -> None:
    if not found:
        raise InputError(f"input.path: no {spec.format or 'input'} files found at {spec.path}")
    formats = {spec.format or _format_of(Path(name)) for name, _ in found}
    if None in formats or len(formats) > 1:
        raise InputError(f"input.format: cannot tell one format for the files at {spec.path}; set input.format")
    for name, size in found:
        if size == 0:
            raise InputError(f"{name}: the file is empty (0 bytes); remove it or fill it")


def _remote_files(spec: InputSpec) -> list[tuple[str, int, int | None, str | None]]:
    """(URL, size, modification time in ns, version) of each input object: one object, every
    object under a prefix, or a glob's matches. The time is the store's (S3: LastModified, to the
    second), the version its ETag (other content, other ETag)."""
    fs, path = filesystem(spec.path, spec.storage_options)
    protocol = spec.path.split("://", 1)[0]
    globbed = any(c in path for c in "*?[")
    fresh_listing(fs)
    try:
        if globbed:
            listing = fs.glob(path, detail=True)
        elif fs.isfile(path):
            listing = {path: fs.info(path)}
        else:
            listing = fs.find(path, detail=True)
    except Exception as e:
        raise _input_error(spec.path, e) from None
    found = []
    for name, info in sorted(listing.items()):
        base = name.rsplit("/", 1)[-1]
        if info.get("type") == "directory" or base.startswith((".", "_")):
            continue
        if not globbed and not _wanted(Path(base), spec.format):
            continue
        version = info.get("ETag") or info.get("etag") or info.get("generation")
        found.append((f"{protocol}://{name}", int(info.get("size") or 0), _mtime_ns(info),
                      str(version).strip('"') if version else None))
    if not found and not _bucket_exists(fs, spec.path, path):
        raise InputError(f"input.path: {spec.path}: the bucket {path.split('/', 1)[0]} does not exist (or is not "
                         "visible with these credentials); fix input.path or the credentials")
    _check_found(spec, [(url, size) for url, size, *_ in found])
    return found


def _bucket_exists(fs: Any, url: str, path: str) -> bool:
    """A glob in a missing bucket lists nothing, silently: tell that apart from an empty folder."""
    try:
        return bucket_exists(fs, path)
    except Exception as e:
        raise _input_error(url, e) from None


def _input_error(url: str, error: Exception) -> Exception:
    """A store's refusal as one line naming input.path; anything else (a bug) as it was raised."""
    return InputError("input.path: " + describe_error(url, error)) if is_store_error(error) else error


def _mtime_ns(info: dict[str, Any]) -> int | None:
    when = info.get("LastModified") or info.get("mtime") or info.get("last_modified")
    if hasattr(when, "timestamp"):
        return int(when.timestamp() * 1e9)
    return int(float(when) * 1e9) if isinstance(when, (int, float)) else None


def open_binary(spec: InputSpec, name: str) -> IO[bytes]:
    """An input file opened for reading, local or in object storage."""
    try:
        return open_file(name, spec.storage_options)
    except UserError as e:
        raise InputError(str(e)) from None


def _wanted(path: Path, fmt: str | None) -> bool:
    if path.name.startswith((".", "_")):
        return False
    if fmt == "openai-batch":  # a request file is JSONL
        fmt = "jsonl"
    return _format_of(path) == fmt if fmt else _format_of(path) is not None


def _format_of(path: Path) -> str | None:
    for fmt, exts in EXTENSIONS.items():
        if path.suffix.lower() in exts:
            return fmt
    return None


#: What batchnlp reads of an OpenAI Batch API request line (the rest of it is ignored).
OPENAI_REQUEST = pa.schema([("custom_id", pa.string()), ("body", pa.struct([("messages", pa.list_(pa.struct([
    ("role", pa.string()), ("content", pa.string())])))]))])


def openai_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """An OpenAI Batch request file's rows as batchnlp reads them: custom_id, messages."""
    body = batch.column("body")
    return pa.RecordBatch.from_arrays([batch.column("custom_id"), pc.struct_field(body, "messages")],
                                      names=["custom_id", "messages"])


def file_format(spec: InputSpec, name: str) -> ds.FileFormat:
    fmt = spec.format or _format_of(Path(name))
    if fmt == "openai-batch":
        return ds.JsonFileFormat(read_options=pajson.ReadOptions(block_size=1 << 22), parse_options=pajson.ParseOptions(
            explicit_schema=OPENAI_REQUEST, unexpected_field_behavior="ignore"))
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


def open_dataset(spec: InputSpec, name: str) -> ds.Dataset:
    source, fs = str(name), None
    if is_url(source):
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        store, source = filesystem(source, spec.storage_options)
        fs = PyFileSystem(FSSpecHandler(store))
    try:
        return ds.dataset(source, format=file_format(spec, name), filesystem=fs)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, LookupError) as e:
        raise InputError(describe(name, e)) from None


def schema(spec: InputSpec, name: str) -> pa.Schema:
    found = open_dataset(spec, name).schema
    if spec.format == "openai-batch":
        return openai_rows(pa.RecordBatch.from_pylist([], schema=found)).schema
    return found


def count_rows(spec: InputSpec, name: str) -> int:
    """Rows in a file. Parquet reads its metadata; CSV and JSONL are parsed whole, which also
    surfaces a malformed row before anything is written."""
    fmt = spec.format or _format_of(Path(name))
    if fmt == "csv":
        check_quotes(spec, name)
    dataset = open_dataset(spec, name)
    try:
        if fmt == "parquet":
            return dataset.count_rows()
        return sum(b.num_rows for b in dataset.to_batches(batch_size=BATCH_ROWS))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        raise InputError(describe(name, e)) from None


def check_quotes(spec: InputSpec, path: str) -> None:
    """A quote that never closes makes pyarrow read the rest of the file (or the rest of a block)
    as one text, silently. Python's csv module, strict, stops at it: quoted newlines and doubled
    quotes stay fine. Deliberately not pyarrow: it accepts end-of-file inside quotes."""
    import csv

    # Any field pyarrow reads is read here too: the csv module's default limit (128 KiB a field)
    # would take a long valid field for a broken quote.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    start, said = 1, 0
    with io.TextIOWrapper(open_binary(spec, path), newline="", encoding=spec.encoding, errors="replace") as f:
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
            if "end of data" in str(e) or "EOF" in str(e):
                raise InputError(f"{path}: line {start}: a quoted field opens there and never closes ({e}), so "
                                 "every line after it would be read as part of one text; close the quote (a quote "
                                 "inside a quoted field is written twice) and run again") from None
            raise InputError(f"{path}: line {reader.line_num}: not valid CSV ({e}); a quote inside a quoted field "
                             "is written twice") from None


def iter_batches(spec: InputSpec, path: str, start: int = 0) -> Iterator[pa.RecordBatch]:
    """The file's rows from row `start` on, in file order. Parquet seeks to the row group that holds
    `start`, so resuming late in a big file, or a Ray actor reading its one shard, decodes little
    more than it needs; CSV and JSONL have no index to seek by: they are parsed from the top."""
    dataset = open_dataset(spec, path)
    try:
        skip = start
        if isinstance(dataset.format, ds.ParquetFileFormat):
            batches, skip = _parquet_from(spec, path, start)
        else:
            # use_threads=False keeps the batch order equal to the file order, which resume relies on.
            batches = dataset.to_batches(batch_size=BATCH_ROWS, use_threads=False, batch_readahead=2)
        if spec.format == "openai-batch":
            batches = map(openai_rows, batches)
        yield from skipped(batches, skip)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        raise InputError(describe(path, e)) from None


def _parquet_from(spec: InputSpec, path: str, start: int) -> tuple[Iterator[pa.RecordBatch], int]:
    """Batches from the row group holding row `start`, and how many rows of them precede it.

    Deliberately pyarrow.parquet's own file reader rather than the dataset scanner: it reads a
    column chunk page by page through a small buffer, where the scanner holds whole row groups (a
    --limit 5000 read of a 224 MB file: 99 MiB against 600-850 MiB in pyarrow alone)."""
    import pyarrow.parquet as pq

    def batches() -> Iterator[pa.RecordBatch]:
        with open_binary(spec, str(path)) as f:
            reader = pq.ParquetFile(f, buffer_size=1 << 20, pre_buffer=False)
            sizes = [reader.metadata.row_group(i).num_rows for i in range(reader.num_row_groups)]
            first, before = 0, 0
            while first < len(sizes) and before + sizes[first] <= start:
                before += sizes[first]
                first += 1
            skipped.append(start - before)
            if first < len(sizes):
                yield from reader.iter_batches(batch_size=BATCH_ROWS, row_groups=range(first, len(sizes)),
                                               use_threads=False)

    skipped: list[int] = []
    stream = batches()
    head = next(stream, None)  # opens the file, finds the row group: `skipped` is known after it
    if head is None:
        return iter(()), 0
    return _chain(head, stream), skipped[0]


def _chain(head: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield head
    yield from rest


def describe(path: str, error: Exception) -> str:
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
