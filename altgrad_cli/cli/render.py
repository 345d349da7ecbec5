"""`altgrad render`: a saved JSON report in any output format (e.g. a CI artifact as HTML).

Reads JSON only, so it never loads torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from altgrad_cli.cli.boundary import DebugOption
from altgrad_cli.cli.output import Output, emit, render


def render_command(
    report_path: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="A report written by `-o json`.")
    ],
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            case_sensitive=False,
            help="table | json | jsonl | csv | markdown | html",
        ),
    ] = Output.table,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the rendering here (atomically) instead of stdout."),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Render a saved JSON report in any output format (e.g. a CI artifact as HTML)."""
    from altgrad_cli.io.output import guard_outputs
    from altgrad_cli.report.loading import read_report_json, report_from_dict
    from altgrad_cli.report.trajectory import TrajectoryReport

    guard_outputs({"--out": out}, [report_path])
    data = read_report_json(report_path)
    if output is Output.html:
        from altgrad_cli.report.render.html import render_html

        text = render_html(data)
    else:
        report = report_from_dict(data, report_path)
        if isinstance(report, TrajectoryReport):
            from altgrad_cli.cli.trajectory_cmd import render_trajectory

            text = render_trajectory(report, output)
        else:
            text = render(report, output)
    emit(text, out)
