"""The JSON Schema an extraction job declares: the subset batchnlp types into Parquet columns,
checked when the job is parsed (so `validate` knows it without a model), the Arrow type of each
top-level property, and the check of every answer against the schema (jsonschema) before a value
reaches a typed column.

The subset is what a column can hold: a top-level object whose properties are strings, integers,
numbers, booleans or nulls (one type, or one of them and "null"), or arrays of those. Nested
objects, references and combinators (anyOf, ...) would need a struct or union column per case;
they are refused by name, with what to do instead.
"""

from __future__ import annotations

import json
from typing import Any

from batchnlp.errors import SpecError, UserError, collect

SCALARS = {"string", "integer", "number", "boolean", "null"}
#: Keywords taken anywhere (they say nothing the decoder or the column must honour).
ANNOTATIONS = {"title", "description", "examples", "$comment", "default"}
#: The keywords each type honours; the grammar enforces them while decoding.
KEYWORDS = {
    "string": {"enum", "const", "minLength", "maxLength", "pattern"},
    "integer": {"enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": {"enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": {"enum", "const"},
    "null": set(),
    "array": {"items", "minItems", "maxItems"},
}
TOP = {"type", "properties", "required", "additionalProperties", "$schema"} | ANNOTATIONS
ADVICE = {
    "object": "nested objects are not typed into columns; flatten them into top-level properties",
    "$ref": "write the referenced schema in place",
    "$defs": "write the referenced schemas in place",
    "anyOf": "give one type (or [type, \"null\"])", "oneOf": "give one type (or [type, \"null\"])",
    "allOf": "merge the schemas into one", "not": "say what is allowed instead",
    "format": "use `pattern` with a regular expression",
    "uniqueItems": "not enforced while decoding", "multipleOf": "not enforced while decoding",
    "patternProperties": "name each property", "dependentRequired": "not enforced while decoding",
}


def check(schema: dict[str, Any], key: str = "task.schema") -> None:
    """Raise every problem of the schema at once (SpecProblems; `validate` prints one per line)."""
    problems: list[UserError] = []
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise SpecError(key, "must be an object schema: `type: object` with `properties` (one column each)")
    problems += _unknown(schema, TOP, key)
    if schema.get("additionalProperties", False) is not False:
        problems.append(SpecError(f"{key}.additionalProperties", "only false: every column is a declared property"))
    required = schema.get("required", [])
    if not isinstance(required, list) or any(name not in schema["properties"] for name in required):
        problems.append(SpecError(f"{key}.required", "must list names of `properties`"))
    for name, prop in schema["properties"].items():
        problems += _property(prop, f"{key}.properties.{name}")
    if not problems:
        problems += _library_check(schema, key)
    collect(problems)


def _property(prop: Any, key: str, in_array: bool = False) -> list[UserError]:
    if not isinstance(prop, dict):
        return [SpecError(key, "must be a schema (a table with `type`)")]
    try:
        kind = value_type(prop)
    except ValueError as e:
        combinators = [word for word in ("anyOf", "oneOf", "allOf", "not", "$ref") if word in prop]
        if combinators:
            return [SpecError(f"{key}.{word}", f"not supported; {ADVICE[word]}") for word in combinators]
        return [SpecError(f"{key}.type", str(e))]
    if kind == "array":
        if in_array:
            return [SpecError(f"{key}.type", "arrays of arrays are not typed into columns; flatten them")]
        problems = _unknown(prop, KEYWORDS["array"] | {"type"} | ANNOTATIONS, key)
        if not isinstance(prop.get("items"), dict):
            return problems + [SpecError(f"{key}.items", "required: the schema of the array's elements")]
        return problems + _property(prop["items"], f"{key}.items", in_array=True)
    problems = _unknown(prop, KEYWORDS[kind] | {"type"} | ANNOTATIONS, key)
    enum = prop.get("enum")
    if enum is not None and (not isinstance(enum, list) or not enum):
        problems.append(SpecError(f"{key}.enum", "must be a non-empty list of values"))
    return problems


def _unknown(schema: dict[str, Any], allowed: set[str], key: str) -> list[UserError]:
    kind = schema.get("type")
    return [SpecError(f"{key}.{word}", f"not supported{' for ' + repr(kind) if isinstance(kind, str) else ''}"
                                       f"{'; ' + ADVICE[word] if word in ADVICE else ''} (supported: "
                                       f"{', '.join(sorted(allowed - ANNOTATIONS))})")
            for word in schema if word not in allowed]


def _library_check(schema: dict[str, Any], key: str) -> list[UserError]:
    """What jsonschema and the grammar compiler find wrong (a bad bound, a pattern that does not
    compile), without a tokenizer: both are cheap."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = ".".join(str(p) for p in e.absolute_path)
        return [SpecError(f"{key}{'.' + where if where else ''}", e.message)]
    from batchnlp.tasks import constraint

    trouble = constraint.schema_trouble(schema)
    return [SpecError(key, f"the grammar compiler refuses it: {trouble}")] if trouble else []


def value_type(prop: dict[str, Any]) -> str:
    """A property's one type: `type: string`, or `type: [string, "null"]` (the column is nullable
    either way); an enum without a type takes its values' type."""
    kind = prop.get("type")
    if kind is None and isinstance(prop.get("enum"), list) and prop["enum"]:
        kinds = {_json_type(v) for v in prop["enum"]}
        kind = kinds.pop() if len(kinds) == 1 else None
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        if len(rest) != 1 or len(kind) > 2:
            raise ValueError("one type, or one type and \"null\"")
        kind = rest[0]
    if kind not in SCALARS | {"array", "object"}:
        raise ValueError(f"must be one of {', '.join(sorted(SCALARS | {'array'}))}; got {kind!r}")
    if kind == "object":
        raise ValueError(ADVICE["object"])
    return kind


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "number", str: "string", type(None): "null"}.get(type(value), "object")


