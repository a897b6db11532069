"""Settings as frozen dataclasses: a documented field (`doc`) and a checked builder from plain data
(`build`). The job spec and every task's `Params` are built with it, so `spec -> tasks -> settings`
is an ordinary downward import chain. Errors are `SpecError`s naming the full key."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Literal

from batchnlp.errors import SpecError, collect


def doc(text: str, identity: bool | str | None = None, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (shown by `batchnlp tasks` and docs/job-spec.md).
    `identity`, for the job spec's fields: whether a change makes it another job (True: it
    changes the output; False: only speed or where it runs; "sampling": only when sampling,
    which draws its random numbers batch by batch). The fingerprint is built from it."""
    return field(metadata={"doc": text, "identity": identity}, **kwargs)




def build(cls: type, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise SpecError(key, f"expected a table of settings, got {kind_of(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = [SpecError(f"{key}.{name}", f"unknown setting; known settings are: {', '.join(fields)}")
                for name in sorted(set(data) - set(fields), key=str)]
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():  # every setting checked: all the section's problems at once
        try:
            if name in data:
                values[name] = _check(hints[name], data[name], f"{key}.{name}")
            elif f.default is dataclasses.MISSING:
                raise SpecError(f"{key}.{name}", f"required: {f.metadata.get('doc', '')}".rstrip(": "))
        except SpecError as e:
            problems.append(e)
    collect(problems)
    return cls(**values)


def _check(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _check(option, value, key)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError("", errors[0]) if len(errors) == 1 else SpecError(
            key, f"expected {' or '.join(_name(o) for o in options)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise SpecError(key, f"must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise SpecError(key, f"expected a table of named settings, got {kind_of(value)}")
        return dict(value)
    if origin is list:
        if isinstance(value, str) or not isinstance(value, list):
            raise SpecError(key, f"expected a list, got {kind_of(value)}")
        return tuple(_check(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(key, f"expected a string, got {value!r}")
        return value
    return value


def _name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(map(str, typing.get_args(hint)))
    return {int: "an integer", str: "a string", bool: "true/false", float: "a number"}.get(hint, str(hint))


def kind_of(value: Any) -> str:
    return "a list" if isinstance(value, list) else "a string" if isinstance(value, str) else repr(value)


def field_docs(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, doc) for each field of a spec dataclass, for `batchnlp tasks` and docs."""
    out = []
    for f in dataclasses.fields(cls):
        default = "required" if f.default is dataclasses.MISSING else repr(f.default)
        out.append((f.name, default, f.metadata.get("doc", "")))
    return out
