"""Renderers of a trajectory report: rich table (80 columns), markdown and CSV; none computes.

JSON and JSON Lines come from json_out, which only needs `to_dict()` on the report and its layers.
"""

from __future__ import annotations

import csv
import io

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from altgrad_cli.report.render.columns import fmt_number
from altgrad_cli.report.render.table import shorten
from altgrad_cli.report.trajectory import METRIC_KEYS, TrajectoryReport

SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 12
OTHER_COLUMNS = 58  # what the layer table needs besides the tensor name (6-character formats)

# (header, key) of the per-layer view
COLUMNS = [
    ("frozen", "frozen_frac"),
    ("osc rate", "oscillation_rate"),
    ("path eff", "path_efficiency"),
]


def sparkline(values: tuple[int, ...] | list[int], width: int = SPARK_WIDTH) -> str:
    """Flips per step as block characters scaled to the largest; more steps than `width` are
    summed into `width` equal bins. A step with no flip is `·`, so it never reads as a small one."""
    values = list(values)
    if len(values) > width:
        edges = [round(i * len(values) / width) for i in range(width + 1)]
        values = [sum(values[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    peak = max(values, default=0)
    if peak == 0:
        return "·" * len(values)
    return "".join("·" if v == 0 else SPARK[max(0, min(7, round(7 * v / peak)))] for v in values)


def _name_width(console: Console) -> int:
    """Tensor names are cut from the left to what the console leaves them (never below 16)."""
    return max(16, console.width - OTHER_COLUMNS)


def _layer_table(report: TrajectoryReport, names: int) -> Table:
    table = Table(
        title=f"Trajectory over {report.steps} steps ({len(report.checkpoints)} checkpoints)",
        title_justify="left",
    )
    table.add_column("tensor", no_wrap=True)
    table.add_column("format", overflow="fold")
    for header, _ in COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("flips/step", no_wrap=True)
    last = len(report.layers) - 1
    for i, layer in enumerate(report.layers):
        m = layer.metrics
        table.add_row(
            shorten(layer.name, names),
            layer.format,
            *[fmt_number(getattr(m, key)) for _, key in COLUMNS],
            Text(sparkline(m.flips_per_step), style="cyan"),
            end_section=i == last,
        )
    for s in report.summary:
        m = s.metrics
        table.add_row(
            Text(f"all {s.tensors}", style="bold"),
            Text(s.format, style="bold"),
            *[Text(fmt_number(getattr(m, key)), style="bold") for _, key in COLUMNS],
            Text(sparkline(m.flips_per_step), style="bold cyan"),
        )
    return table


def _worst_table(report: TrajectoryReport, names: int) -> Table:
    table = Table(title="Most oscillating tensors", title_justify="left")
    table.add_column("format", overflow="fold")
    table.add_column("tensor", no_wrap=True)
    table.add_column("osc rate", justify="right", no_wrap=True)
    table.add_column("flip-backs", justify="right", no_wrap=True)
    table.add_column("path eff", justify="right", no_wrap=True)
    for s in report.summary:
        for w in s.worst:
            if w.flip_backs == 0:
                continue
            table.add_row(
                s.format,
                shorten(w.name, names),
                fmt_number(w.oscillation_rate),
                fmt_number(w.flip_backs),
                fmt_number(w.path_efficiency),
            )
    return table


def _per_step_table(report: TrajectoryReport) -> Table:
    """`--per-step`: each consecutive pair's `analyze` summary, one row per step and format."""
    table = Table(title="Per step (analyze of C(t-1) -> C(t), all tensors)", title_justify="left")
    table.add_column("step", justify="right")
    table.add_column("format", overflow="fold")
    for header in ("updates", "flips", "flip rate", "stall ratio"):
        table.add_column(header, justify="right", no_wrap=True)
    for step in report.per_step or ():
        for s in step.summary:
            m = s.metrics
            table.add_row(
                str(step.step),
                s.format,
                fmt_number(m.updates),
                fmt_number(m.flips),
                fmt_number(m.flip_rate),
                fmt_number(m.stall_ratio),
            )
    return table


def render_trajectory_table(report: TrajectoryReport, console: Console) -> None:
    names = _name_width(console)
    parts: list = [_layer_table(report, names)]
    if report.per_step:
        parts.append(_per_step_table(report))
    worst = _worst_table(report, names)
    if worst.row_count:
        parts.append(worst)
    if report.skipped:
        skipped = Table(title="Skipped", title_justify="left")
        skipped.add_column("tensor", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for s in report.skipped:
            skipped.add_row(s.name, s.reason)
        parts.append(skipped)
    console.print(Group(*parts))
    for s in report.summary:
        m = s.metrics
        console.print(
            f"[bold]{s.format}[/bold]: {s.tensors} tensors, {m.steps} steps; frozen "
            f"{fmt_number(m.frozen_frac)}, oscillation rate {fmt_number(m.oscillation_rate)} "
            f"({m.flip_backs:,} flip-backs of {m.flips:,} flips), path efficiency "
            f"{fmt_number(m.path_efficiency)}, longest frozen run {fmt_number(m.frozen_run_mean)}"
            f" steps on average"
        )


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


MD_COLUMNS = [
    ("frozen", "frozen_frac"),
    ("ever flipped", "ever_flipped_frac"),
    ("net flipped", "net_flipped_frac"),
    ("flip-backs", "flip_backs"),
    ("osc rate", "oscillation_rate"),
    ("path eff", "path_efficiency"),
    ("frozen run", "frozen_run_mean"),
]


def render_trajectory_markdown(report: TrajectoryReport) -> str:
    lines = [f"# altgrad trajectory ({report.steps} steps)", "", "## Summary", ""]
    lines += _md_table(
        ["format", "tensors", *[h for h, _ in MD_COLUMNS], "flips/step"],
        [
            [
                s.format,
                str(s.tensors),
                *[fmt_number(getattr(s.metrics, k)) for _, k in MD_COLUMNS],
                sparkline(s.metrics.flips_per_step),
            ]
            for s in report.summary
        ],
    )
    lines += ["", "## Tensors", ""]
    lines += _md_table(
        ["tensor", "format", *[h for h, _ in MD_COLUMNS], "flips/step"],
        [
            [
                f"`{layer.name}`",
                layer.format,
                *[fmt_number(getattr(layer.metrics, k)) for _, k in MD_COLUMNS],
                sparkline(layer.metrics.flips_per_step),
            ]
            for layer in report.layers
        ],
    )
    if report.skipped:
        lines += ["", "## Skipped", ""]
        lines += _md_table(
            ["tensor", "reason"], [[f"`{s.name}`", s.reason] for s in report.skipped]
        )
    return "\n".join(lines) + "\n"


def render_trajectory_csv(report: TrajectoryReport) -> str:
    """One row per (tensor, format); flips_per_step as space-separated counts in one cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "format", "dtype", "shape", *METRIC_KEYS])
    for layer in report.layers:
        row = []
        for key in METRIC_KEYS:
            v = getattr(layer.metrics, key)
            row.append(" ".join(map(str, v)) if isinstance(v, tuple) else repr(v))
        writer.writerow(
            [layer.name, layer.format, layer.dtype, "x".join(map(str, layer.shape)), *row]
        )
    return out.getvalue()
