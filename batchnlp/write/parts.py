"""Annotated Parquet parts: the input columns, the task's typed columns and `error`. The output
folder (`write/folder.py`) writes them so that a part either exists whole or not at all."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.read import columns

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
    """The input columns, taken by name (never by position: files may order them differently),
    then the annotation columns; `schema` (declared before the run) is enforced."""
    inputs = list(schema)[:len(schema) - len(annotations) - 1]
    arrays = [*columns.select(rows, inputs), *annotations, pa.array(errors, type=pa.string())]
    return pa.Table.from_arrays(arrays, schema=schema)
