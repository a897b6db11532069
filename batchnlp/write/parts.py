"""Annotated Parquet parts: the input columns, the task's typed columns and `error`, written to a
temporary name and renamed into place, so a part either exists whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchnlp.checksums import sha256
from batchnlp.errors import SpecError

ERROR_FIELD = pa.field("error", pa.string())


def output_schema(input_schema: pa.Schema, fields: Sequence[pa.Field], prefix: str) -> pa.Schema:
    extra = [f.with_name(prefix + f.name) for f in [*fields, ERROR_FIELD]]
    return pa.schema([*input_schema, *extra])


def check_collisions(output_names: list[str]) -> None:
    """An annotation column may not take the name of an input column."""
    seen = set()
    for name in output_names:
        if name in seen:
            raise SpecError("output.prefix", f'the input already has a column "{name}", which this task adds; '
                                             'set output.prefix (e.g. "pred_") to keep both')
        seen.add(name)


def annotation_array(field: pa.Field, values: list[Any]) -> pa.Array:
    """One annotation column in its declared type; None marks a row with no annotation."""
    if pa.types.is_fixed_size_list(field.type):
        # Vectors go through numpy in one piece: a Python list of floats per row would be slow.
        width = field.type.list_size
        dense = np.zeros((len(values), width), dtype=np.float32)
        mask = np.array([v is None for v in values], dtype=bool)
        present = [v for v in values if v is not None]
        if present:
            dense[~mask] = np.stack(present)
        return pa.FixedSizeListArray.from_arrays(pa.array(dense.ravel()), width, mask=pa.array(mask))
    return pa.array(values, type=field.type)


def build_table(rows: pa.Table, schema: pa.Schema, annotations: list[pa.Array], errors: list[str | None]) -> pa.Table:
    """Input columns followed by the annotation columns; `schema` (declared before the run) is enforced."""
    arrays = [*rows.columns, *annotations, pa.array(errors, type=pa.string())]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_atomic(table: pa.Table, path: Path) -> tuple[int, str]:
    """Write, flush to disk, then rename: a crash leaves either the old state or the whole part.
    Returns the part's size and sha256 (of the bytes as read back from disk, as `verify` will)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a half-written part (disk full) must not take the space it freed
        raise
    digest = sha256(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path.stat().st_size, digest



def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
