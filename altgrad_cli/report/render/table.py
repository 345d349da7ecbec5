"""Rich tables for people: stall/flip, ULP and grid steps, grid alignment, gradient/update stiffness,
stiffness histograms as bar charts, and a layer × format comparison when several formats ran."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from altgrad_cli.report.records import Report
from altgrad_cli.report.render.columns import (
    GRAD_COLUMNS,
    GRID_COLUMNS,
    STALL_COLUMNS,
    ULP_COLUMNS,
    fmt_number,
    value,
)

BAR_WIDTH = 30


def _metric_table(title: str, report: Report, columns: list[tuple[str, str]]) -> Table:
    """Per-tensor rows, then the per-format summary rows below a rule."""
    table = Table(title=title, title_justify="left", show_footer=False)
    table.add_column("tensor", overflow="fold")
    table.add_column("format")
    for header, _ in columns:
        table.add_column(header, justify="right")
    last = len(report.layers) - 1
    for i, layer in enumerate(report.layers):
        cells = [fmt_number(value(layer, k)) for _, k in columns]
        table.add_row(layer.name, layer.format, *cells, end_section=i == last)
    for s in report.summary:
        table.add_row(
            Text(f"all {s.tensors} tensors", style="bold"),
            Text(s.format, style="bold"),
            *[Text(fmt_number(value(s, k)), style="bold") for _, k in columns],
        )
    return table


def _prediction_table(report: Report) -> Table:
    table = Table(title="Predicted (|Δ| ≥ S/2) vs actual flips, all tensors", title_justify="left")
    for column in [
        "format",
        "predicted flip: flipped",
        "predicted flip: stalled",
        "predicted stall: flipped",
        "predicted stall: stalled",
    ]:
        table.add_column(column, justify="right")
    for s in report.summary:
        pva = s.metrics.update_stiffness.predicted_vs_actual
        table.add_row(
            s.format,
            *[
                fmt_number(count)
                for outcome in (pva.predicted_flip, pva.predicted_stall)
                for count in (outcome.flipped, outcome.not_flipped)
            ],
        )
    return table


def _stiffness_bars(report: Report) -> list[Table]:
    tables = []
    for s in report.summary:
        hist = s.metrics.stiffness.histogram
        if not hist:
            continue
        peak = max(hist.values())
        table = Table(
            title=f"Stiffness histogram, {s.format} (count per floor(log2 S))",
            title_justify="left",
            box=None,
        )
        table.add_column("log2 S", justify="right")
        table.add_column("count", justify="right")
        table.add_column("")
        for key, count in hist.items():
            bar = "█" * max(1, round(BAR_WIDTH * count / peak)) if count else ""
            table.add_row(key, f"{count:,}", Text(bar, style="cyan"))
        tables.append(table)
    return tables


def _comparison(report: Report) -> Table:
    formats = [s.format for s in report.summary]
    table = Table(title="Stall ratio by format", title_justify="left")
    table.add_column("tensor", overflow="fold")
    for name in formats:
        table.add_column(name, justify="right")
    by_name: dict[str, dict[str, float]] = {}
    for layer in report.layers:
        by_name.setdefault(layer.name, {})[layer.format] = layer.metrics.stall_ratio
    for name, row in by_name.items():
        table.add_row(name, *[fmt_number(row.get(f)) for f in formats])
    table.add_row(
        Text("all", style="bold"),
        *[Text(fmt_number(s.metrics.stall_ratio), style="bold") for s in report.summary],
    )
    return table


def render_table(report: Report, console: Console) -> None:
    parts = [_metric_table("Stall and flips", report, STALL_COLUMNS)]
    parts.append(_metric_table("ULP movement and grid steps", report, ULP_COLUMNS))
    parts.append(_metric_table("Grid alignment of BEFORE", report, GRID_COLUMNS))
    if report.inputs.grads is not None:
        parts.append(_metric_table("Gradient and update vs stiffness S", report, GRAD_COLUMNS))
    else:
        parts.append(_metric_table("Update vs stiffness S", report, GRAD_COLUMNS[3:]))
    parts.append(_prediction_table(report))
    parts.extend(_stiffness_bars(report))
    if len(report.summary) > 1:
        parts.append(_comparison(report))
    if report.skipped:
        skipped = Table(title="Skipped", title_justify="left")
        skipped.add_column("tensor")
        skipped.add_column("reason")
        for s in report.skipped:
            skipped.add_row(s.name, s.reason)
        parts.append(skipped)
    console.print(Group(*parts))
    for s in report.summary:
        console.print(
            f"[bold]{s.format}[/bold]: {s.tensors} tensors, stall ratio {fmt_number(s.metrics.stall_ratio)}, "
            f"flips {s.metrics.flips:,} of {s.metrics.updates:,} updates"
            + (
                f"; most stalled: {s.worst[0].name} ({fmt_number(s.worst[0].stall_ratio)})"
                if s.worst
                else ""
            )
        )
