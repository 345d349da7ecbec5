"""Rich tables for people: stall/flip, storage ULPs, grid alignment, gradient/update stiffness,
stiffness and block-scale histograms as bar charts, and (several recipes) a stall-ratio comparison
and a what-if table with the best recipe per row marked.

Every table fits the console's width: tensor names are shortened from the left ("…" keeps the
distinctive tail, the full name stays in JSON/CSV), then columns drop from the right of their
list in columns.py (most important first), and no cell ever wraps.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from altgrad_cli.report.records import LayerRecord, Report, SummaryRecord
from altgrad_cli.report.render.columns import (
    GRAD_COLUMNS,
    GRID_COLUMNS,
    STALL_COLUMNS,
    ULP_COLUMNS,
    fmt_column,
    fmt_number,
    value,
)
from altgrad_cli.report.render.safe_text import printable
from altgrad_cli.report.render.stored import STORED_COLUMNS, sr_cell, verdict
from altgrad_cli.report.render.whatif import (
    BEST,
    WHAT_IF_ROWS,
    block_scale_bars,
    what_if_cells,
    what_if_groups,
)

BAR_WIDTH = 30
NAME_FLOOR = 20  # tensor names shrink to this before any column is dropped
NAME_MIN = 12  # ... and to this when even one metric column would not fit
NOT_TERMINAL_WIDTH = 120


def console_width() -> int:
    """The terminal's width (COLUMNS honoured); 120 when writing to a pipe or file with no COLUMNS."""
    console = Console()
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console.width
    return NOT_TERMINAL_WIDTH


def shorten(name: str, width: int) -> str:
    """The name in at most `width` characters, cut from the left: the tail tells tensors apart.
    Control characters come out escaped (a name is data: it never moves the terminal's cursor)."""
    name = printable(name)
    return name if len(name) <= width else "…" + name[len(name) - width + 1 :]


def _fit(
    title: str,
    labels: list[list[str]],
    label_headers: list[str],
    columns: Sequence[str],
    cells: list[list[str]],
    width: int,
    *,
    bold_from: int | None = None,
    caption: str | None = None,
    section_ends: Collection[int] = (),
) -> Table:
    """A table of label columns (the first one shrinkable) and metric columns that fits `width`."""
    labels = [[printable(text) for text in label] for label in labels]  # measured as shown

    def need(name_width: int, kept: int) -> int:
        widths = [name_width] + [
            max(len(h), *(len(r[i]) for r in labels)) for i, h in enumerate(label_headers) if i
        ]
        widths += [max(len(columns[j]), *(len(r[j]) for r in cells)) for j in range(kept)]
        return sum(w + 3 for w in widths) + 1

    natural = max(len(label_headers[0]), *(len(r[0]) for r in labels))
    name_width, kept = natural, len(columns)
    if need(name_width, kept) > width:
        name_width = max(min(natural, NAME_FLOOR), natural - (need(name_width, kept) - width))
    while kept > 1 and need(name_width, kept) > width:
        kept -= 1
    if need(name_width, kept) > width:
        name_width = max(NAME_MIN, name_width - (need(name_width, kept) - width))
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for header in label_headers:
        table.add_column(header, no_wrap=True)
    for header in columns[:kept]:
        table.add_column(header, justify="right", no_wrap=True)
    for i, (label, row) in enumerate(zip(labels, cells, strict=True)):
        style = "bold" if bold_from is not None and i >= bold_from else ""
        texts = [shorten(label[0], name_width), *label[1:], *row[:kept]]
        table.add_row(
            *[Text(t, style=style) for t in texts],
            end_section=(bold_from is not None and i == bold_from - 1) or i in section_ends,
        )
    return table


def _fit_split(
    title: str,
    labels: list[list[str]],
    label_headers: list[str],
    columns: Sequence[str],
    cells: list[list[str]],
    width: int,
    **options,
) -> list[Table]:
    """`_fit` for tables whose columns are recipes side by side: none may be dropped (a ★ would
    point at a comparison the reader cannot see), so the columns that do not fit go on into
    further tables with the same rows."""
    tables, start, total = [], 0, len(columns)
    while start < total:
        rest = [row[start:] for row in cells]
        table = _fit(title, labels, label_headers, columns[start:], rest, width, **options)
        kept = len(table.columns) - len(label_headers)
        if kept < total - start or start:
            shown = f"recipe {start + 1}" if kept == 1 else f"recipes {start + 1}–{start + kept}"
            table.title = f"{title}, {shown} of {total}"
        tables.append(table)
        start += kept
    return tables


