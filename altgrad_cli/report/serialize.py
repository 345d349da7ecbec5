"""Records to JSON and back, driven by the dataclass fields and their type hints.

Field order is key order. Field metadata `flatten` spills a nested record's keys into its parent,
`omit_none` leaves a None out instead of writing null. `from_json` is strict: a saved report
whose shape does not match the records is refused, never half-read.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

_SCALARS = (bool, int, float, str)


def to_json(value: Any) -> Any:
    """The JSON form of a record: dataclasses become objects in field order, tuples lists."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            item = getattr(value, f.name)
            if item is None and f.metadata.get("omit_none"):
                continue
            if f.metadata.get("flatten"):
                out.update(to_json(item))
            else:
                out[f.name] = to_json(item)
        return out
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(hint: Any, value: Any, where: str = "report") -> Any:
    """`value` (parsed JSON) as the type `hint`; ValueError naming the first place that differs."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return from_json(member, value, where)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{where}: matches no known shape")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        return tuple(from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        return {k: from_json(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(hint):
        return _record(hint, value, where)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return value  # a whole number written without a point; kept as written
    if hint in _SCALARS and type(value) is hint:
        return value
    raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r:.40}")


def _record(record: type, value: Any, where: str, *, whole: bool = True) -> Any:
    """`whole`: `value` holds this record's keys and no others (False for a flattened part)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object")
    hints = typing.get_type_hints(record)
    kwargs, used = {}, set()
    for f in fields(record):
        if f.metadata.get("flatten"):
            kwargs[f.name] = _record(hints[f.name], value, where, whole=False)
            used |= _keys(hints[f.name])
        elif f.name in value:
            kwargs[f.name] = from_json(hints[f.name], value[f.name], f"{where}.{f.name}")
            used.add(f.name)
        elif not f.metadata.get("omit_none"):
            raise ValueError(f"{where}: missing {f.name!r}")
    extra = set(value) - used
    if whole and extra:
        raise ValueError(f"{where}: unexpected key {sorted(extra)[0]!r}")
    return record(**kwargs)


def _keys(record: type) -> set[str]:
    hints = typing.get_type_hints(record)
    keys: set[str] = set()
    for f in fields(record):
        keys |= _keys(hints[f.name]) if f.metadata.get("flatten") else {f.name}
    return keys


def lookup(record: dict[str, Any], key: str) -> Any:
    """The value at a dotted key of a JSON record; KeyError when any part is absent."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value
