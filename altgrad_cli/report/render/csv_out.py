"""CSV: one row per (tensor, format), full-precision numbers, for spreadsheets and pandas."""

from __future__ import annotations

import csv
import io

from altgrad_cli.report.records import Report
from altgrad_cli.report.render.columns import CSV_KEYS, value
from altgrad_cli.report.render.safe_text import printable


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "format", "dtype", "shape", *CSV_KEYS])
    for layer in report.layers:
        row = [value(layer, key) for key in CSV_KEYS]
        shape = "x".join(map(str, layer.shape))
        writer.writerow(
            [
                printable(layer.name),  # no raw escape sequences when the CSV is shown
                layer.format,
                layer.dtype,
                shape,
                *["" if v is None else repr(v) if isinstance(v, float) else v for v in row],
            ]
        )
    return out.getvalue()
