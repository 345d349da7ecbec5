"""`altgrad analyze`: declares the options, gathers them into AnalysisOptions, renders the report.

The pipeline (and with it torch) is imported only when the command runs, so `--help` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from altgrad_cli.cli.boundary import DebugOption
from altgrad_cli.cli.check import (
    BaselineOption,
    FailIfOption,
    FailOnMissingOption,
    JunitOption,
    LayerOption,
    finish_checks,
    load_report,
)
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
from altgrad_cli.cli.output import Output, emit, outputs, render, select_layers, warn
from altgrad_cli.engine.forkserver import LOCAL, start_forkserver
from altgrad_cli.io.output import guard_outputs
from altgrad_cli.io.regex import any_of
from altgrad_cli.report.checks import checks_section, evaluate, parse_rule
from altgrad_cli.report.records import skipped_summary


def analyze_command(
    before: Annotated[
        Path,
        typer.Argument(help="BEFORE checkpoint: .safetensors file, sharded folder or index file."),
    ],
    after: Annotated[Path, typer.Argument(help="AFTER checkpoint, same layouts.")],
    grads: Annotated[
        Path | None, typer.Option("--grads", "-g", help="Gradients, same layouts and names.")
    ] = None,
    format: Annotated[
        list[str],
        typer.Option(
            "--format",
            "-f",
            help="Format or recipe: FORMAT[@SCALING] or a named recipe (mxfp8, nvfp4, "
            "fp8_blockwise, ...; see `altgrad formats`). Repeatable.",
        ),
    ] = ["e4m3fn"],
    scaling: Annotated[
        str | None,
        typer.Option(
            help="For -f without @: tensor | pow2 | channel | nvfp4 | none | "
            "block:N[:RULE] | block:RxC[:RULE], RULE floor|rceil|ceil|even|fp32 "
            "(default: none for bf16/fp16, else tensor)"
        ),
    ] = None,
    rescale: Annotated[
        bool, typer.Option("--rescale", help="Scale AFTER by its own amax (current scaling).")
    ] = False,
    grad_eps: Annotated[
        float, typer.Option("--grad-eps", help="|grad| above this counts as an update.")
    ] = 1e-10,
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
        typer.Option(help="Sort tensors by this key, largest first (e.g. stall_ratio)."),
    ] = None,
    top: TopOption = None,
    quiet: QuietOption = False,
    chunk_size: ChunkSizeOption = DEFAULT_CHUNK,
    threads: ThreadsOption = None,
    dask: DaskOption = None,
    dask_timeout: DaskTimeoutOption = 10.0,
    fail_if: FailIfOption = [],
    baseline: BaselineOption = None,
    fail_on_missing: FailOnMissingOption = False,
    layer: LayerOption = None,
    junit: JunitOption = None,
    debug: DebugOption = False,
) -> None:
    """Analyse one optimizer step: flips, stalls, ULPs, grid alignment and stiffness, per tensor and format."""
    if dask == LOCAL:  # its worker processes import torch while this one does
        start_forkserver()
    from altgrad_cli.pipeline import AnalysisOptions, run_analysis, tensors_without_gradient

    guard_outputs(outputs(out, junit, fail_if), [before, after, grads, baseline])
    rules = [parse_rule(text) for text in fail_if]
    if output is Output.html:
        from altgrad_cli.report.render.html import require_plotly

        require_plotly()
    baseline_report = load_report(baseline) if baseline is not None else None
    options = AnalysisOptions(
        before,
        after,
        grads=grads,
        formats=tuple(format),
        scaling=scaling,
        rescale=rescale,
        grad_eps=grad_eps,
        strip_prefix=tuple(strip_prefix),
        include=any_of(include, "--include"),
        exclude=any_of(exclude, "--exclude"),
        chunk_size=chunk_size,
        threads=threads,
        dask=dask,
        dask_timeout=dask_timeout,
    )
    with progress_bar(quiet) as progress:
        report = run_analysis(options, progress=progress)
    if report.skipped:
        warn(skipped_summary(report.skipped, len({r.name for r in report.layers})))
    missing, total = tensors_without_gradient(report)
    if missing:
        warn(
            f"{missing} of {total} tensors have no gradient in --grads; their updates come from "
            'AFTER - BEFORE (update_source "delta" in their records, "mixed" in the summary)'
        )
    results = []
    if rules:
        results = evaluate(
            report.to_dict(),
            rules,
            baseline=baseline_report,
            layer=layer,
            fail_on_missing=fail_on_missing,
        )
        report = replace(report, checks=checks_section(rules, results))
    emit(render(select_layers(report, sort, top), output), out)
    finish_checks(results, junit)


@contextmanager
def progress_bar(quiet: bool) -> Iterator[Callable[[int, int, str], None] | None]:
    """A progress callback drawing a bar on stderr (only on a terminal, never with --quiet)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from altgrad_cli.report.render.safe_text import printable

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("analysing", total=None)

        def update(done: int, total: int, name: str) -> None:
            label = escape(printable(name[:40]))  # a name is text, never markup
            bar.update(task, completed=done, total=total, description=label)

        yield update
