"""What-if tables for several recipes in one run, and block-scale histograms as bar charts.

One run can hold e4m3fn under MX floor scales, under rceil, under NVFP4's two levels: these
tables put the recipes side by side and mark the best one per row, so "which recipe keeps my
step" is read off one table instead of five.

A *tensor group* is the tensors whose names differ only in their numeric parts
(`model.layers.0.mlp.up_proj.weight` and `model.layers.31.mlp.up_proj.weight` are
`model.layers.*.mlp.up_proj.weight`): a 32-layer model gives one block per kind of tensor, not 32.
A group's numbers are those of its tensors pooled (sums of the counts behind each ratio), as the
summary pools all tensors; they are for reading, the JSON keeps the per-tensor records.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from altgrad_cli.report.records import LayerRecord, Metrics, Report
from altgrad_cli.report.render.columns import fmt_column, fmt_number

BAR_WIDTH = 30
BEST = "★"


def _blocks(metrics: Metrics, key: str) -> float | None:
    return None if metrics.blocks is None else getattr(metrics.blocks, key)


def _stall(metrics: Metrics) -> float | None:
    return None if metrics.updates == 0 else metrics.stall_ratio  # not defined without updates


# (label, value from a record's metrics, lower is better). A higher flip rate is the step taking
# effect on the grid, the other side of a lower stall ratio. The dead zone is `underflow_frac`
# (non-zero BEFORE elements rounding to 0, over all elements) rather than `blocks.deadzone_frac`
# (the same count over non-zero elements): every recipe has the first, only block-scaled ones the
# second, and for one tensor both rank the recipes alike.
WHAT_IF_ROWS: list[tuple[str, Callable[[Metrics], float | None], bool]] = [
    ("stall ratio", _stall, True),
    ("flip rate", lambda m: m.flip_rate, False),
    ("clipped blocks", lambda m: _blocks(m, "clipped_frac"), True),
    ("dead zone", lambda m: m.underflow_frac, True),
    ("grid error |w-Q(w)|", lambda m: m.grid_alignment.mean, True),
]

_NUMERIC_PART = re.compile(r"(?<![^.])\d+(?![^.])")


def tensor_group(name: str) -> str:
    """The name with every all-digit dot-separated part replaced by `*`."""
    return _NUMERIC_PART.sub("*", name)


@dataclass(frozen=True)
class _Pooled:
    """The five what-if numbers of several records of one recipe, from their pooled counts."""

    updates: int
    flips_on_updates: int
    flips: int
    numel: int
    finite: int
    underflows: int
    blocks: int | None
    clipped: int
    grid_error_sum: float

    @classmethod
    def of(cls, records: Sequence[LayerRecord]) -> _Pooled:
        ms = [r.metrics for r in records]
        with_blocks = [m.blocks for m in ms if m.blocks is not None]
        return cls(
            updates=sum(m.updates for m in ms),
            flips_on_updates=sum(m.flips_on_updates for m in ms),
            flips=sum(m.flips for m in ms),
            numel=sum(m.numel for m in ms),
            finite=sum(m.numel - m.nonfinite for m in ms),
            # the counts behind the fractions, recovered exactly (count / n · n rounds back)
            underflows=sum(round(m.underflow_frac * m.numel) for m in ms),
            blocks=sum(b.count for b in with_blocks) if with_blocks else None,
            clipped=sum(round(b.clipped_frac * b.count) for b in with_blocks),
            grid_error_sum=sum(m.grid_alignment.mean * (m.numel - m.nonfinite) for m in ms),
        )

    def values(self) -> list[float | None]:
        """In WHAT_IF_ROWS order; None where a ratio has no denominator."""
        return [
            1 - self.flips_on_updates / self.updates if self.updates else None,
            self.flips / self.numel if self.numel else None,
            self.clipped / self.blocks if self.blocks else None,
            self.underflows / self.numel if self.numel else None,
            self.grid_error_sum / self.finite if self.finite else None,
        ]


def _marked(values: list[float | None], lower_is_better: bool) -> list[str]:
    """Cells with the best value(s) marked; no mark when every recipe ties or none has one."""
    present = [v for v in values if v is not None]
    best = (min if lower_is_better else max)(present) if present else None
    mark = best is not None and any(v != best for v in present)
    texts = fmt_column(values)  # one style across the row: the recipes compare at a glance
    return [
        f"{BEST} {text}" if mark and v is not None and v == best else text
        for v, text in zip(values, texts, strict=True)
    ]


@dataclass(frozen=True)
class WhatIfGroup:
    """One block of the per-group what-if table: the group, its tensor count, and per row of
    WHAT_IF_ROWS the pooled value under each recipe (None where it is not defined)."""

    name: str
    tensors: int
    values: list[list[float | None]]

    def cells(self) -> list[list[str]]:
        """The values as table cells, the best per row marked."""
        return [
            _marked(row, lower)
            for row, (_, _, lower) in zip(self.values, WHAT_IF_ROWS, strict=True)
        ]


def what_if_groups(report: Report) -> list[WhatIfGroup]:
    """The what-if numbers per tensor group, groups in the order their first tensor appears."""
    recipes = [s.format for s in report.summary]
    groups: dict[str, dict[str, list[LayerRecord]]] = {}
    names: dict[str, set[str]] = {}
    for layer in report.layers:
        key = tensor_group(layer.name)
        groups.setdefault(key, {}).setdefault(layer.format, []).append(layer)
        names.setdefault(key, set()).add(layer.name)
    blocks = []
    for key, by_recipe in groups.items():
        columns = [
            _Pooled.of(by_recipe[r]).values() if r in by_recipe else [None] * len(WHAT_IF_ROWS)
            for r in recipes
        ]
        rows = [[column[i] for column in columns] for i in range(len(WHAT_IF_ROWS))]
        blocks.append(WhatIfGroup(key, len(names[key]), rows))
    return blocks


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
