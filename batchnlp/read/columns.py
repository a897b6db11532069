"""The output's input columns, always by name.

Files of one input need not agree on their columns: exports add a column, drop one, or write them
in another order; CSV types are inferred per file. The output keeps one set of input columns:

- by default the union of the columns seen so far, in first-seen order (the output's first file
  first); `input.columns` keeps only the listed ones, in that order (the text, pair and id columns
  always);
- a column first seen in a later file: `input.new_columns` add (nullable, default), ignore, or
  refuse;
- a column whose type differs from the output's: `input.type_changes` cast (only where the cast
  cannot lose information, e.g. int32 -> int64, int64 -> string; default), or refuse; a cast that
  could lose information is refused in one line naming the file, the column and both types;
- a file without a kept column gets nulls there (the text and id columns are required in every
  file: checked when the file is counted).

Each part is then built by name (`select`), never by position: a file whose columns come in
another order lands every value under its own column.
"""

from __future__ import annotations

import base64
from typing import Sequence

import pyarrow as pa

from batchnlp.errors import InputError, SpecError
from batchnlp.spec import InputSpec


def merge(spec: InputSpec, pinned: pa.Schema | None, files: Sequence[tuple[str, pa.Schema]]) -> pa.Schema:
    """The input columns of the output: `pinned` (what it already holds) extended by `files` (name,
    schema) in plan order, as the policies say."""
    fields: list[pa.Field] = list(pinned) if pinned is not None else []
    index = {f.name: i for i, f in enumerate(fields)}
    kept = _kept(spec)
    for name, schema in files:
        established = bool(fields)  # the output's first file sets its columns; the policy is for later ones
        for field in schema:
            if kept is not None and field.name not in kept:
                continue
            if field.name in index:
                _check_type(spec, name, field, fields[index[field.name]].type)
                continue
            if established and spec.new_columns == "refuse" and kept is None:
                raise InputError(f"{name}: column \"{field.name}\" is new (the output's columns are "
                                 f"{', '.join(f.name for f in fields)}); set input.new_columns: add (or ignore), "
                                 "or list the columns to keep in input.columns")
            if established and spec.new_columns == "ignore" and kept is None:
                continue
            index[field.name] = len(fields)
            fields.append(field.with_nullable(True))
    if kept is not None:
        missing = [c for c in kept if c not in index]
        if missing and files:
            raise SpecError("input.columns", f'column "{missing[0]}" is in none of the input files; columns are: '
                                             f"{', '.join(f.name for f in fields)}")
        order = {c: i for i, c in enumerate(kept)}
        fields.sort(key=lambda f: order.get(f.name, len(order)))
    return pa.schema(fields)


def _kept(spec: InputSpec) -> list[str] | None:
    if spec.columns is None:
        return None
    named = [spec.text_column, spec.text_pair_column, spec.id_column]
    return [*spec.columns, *(c for c in named if c and c not in spec.columns)]


def _check_type(spec: InputSpec, name: str, field: pa.Field, target: pa.DataType) -> None:
    if field.type == target:
        return
    if spec.type_changes == "refuse":
        raise InputError(f"{name}: column \"{field.name}\" holds {field.type} here but {target} in the output; "
                         "set input.type_changes: cast to cast it where no information is lost, or fix the file")
    if not lossless(field.type, target):
        raise InputError(f"{name}: column \"{field.name}\" holds {field.type} here but {target} in the output, and "
                         f"{field.type} cannot be cast to {target} without loss; fix the file, or keep the columns "
                         "you need with input.columns")


def lossless(source: pa.DataType, target: pa.DataType) -> bool:
    """Whether every value of `source` has an exact equal in `target` (the casts `cast` allows)."""
    t = pa.types
    if source == target or t.is_null(source):
        return True
    if t.is_dictionary(source):
        return lossless(source.value_type, target)
    if _is_text(target):
        return _is_text(source) or t.is_integer(source) or t.is_floating(source) or t.is_boolean(source) \
            or t.is_temporal(source) or t.is_decimal(source)
    if t.is_integer(source) and t.is_integer(target):
        if t.is_signed_integer(source) and not t.is_signed_integer(target):
            return False
        extra = 1 if t.is_signed_integer(target) and not t.is_signed_integer(source) else 0
        return source.bit_width + extra <= target.bit_width
    if t.is_integer(source) and t.is_floating(target):
        return source.bit_width < {16: 11, 32: 24, 64: 53}[target.bit_width]  # the mantissa holds every value
    if t.is_floating(source) and t.is_floating(target):
        return source.bit_width <= target.bit_width
    if t.is_timestamp(source) and t.is_timestamp(target):
        units = ["s", "ms", "us", "ns"]
        return source.tz == target.tz and units.index(source.unit) <= units.index(target.unit)
    if t.is_date(source) and t.is_date(target):
        return True
    return False


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def select(rows: pa.Table, fields: Sequence[pa.Field]) -> list[pa.ChunkedArray | pa.Array]:
    """The input columns of a part, taken from `rows` by name: cast to the output's type where the
    file's differs (only lossless casts get this far), nulls where the file lacks the column."""
    arrays = []
    for field in fields:
        if field.name in rows.column_names:
            column = rows.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type, safe=True))
        else:
            arrays.append(pa.nulls(rows.num_rows, field.type))
    return arrays


def serialize(schema: pa.Schema) -> str:
    """The schema as text for the output's record (Arrow IPC, base64): exact, unlike its repr."""
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def deserialize(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
