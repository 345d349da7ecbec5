"""Turn a report into the text of one `--output` format and put it on stdout or into `--out`;
notes for the user go to stderr."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Any

from altgrad_cli.errors import UsageError
from altgrad_cli.io.output import write_atomic
from altgrad_cli.report.records import Report


class Output(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    markdown = "markdown"
    html = "html"


def render(report: Report, output: Output, width: int | None = None) -> str:
    """The whole report as text; renderers load on use, so a command only pays for its own."""
    from altgrad_cli.report.render import csv_out, json_out, markdown

    if output is Output.json:
        return json_out.render_json(report)
    if output is Output.jsonl:
        return json_out.render_jsonl(report)
    if output is Output.csv:
        return csv_out.render_csv(report)
    if output is Output.markdown:
        return markdown.render_markdown(report)
    if output is Output.html:
        from altgrad_cli.report.render.html import render_html

        return render_html(report.to_dict())
    from rich.console import Console

    from altgrad_cli.report.render.table import console_width, render_table

    console = Console(
        record=True, width=width or console_width(), file=io.StringIO(), color_system=None
    )
    render_table(report, console)
    return console.export_text()


def emit(text: str, out: Path | None) -> None:
    """Write to `out` when given (atomically), else to stdout."""
    if out is not None:
        write_atomic(out, text)
    else:
        sys.stdout.write(text)


def warn(line: str) -> None:
    """One `altgrad: ...` line on stderr, for what the user should know but is not an error."""
    from rich.console import Console

    from altgrad_cli.report.render.safe_text import printable

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"altgrad: {printable(line)}", markup=False
    )


def outputs(out: Path | None, junit: Path | None, fail_if: list[str]) -> dict[str, object]:
    """The files a command will write, by option name, for `io.output.guard_outputs`."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if fail_if else None
    return {"--out": out, "--junit": junit, "GITHUB_STEP_SUMMARY": summary}


def select_layers(report: Report, key: str | None, top: int | None) -> Report:
    """`--sort KEY` and `--top N`. Numbers sort largest first, text (`name`, `format`, ...)
    A to Z; missing values last, ties by name. An unknown key lists the valid ones."""
    layers = list(report.layers)
    if key is not None:
        from altgrad_cli.report.render.columns import value
        from altgrad_cli.report.schema import field_paths

        valid = field_paths(type(layers[0])) if layers else set()
        if layers and key not in valid:
            raise UsageError(f"--sort {key!r}: no such key; valid keys: {', '.join(sorted(valid))}")
        values = [value(layer, key) for layer in layers]
        numeric = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None
        )

        def order(pair: tuple[Any, Any]) -> tuple:
            layer, v = pair
            if v is None:
                return (1, 0, layer.name)
            return (0, -v if numeric else str(v), layer.name)

        layers = [layer for layer, _ in sorted(zip(layers, values, strict=True), key=order)]
    if top is not None:
        if top < 0:
            raise UsageError("--top must be >= 0")
        layers = layers[:top]
    return replace(report, layers=tuple(layers))
