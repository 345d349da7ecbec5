"""`altgrad trajectory C0 C1 … Cn`: declares its options and forwards them to `trajectory()`."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from altgrad_cli.cli.analyze import progress_bar
from altgrad_cli.cli.boundary import DebugOption
from altgrad_cli.cli.check import FailIfOption, JunitOption, LayerOption, finish_checks
from altgrad_cli.cli.options import (
    DEFAULT_CHUNK,
    ChunkSizeOption,
    DaskOption,
    DaskTimeoutOption,
    ExcludeOption,
    IncludeOption,
    OutOption,
    QuietOption,
    StripPrefixOption,
    ThreadsOption,
    TopOption,
)
from altgrad_cli.cli.output import Output, emit, outputs, warn
from altgrad_cli.engine.forkserver import LOCAL, start_forkserver
from altgrad_cli.errors import UsageError
from altgrad_cli.io.output import guard_outputs
from altgrad_cli.io.regex import any_of
from altgrad_cli.report.checks import checks_section, evaluate, parse_rule
from altgrad_cli.report.records import skipped_summary


def render_trajectory(report, output: Output, width: int | None = None) -> str:
    from altgrad_cli.report.render import json_out
    from altgrad_cli.report.render.trajectory import (
        render_trajectory_csv,
        render_trajectory_markdown,
        render_trajectory_table,
    )

    if output is Output.json:
        return json_out.render_json(report)
    if output is Output.jsonl:
        return json_out.render_jsonl(report)
    if output is Output.csv:
        return render_trajectory_csv(report)
    if output is Output.markdown:
        return render_trajectory_markdown(report)
    if output is Output.html:
        from altgrad_cli.report.render.html import render_html

        return render_html(report.to_dict())
    from altgrad_cli.report.render.table import console_width

    console = Console(
        record=True, width=width or console_width(), file=io.StringIO(), color_system=None
    )
    render_trajectory_table(report, console)
    return console.export_text()


def sort_layers(report, key: str | None, top: int | None):
    """Layer records by a numeric metric, largest first (name breaks ties), then the first `top`."""
    from altgrad_cli.report.trajectory import METRIC_KEYS

    layers = list(report.layers)
    if key is not None:
        keys = [k for k in METRIC_KEYS if k != "flips_per_step"]
        if key not in keys:
            raise UsageError(f"--sort {key!r}: not a trajectory metric; choose {', '.join(keys)}")
        layers.sort(key=lambda layer: (-getattr(layer.metrics, key), layer.name))
    if top is not None:
        if top < 0:
            raise UsageError("--top must be >= 0")
        layers = layers[:top]
    return replace(report, layers=tuple(layers))


def trajectory_command(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            metavar="C0 C1 … Cn",
            help="Three or more checkpoints of one run in step order (file, sharded folder or index).",
        ),
    ],
    format: Annotated[
        list[str],
        typer.Option(
            "--format", "-f", help="Format or recipe to follow (FORMAT[@SCALING], mxfp4, ...)."
        ),
    ] = ["e4m3fn"],
    scaling: Annotated[
        str | None,
        typer.Option(
            help="For bare formats: tensor | pow2 | channel | block:N[:RULE] | none "
            "(default: none for bf16/fp16, else tensor)"
        ),
    ] = None,
    fixed_scale: Annotated[
        bool,
        typer.Option("--fixed-scale", help="Quantize every checkpoint under C0's scale."),
    ] = False,
    per_step: Annotated[
        bool,
        typer.Option("--per-step", help="Add the `analyze` records of each consecutive pair."),
    ] = False,
    strip_prefix: StripPrefixOption = [],
    include: IncludeOption = [],
    exclude: ExcludeOption = [],
    output: Annotated[
        Output,
        typer.Option(
            "--output",
            "-o",
            case_sensitive=False,
            help="table | json | jsonl | csv | markdown | html",
        ),
    ] = Output.table,
    out: OutOption = None,
    sort: Annotated[
        str | None,
        typer.Option(help="Sort tensors by this key, largest first (e.g. oscillation_rate)."),
    ] = None,
    top: TopOption = None,
    quiet: QuietOption = False,
    chunk_size: ChunkSizeOption = DEFAULT_CHUNK,
    threads: ThreadsOption = None,
    dask: DaskOption = None,
    dask_timeout: DaskTimeoutOption = 10.0,
    fail_if: FailIfOption = [],
    layer: LayerOption = None,
    junit: JunitOption = None,
    debug: DebugOption = False,
) -> None:
    """Follow codes over 3+ checkpoints: frozen weights, oscillation (flip-backs), path efficiency."""
    if dask == LOCAL:  # its worker processes import torch while this one does
        start_forkserver()
    from altgrad_cli.trajectories import trajectory

    if len(checkpoints) < 3:
        raise UsageError(f"give at least 3 checkpoints (C0 C1 C2 …), got {len(checkpoints)}")
    rules = [parse_rule(text) for text in fail_if]
    if any(rule.uses_baseline for rule in rules):
        raise UsageError("baseline rules are for `altgrad check --baseline` on a saved report")
    guard_outputs(outputs(out, junit, fail_if), list(checkpoints))
    if output is Output.html:
        from altgrad_cli.report.render.html import require_plotly

        require_plotly()
    with progress_bar(quiet) as progress:
        report = trajectory(
            checkpoints,
            formats=format,
            scaling=scaling,
            fixed_scale=fixed_scale,
            strip_prefix=strip_prefix,
            include=any_of(include, "--include"),
            exclude=any_of(exclude, "--exclude"),
            per_step=per_step,
            chunk_size=chunk_size,
            progress=progress,
            threads=threads,
            dask=dask,
            dask_timeout=dask_timeout,
        )
    if report.skipped:
        warn(skipped_summary(report.skipped, len({r.name for r in report.layers})))
    results = []
    if rules:
        results = evaluate(report.to_dict(), rules, layer=layer)
        report = replace(report, checks=checks_section(rules, results))
    report = sort_layers(report, sort, top)
    text = render_trajectory(report, output)
    emit(text, out)
    finish_checks(results, junit)
