"""A saved JSON report read back: checked against the schemas this version writes, and rebuilt
into the `Report` the renderers take, so `altgrad render` gives what `analyze` would have printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from altgrad_cli.errors import InputError
from altgrad_cli.io.pairing import Skipped
from altgrad_cli.report.records import SCHEMA, LayerRecord, Report, SummaryRecord

# The keys of a record that are not metrics (LayerRecord / SummaryRecord fields).
_LAYER_FIELDS = ("name", "format", "dtype", "shape", "scale")


def read_report_json(path: Path, schemas: tuple[str, ...] = (SCHEMA,)) -> dict[str, Any]:
    """The JSON object in `path`; InputError (exit 3) when unreadable or not one of `schemas`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise InputError(path, "no such file") from error
    except PermissionError as error:
        raise InputError(path, "permission denied") from error
    except IsADirectoryError as error:
        raise InputError(path, "is a directory, not a JSON report") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"not a valid JSON report ({error})") from error
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in schemas:
        expected = " or ".join(repr(s) for s in schemas)
        found = "no schema" if schema is None else f"schema {schema!r}"
        raise InputError(path, f"not a report this altgrad can read ({found}; expected {expected})")
    return data


def report_from_dict(data: dict[str, Any], path: Path | str = "report") -> Report:
    """Rebuild the Report that `Report.to_dict()` wrote; its `to_dict()` gives `data` back."""
    try:
        layers = tuple(
            LayerRecord(
                name=layer["name"],
                format=layer["format"],
                dtype=layer["dtype"],
                shape=tuple(layer["shape"]),
                scale=layer["scale"],
                metrics={k: v for k, v in layer.items() if k not in _LAYER_FIELDS},
            )
            for layer in data["layers"]
        )
        summary = tuple(
            SummaryRecord(
                format=s["format"],
                tensors=s["tensors"],
                metrics={k: v for k, v in s.items() if k not in ("format", "tensors", "worst")},
                worst=tuple(s["worst"]),
            )
            for s in data["summary"]
        )
        skipped = tuple(Skipped(name=s["name"], reason=s["reason"]) for s in data["skipped"])
        return Report(
            inputs=data["inputs"],
            options=data["options"],
            formats=tuple(data["formats"]),
            layers=layers,
            summary=summary,
            skipped=skipped,
            checks=data.get("checks"),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise InputError(path, f"malformed report: missing or wrong {error}") from error
