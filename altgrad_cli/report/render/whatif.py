"""What-if tables for several recipes in one run, and block-scale histograms as bar charts.

One run can hold e4m3fn under MX floor scales, under rceil, under NVFP4's two levels: these
tables put the recipes side by side and mark the best one per row, so "which recipe keeps my
step" is read off one table instead of five.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.table import Table
from rich.text import Text

from altgrad_cli.report.records import Metrics, Report
from altgrad_cli.report.render.columns import fmt_number

BAR_WIDTH = 30
BEST = "★"


def _blocks(metrics: Metrics, key: str) -> float | None:
    return None if metrics.blocks is None else getattr(metrics.blocks, key)


# (label, value from a record's metrics, lower is better)
WHAT_IF_ROWS: list[tuple[str, Callable[[Metrics], float | None], bool]] = [
    ("stall ratio", lambda m: m.stall_ratio, True),
    ("flip rate", lambda m: m.flip_rate, False),
    ("clipped blocks", lambda m: _blocks(m, "clipped_frac"), True),
    ("dead zone", lambda m: m.underflow_frac, True),  # of all elements: every recipe has it
    ("grid error |w-Q(w)|", lambda m: m.grid_alignment.mean, True),
]


def _marked(values: list[float | None], lower_is_better: bool) -> list[str]:
    """Cells with the best value(s) marked; no mark when every recipe ties or none has one."""
    present = [v for v in values if v is not None]
    best = (min if lower_is_better else max)(present) if present else None
    mark = best is not None and any(v != best for v in present)
    return [
        "–" if v is None else (f"{BEST} {fmt_number(v)}" if mark and v == best else fmt_number(v))
        for v in values
    ]


def what_if_cells(report: Report) -> tuple[list[list[str]], list[str], list[list[str]]]:
    """(row labels, recipe columns, cells) of the what-if table: the five numbers over all
    tensors per recipe, the best per row marked."""
    labels = [[label] for label, _, _ in WHAT_IF_ROWS]
    recipes = [s.format for s in report.summary]
    cells = [
        _marked([get(s.metrics) for s in report.summary], lower) for _, get, lower in WHAT_IF_ROWS
    ]
    return labels, recipes, cells


def block_scale_bars(report: Report) -> list[Table]:
    """One bar chart per recipe with many scales: scale count per floor(log2 s), all tensors."""
    tables = []
    for s in report.summary:
        blocks = s.metrics.blocks
        if blocks is None or not blocks.log2_histogram:
            continue
        hist = blocks.log2_histogram
        peak = max(hist.values())
        table = Table(
            title=f"Block scales, {s.format} (count per floor(log2 s))",
            title_justify="left",
            caption=(
                f"{blocks.count:,} scales, log2 std {fmt_number(blocks.log2_std)}, "
                f"clipped {fmt_number(blocks.clipped_frac)}"
            ),
            caption_justify="left",
            box=None,
            min_width=60,
        )
        table.add_column("log2 s", justify="right")
        table.add_column("count", justify="right")
        table.add_column("")
        for key, count in hist.items():
            bar = "█" * max(1, round(BAR_WIDTH * count / peak)) if count else ""
            table.add_row(key, f"{count:,}", Text(bar, style="magenta"))
        tables.append(table)
    return tables
