"""Markdown: the summary and the per-tensor stall table, for PR comments and step summaries."""

from __future__ import annotations

from altgrad_cli.report.records import Report
from altgrad_cli.report.render.columns import STALL_COLUMNS, ULP_COLUMNS, fmt_number, value
from altgrad_cli.report.render.safe_text import markdown_cell, markdown_code
from altgrad_cli.report.render.stored import verdict


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(report: Report) -> str:
    lines = ["# altgrad report", ""]
    cols = STALL_COLUMNS + ULP_COLUMNS
    lines += ["## Summary", ""]
    lines += _table(
        ["format", "tensors", *[h for h, _ in cols]],
        [
            [s.format, str(s.tensors), *[fmt_number(value(s, k)) for _, k in cols]]
            for s in report.summary
        ],
    )
    verdicts = [line for line in map(verdict, report.summary) if line is not None]
    if verdicts:
        lines += ["", *[f"- {line}" for line in verdicts]]
    lines += ["", "## Tensors", ""]
    lines += _table(
        ["tensor", "format", *[h for h, _ in cols]],
        [
            [
                markdown_code(layer.name),
                layer.format,
                *[fmt_number(value(layer, k)) for _, k in cols],
            ]
            for layer in report.layers
        ],
    )
    if report.skipped:
        lines += ["", "## Skipped", ""]
        lines += _table(
            ["tensor", "reason"],
            [[markdown_code(s.name), markdown_cell(s.reason)] for s in report.skipped],
        )
    return "\n".join(lines) + "\n"