def _column_cells(
    records: Sequence[LayerRecord | SummaryRecord], keys: Sequence[str]
) -> list[list[str]]:
    """Cells row by row, each column formatted in one style."""
    by_column = [fmt_column([value(r, key) for r in records]) for key in keys]
    return [list(row) for row in zip(*by_column, strict=True)] if keys else [[] for _ in records]


def _no_updates(records: Sequence[LayerRecord | SummaryRecord], cells: list[list[str]]) -> None:
    """A stall ratio is not defined without updates: say so instead of printing 0."""
    for record, row in zip(records, cells, strict=True):
        if record.metrics.updates == 0:
            row[0] = "no updates"


def _metric_table(title: str, report: Report, columns: list[tuple[str, str]], width: int) -> Table:
    """Per-(tensor, format) rows, then the per-format summary rows below a rule."""
    records: list[LayerRecord | SummaryRecord] = [*report.layers, *report.summary]
    cells = _column_cells(records, [key for _, key in columns])
    if columns is STALL_COLUMNS:
        _no_updates(records, cells)
    labels = [[layer.name, layer.format] for layer in report.layers]
    labels += [[f"all {s.tensors} tensors", s.format] for s in report.summary]
    return _fit(
        title,
        labels,
        ["tensor", "format"],
        [h for h, _ in columns],
        cells,
        width,
        bold_from=len(report.layers),
    )


def _ulp_table(report: Report, width: int) -> Table:
    """Storage ULPs depend on the checkpoint's dtype, not on the format: one row per tensor."""
    firsts = list({layer.name: layer for layer in reversed(report.layers)}.values())[::-1]
    records: list[LayerRecord | SummaryRecord] = [*firsts, *report.summary[:1]]
    cells = _column_cells(records, [key for _, key in ULP_COLUMNS])
    labels = [[layer.name] for layer in firsts]
    labels += [[f"all {s.tensors} tensors"] for s in report.summary[:1]]
    return _fit(
        "Storage ULPs moved, per tensor",
        labels,
        ["tensor"],
        [h for h, _ in ULP_COLUMNS],
        cells,
        width,
        bold_from=len(firsts),
        caption="* mean without sign changes: an element that crossed zero moved across two "
        "magnitudes; those are counted apart.",
    )


def _kept_tables(report: Report, width: int) -> list[Table]:
    """Per format, what a copy of the weights stored in it, with no master copy, keeps of the
    step: round-to-nearest's moves and lost mass, and stochastic rounding's expected moves."""
    tables = []
    for s in report.summary:
        own = [layer for layer in report.layers if layer.format == s.format]
        records: list[LayerRecord | SummaryRecord] = [*own, s]
        cells = _column_cells(records, [key for _, key in STORED_COLUMNS])
        for record, row in zip(records, cells, strict=True):
            row.insert(3, sr_cell(record))  # after the lost mass: columns drop from the right
        headers = [h for h, _ in STORED_COLUMNS]
        headers.insert(3, "moved (SR) ± std")
        tables.append(
            _fit(
                f"Kept in {s.format} without a master copy: round-to-nearest vs stochastic rounding",
                [[layer.name] for layer in own] + [[f"all {s.tensors} tensors"]],
                ["tensor"],
                headers,
                cells,
                width,
                bold_from=len(own),
            )
        )
    return tables


