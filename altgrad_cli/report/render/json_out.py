"""JSON (the whole report) and JSON Lines (one layer record a line): deterministic bytes."""

from __future__ import annotations

import json

from altgrad_cli.report.records import Report


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def render_jsonl(report: Report) -> str:
    return "".join(json.dumps(layer.to_dict(), allow_nan=False) + "\n" for layer in report.layers)