def arrow_type(prop: dict[str, Any]) -> Any:
    """The Parquet/Arrow type of a property's column."""
    import pyarrow as pa

    kind = value_type(prop)
    if kind == "array":
        return pa.list_(arrow_type(prop["items"]))
    return {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_(),
            "null": pa.null()}[kind]


def field_metadata(prop: dict[str, Any]) -> dict[bytes, bytes] | None:
    """An enum's values (and a description) on the column's field, so a reader sees the categories."""
    inner = prop.get("items", {}) if value_type(prop) == "array" else prop
    meta = {}
    if "enum" in inner:
        meta[b"enum"] = json.dumps(inner["enum"]).encode()
    if "description" in prop:
        meta[b"description"] = str(prop["description"]).encode()
    return meta or None


def where_cut(text: str) -> str:
    """Where a JSON object that stopped early stopped: `inside "summary"` (in that top-level
    property's value), `after "rating"` (between properties), or `before the first field`."""
    depth, in_string, escaped = 0, False, False
    key: list[str] = []
    last, reading_key, in_value = None, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if reading_key:
                    last, reading_key = "".join(key), False
            elif reading_key:
                key.append(char)
            continue
        if char == '"':
            in_string = True
            if depth == 1 and not in_value:
                reading_key, key = True, []
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == ":" and depth == 1:
            in_value = True
        elif char == "," and depth == 1:
            in_value = False
    if last is None:
        return "before the first field"
    return f"inside {json.dumps(last)}" if in_value else f"after {json.dumps(last)}"


def first_object(text: str) -> Any:
    """The first JSON value of a free-text answer, as a user parsing it would take it: from its first
    `{` (after a code fence or a sentence), trailing text ignored. Raises ValueError."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in the answer")
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value


def validator(schema: dict[str, Any]) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def problem(check: Any, value: Any) -> str | None:
    """The first way `value` breaks the schema (the path and jsonschema's message), or None."""
    error = next(iter(sorted(check.iter_errors(value), key=lambda e: list(e.absolute_path))), None)
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message
