"""The report's JSON Schema, generated from the record dataclasses so the two cannot disagree.

Types map one to one (int → integer, float → number, `X | None` → also null, tuples → arrays,
`dict[str, X]` → objects of X, Literal → enum, a record → a `$defs` entry that allows no other
keys); a field's `schema` metadata adds constraints such as bounds.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any

from altgrad_cli.report.records import SCHEMA, Report

_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


@cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every JSON report this version writes validates against."""
    return document_schema(Report, SCHEMA, "altgrad report")


def document_schema(record: type, schema_id: str, title: str) -> dict[str, Any]:
    """The JSON Schema of a whole JSON document: `record`'s fields after a `schema` key that
    names `schema_id` (the report and the trajectory report share this shape)."""
    defs: dict[str, Any] = {}
    body = _record_schema(record, defs)
    body["properties"] = {"schema": {"const": schema_id}, **body["properties"]}
    body["required"] = ["schema", *body["required"]]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "title": title,
        **body,
        "$defs": dict(sorted(defs.items())),
    }


def field_paths(record: type) -> set[str]:
    """Every dotted key of a record's JSON form that leads to a number, a string or a flag (the
    keys columns and rules may name); union members and optional groups included."""
    paths: set[str] = set()
    hints = typing.get_type_hints(record)
    for f in fields(record):
        prefix = "" if f.metadata.get("flatten") else f"{f.name}."
        for member in _members(hints[f.name]):
            if is_dataclass(member):
                paths |= {prefix + p for p in field_paths(member)}
            else:
                paths.add(f.name)
    return paths


def _members(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(m for m in typing.get_args(hint) if m is not type(None))
    return (hint,)


def _record_schema(record: type, defs: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    hints = typing.get_type_hints(record)
    for f in fields(record):
        if f.metadata.get("flatten"):
            inner = _record_schema(hints[f.name], defs)
            properties.update(inner["properties"])
            required += inner["required"]
            continue
        properties[f.name] = _type_schema(hints[f.name], defs, f.metadata.get("schema", {}))
        if not f.metadata.get("omit_none"):
            required.append(f.name)
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _type_schema(hint: Any, defs: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if all(a in _SCALARS for a in args):
            return {"type": [_SCALARS[a] for a in args], **extra}
        return {"anyOf": [_type_schema(a, defs, extra) for a in args]}
    if hint in _SCALARS:
        return {"type": _SCALARS[hint], **extra}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is tuple:
        items = _type_schema(args[0], defs, extra.get("items", {}))
        return {"type": "array", "items": items}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1], defs, {}), **extra}
    if is_dataclass(hint):
        if hint.__name__ not in defs:
            defs[hint.__name__] = {}  # placeholder first: records may nest themselves
            defs[hint.__name__] = _record_schema(hint, defs)
        return {"$ref": f"#/$defs/{hint.__name__}"}
    if hint is Any:
        return {}
    raise TypeError(f"no JSON Schema for {hint!r}")