def _prediction_table(report: Report) -> Table:
    table = Table(title="Predicted (|Δ| ≥ S/2) vs actual flips, all tensors", title_justify="left")
    table.add_column("format", no_wrap=True)
    for column in ["flip: flipped", "flip: stalled", "stall: flipped", "stall: stalled"]:
        table.add_column(column, justify="right")
    for s in report.summary:
        pva = s.metrics.update_stiffness.predicted_vs_actual
        table.add_row(
            s.format,
            *fmt_column(
                [
                    pva.predicted_flip.flipped,
                    pva.predicted_flip.not_flipped,
                    pva.predicted_stall.flipped,
                    pva.predicted_stall.not_flipped,
                ]
            ),
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
        for (key, count), text in zip(hist.items(), fmt_column(list(hist.values())), strict=True):
            bar = "█" * max(1, round(BAR_WIDTH * count / peak)) if count else ""
            table.add_row(key, text, Text(bar, style="cyan"))
        tables.append(table)
    return tables


def _comparison(report: Report, width: int) -> list[Table]:
    formats = [s.format for s in report.summary]
    by_name: dict[str, dict[str, LayerRecord]] = {}
    for layer in report.layers:
        by_name.setdefault(layer.name, {})[layer.format] = layer
    names = list(by_name)
    columns = []
    for fmt in formats:
        column = fmt_column(
            [row[fmt].metrics.stall_ratio if fmt in row else None for row in by_name.values()]
            + [next(s.metrics.stall_ratio for s in report.summary if s.format == fmt)]
        )
        for i, row in enumerate(by_name.values()):
            if fmt in row and row[fmt].metrics.updates == 0:
                column[i] = "no updates"
        columns.append(column)
    cells = [list(row) for row in zip(*columns, strict=True)]
    return _fit_split(
        "Stall ratio by recipe",
        [[n] for n in names] + [["all"]],
        ["tensor"],
        formats,
        cells,
        width,
        bold_from=len(names),
    )


def _what_if_tables(report: Report, width: int) -> list[Table]:
    """The recipes side by side per tensor group (when there is more than one), then over all."""
    tables = []
    recipes = [s.format for s in report.summary]
    groups = what_if_groups(report)
    if len(groups) > 1:
        labels: list[list[str]] = []
        cells: list[list[str]] = []
        ends = set()
        for group in groups:
            group_cells = group.cells()
            for i, (metric, _, _) in enumerate(WHAT_IF_ROWS):
                name = group.name if i == 0 else ""
                if i == 1 and group.tensors > 1:
                    name = f"({group.tensors} tensors)"
                labels.append([name, metric])
                cells.append(group_cells[i])
            ends.add(len(labels) - 1)
        title = f"What if: recipes side by side, per tensor group ({BEST} best per row)"
        tables += _fit_split(
            title, labels, ["tensor group", "metric"], recipes, cells, width, section_ends=ends
        )
    labels, recipes, cells = what_if_cells(report)
    title = f"What if: recipes side by side, all tensors ({BEST} best per row)"
    tables += _fit_split(title, labels, ["metric"], recipes, cells, width)
    return tables


def _skipped(report: Report, width: int) -> Table:
    table = Table(title="Skipped", title_justify="left")
    table.add_column("tensor", no_wrap=True)
    table.add_column("reason", overflow="fold")
    for s in report.skipped:
        # Text, not str: a reason quoting a name is never read as rich markup
        table.add_row(Text(shorten(s.name, max(NAME_MIN, width // 3))), Text(printable(s.reason)))
    return table


def summary_line(s: SummaryRecord, width: int) -> Text:
    """One sentence per format: the stall ratio over every updated element, and where it is worst."""
    line = Text()
    line.append(s.format, style="bold")
    tensors = f"{s.tensors} tensors"
    if s.no_update_tensors:
        tensors += f" ({s.no_update_tensors} without updates)"
    if s.metrics.updates == 0:
        line.append(f": {tensors}, no updates")
        return line
    line.append(
        f": {tensors}, stall ratio {fmt_number(s.metrics.stall_ratio)}, "
        f"flips {s.metrics.flips:,} of {s.metrics.updates:,} updates"
    )
    if s.worst:
        name = shorten(s.worst[0].name, max(NAME_MIN, width // 2))
        line.append(f"; most stalled: {name} ({fmt_number(s.worst[0].stall_ratio)})")
    return line


def render_table(report: Report, console: Console) -> None:
    width = console.width
    parts: list[Table] = [_metric_table("Stall and flips", report, STALL_COLUMNS, width)]
    parts.append(_ulp_table(report, width))
    parts.append(_metric_table("Grid alignment of BEFORE", report, GRID_COLUMNS, width))
    if report.inputs.grads is not None:
        title, columns = "Gradient and update vs stiffness S", GRAD_COLUMNS
    else:
        title, columns = "Update vs stiffness S", GRAD_COLUMNS[:2]
    parts.append(_metric_table(title, report, columns, width))
    parts.append(_prediction_table(report))
    parts.extend(_kept_tables(report, width))
    parts.extend(_stiffness_bars(report))
    parts.extend(block_scale_bars(report))
    if len(report.summary) > 1:
        parts.extend(_comparison(report, width))
        parts.extend(_what_if_tables(report, width))
    if report.skipped:
        parts.append(_skipped(report, width))
    console.print(Group(*parts))
    for s in report.summary:
        console.print(summary_line(s, width))
        line = verdict(s)
        if line is not None:
            console.print(line, highlight=False)
