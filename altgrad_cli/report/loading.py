"""A saved JSON report read back: checked against the schemas this version writes, and rebuilt
into the `Report` the renderers take, so `altgrad render` gives what `analyze` would have printed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from altgrad_cli.errors import InputError
from altgrad_cli.io.files import load_json
from altgrad_cli.report.records import SCHEMA, Report
from altgrad_cli.report.serialize import from_json
from altgrad_cli.report.trajectory import TRAJECTORY_SCHEMA, TrajectoryReport

# The report schemas `altgrad render` reads; the HTML renderer draws any of them from the JSON
# form, the other renderers from the typed report.
READABLE_SCHEMAS: tuple[str, ...] = (SCHEMA, TRAJECTORY_SCHEMA)


def read_report_json(path: Path, schemas: tuple[str, ...] = READABLE_SCHEMAS) -> dict[str, Any]:
    """The JSON object in `path`; InputError (exit 3) when unreadable or not one of `schemas`."""
    # regular files only, size-capped, strict (no NaN, duplicate keys, 5000-digit integers, 100k
    # levels of nesting): every one of those is one InputError line, never a hang or a crash
    data = load_json(path, "JSON report")
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in schemas:
        expected = " or ".join(repr(s) for s in schemas)
        found = "no schema" if schema is None else f"schema {schema!r}"
        raise InputError(path, f"not a report this altgrad can read ({found}; expected {expected})")
    return data


def report_from_dict(
    data: dict[str, Any], path: Path | str = "report"
) -> Report | TrajectoryReport:
    """The typed report of a saved JSON form (strict); InputError (exit 3) when it does not fit."""
    try:
        if data.get("schema") == TRAJECTORY_SCHEMA:
            return from_json(TrajectoryReport, {k: v for k, v in data.items() if k != "schema"})
        return Report.from_dict(data)
    except (ValueError, TypeError) as error:  # the first place that differs, kept to one line
        raise InputError(path, f"malformed report: {str(error)[:300]}") from error


def load_report(path: Path) -> dict[str, Any]:
    """A saved report (`check REPORT`, `--baseline`) as its JSON form, after the same checks as
    `render`: strict JSON, a schema this version reads, and the typed records' shape, so a
    report whose `layers` is a number never reaches a rule that would silently skip it."""
    data = read_report_json(path)
    report_from_dict(data, path)
    return data
