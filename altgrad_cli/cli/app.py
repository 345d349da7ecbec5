"""The Typer app: declares options, calls the library, maps errors to one line and an exit code."""

from __future__ import annotations

import io
import json
import os
import shlex
import sys
from contextlib import contextmanager
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from altgrad_cli.engine.allocator import keep_freed_buffers
from altgrad_cli.errors import AltgradError, UsageError
from altgrad_cli.io.output import append_text, guard_outputs, write_atomic
from altgrad_cli.numerics.formats import registry
from altgrad_cli.report.checks import checks_section, evaluate, parse_rule
from altgrad_cli.report.records import skipped_summary, to_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Did the optimizer step move your low-precision weights? Flips, stalls, ULPs and grid fit.",
    pretty_exceptions_enable=False,
)


class FormatsOutput(str, Enum):
    table = "table"
    json = "json"


def _fail(error: AltgradError) -> None:
    """One line on stderr and the error's exit code; the traceback only with --debug/ALTGRAD_DEBUG."""
    if os.environ.get("ALTGRAD_DEBUG") == "1":
        raise error
    label = "usage error: " if isinstance(error, UsageError) else "error: "
    _error_line(label, str(error))
    raise typer.Exit(error.exit_code)


def _warn(line: str) -> None:
    from altgrad_cli.report.render.safe_text import printable

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"altgrad: {printable(line)}", markup=False
    )


def _error_line(label: str, message: str) -> None:
    """One stderr line: the label in red, the message literally (no markup, controls escaped)."""
    from rich.text import Text

    from altgrad_cli.report.render.safe_text import printable

    Console(stderr=True, highlight=False).print(
        Text.assemble((label, "red"), printable(message)), soft_wrap=True
    )


def _version(value: bool) -> None:
    if value:
        from altgrad_cli import __version__

        typer.echo(f"altgrad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """altgrad: flip, stall, ULP and grid diagnostics for low-precision training checkpoints."""


@app.command("formats")
def formats_command(
    output: Annotated[
        FormatsOutput, typer.Option("--output", "-o", help="table or json")
    ] = FormatsOutput.table,
) -> None:
    """List every registered format (bits, bias, specials, range) and the named recipes."""
    from altgrad_cli.numerics.recipes import recipe_rows

    if output is FormatsOutput.json:
        rows = {"formats": [f.to_dict() for f in registry()], "recipes": recipe_rows()}
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from altgrad_cli.report.render.formats_table import render_formats, render_recipes

    console = Console()
    render_formats(registry(), console)
    render_recipes(recipe_rows(), console)


class Output(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    markdown = "markdown"
    html = "html"


def _render(report, output: Output, width: int | None = None) -> str:
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
    from altgrad_cli.report.render.table import console_width, render_table

    console = Console(
        record=True, width=width or console_width(), file=io.StringIO(), color_system=None
    )
    render_table(report, console)
    return console.export_text()


# The CI-rule options, shared by `analyze` and `check`.
FailIfOption = Annotated[
    list[str],
    typer.Option(
        "--fail-if",
        help="Fail when this rule holds: KEY OP VALUE or summary.KEY OP VALUE (repeatable).",
    ),
]
BaselineOption = Annotated[
    Path | None, typer.Option("--baseline", help="Earlier JSON report for `baseline` rules.")
]
LayerOption = Annotated[
    str | None, typer.Option("--layer", help="Apply rules only to tensors matching this regex.")
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit", help="Write rule results as JUnit XML here.")
]


@app.command("analyze")
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
    strip_prefix: Annotated[
        list[str], typer.Option("--strip-prefix", help="Prefix removed from names (repeatable).")
    ] = [],
    include: Annotated[
        str | None, typer.Option(help="Only tensors whose name matches this regex.")
    ] = None,
    exclude: Annotated[
        str | None, typer.Option(help="Leave out tensors whose name matches this regex.")
    ] = None,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table | json | jsonl | csv | markdown | html")
    ] = Output.table,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the report here (atomically) instead of stdout."),
    ] = None,
    sort: Annotated[
        str | None,
        typer.Option(help="Sort tensors by this key, largest first (e.g. stall_ratio)."),
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="Keep only the first N tensor records (after --sort).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Elements per chunk (memory bound).")
    ] = 1 << 18,  # metrics.DEFAULT_CHUNK, without importing torch for --help
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", "-j", help="Cores to use (default: all available). Same numbers for any."
        ),
    ] = None,
    dask: Annotated[
        str | None,
        typer.Option(
            "--dask",
            metavar="ADDRESS",
            help="Run on a Dask cluster (tcp://host:8786), or 'local' for a LocalCluster of "
            "--threads processes. Same numbers. Needs altgrad-cli[dask].",
        ),
    ] = None,
    dask_timeout: Annotated[
        float, typer.Option("--dask-timeout", help="Seconds to wait for the Dask scheduler.")
    ] = 10.0,
    fail_if: FailIfOption = [],
    baseline: BaselineOption = None,
    layer: LayerOption = None,
    junit: JunitOption = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Analyse one optimizer step: flips, stalls, ULPs, grid alignment and stiffness, per tensor and format."""
    from altgrad_cli.pipeline import analyze

    try:
        guard_outputs(_outputs(out, junit, fail_if), [before, after, grads, baseline])
        rules = [parse_rule(text) for text in fail_if]
        if output is Output.html:
            from altgrad_cli.report.render.html import require_plotly

            require_plotly()
        baseline_report = _load_report(baseline) if baseline is not None else None
        with _progress(quiet) as progress:
            report = analyze(
                before,
                after,
                grads=grads,
                formats=format,
                scaling=scaling,
                rescale=rescale,
                grad_eps=grad_eps,
                strip_prefix=strip_prefix,
                include=include,
                exclude=exclude,
                chunk_size=chunk_size,
                progress=progress,
                threads=threads,
                dask=dask,
                dask_timeout=dask_timeout,
            )
        if report.skipped:
            _warn(skipped_summary(report.skipped, len({r.name for r in report.layers})))
        _warn_missing_gradients(report)
        results = []
        if rules:
            results = evaluate(report.to_dict(), rules, baseline=baseline_report, layer=layer)
            report = replace(report, checks=checks_section(rules, results))
        report = _sorted(report, sort, top)
        text = _render(report, output)
        if out is not None:
            write_atomic(out, text)
        else:
            sys.stdout.write(text)
        _finish_checks(results, junit)
    except AltgradError as error:
        if debug:
            raise
        _fail(error)


@app.command("check")
def check_command(
    report_path: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="A report written by `analyze -o json`.")
    ],
    fail_if: FailIfOption = [],
    baseline: BaselineOption = None,
    layer: LayerOption = None,
    format: Annotated[
        list[str], typer.Option("--format", "-f", help="Apply rules only to these formats.")
    ] = [],
    junit: JunitOption = None,
    output: Annotated[
        Output | None, typer.Option("--output", "-o", help="Print the checks as json.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Gate a saved report: exit 1 when a rule fails, 0 when every rule holds."""
    try:
        if not fail_if:
            raise UsageError("give at least one --fail-if RULE")
        guard_outputs(_outputs(None, junit, fail_if), [report_path, baseline])
        rules = [parse_rule(text) for text in fail_if]
        report = _load_report(report_path)
        baseline_report = _load_report(baseline) if baseline is not None else None
        results = evaluate(
            report, rules, baseline=baseline_report, layer=layer, formats=format or None
        )
        if output is Output.json:
            sys.stdout.write(
                json.dumps(to_json(checks_section(rules, results)), indent=2, allow_nan=False)
                + "\n"
            )
        _finish_checks(results, junit)
    except AltgradError as error:
        if debug:
            raise
        _fail(error)


@app.command("render")
def render_command(
    report_path: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="A report written by `-o json`.")
    ],
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table | json | jsonl | csv | markdown | html")
    ] = Output.table,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the rendering here (atomically) instead of stdout."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Render a saved JSON report in any output format (e.g. a CI artifact as HTML)."""
    from altgrad_cli.report.loading import read_report_json, report_from_dict

    try:
        guard_outputs({"--out": out}, [report_path])
        data = read_report_json(report_path)
        if output is Output.html:
            from altgrad_cli.report.render.html import render_html

            text = render_html(data)
        else:
            text = _render(report_from_dict(data, report_path), output)
        if out is not None:
            write_atomic(out, text)
        else:
            sys.stdout.write(text)
    except AltgradError as error:
        if debug:
            raise
        _fail(error)


def _load_report(path: Path) -> dict:
    from altgrad_cli.io.report_file import load_report

    return load_report(path)


def _outputs(out: Path | None, junit: Path | None, fail_if: list[str]) -> dict:
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if fail_if else None
    return {"--out": out, "--junit": junit, "GITHUB_STEP_SUMMARY": summary}


def _warn_missing_gradients(report) -> None:
    """One stderr line when --grads lacked some tensors: their updates came from deltas."""
    from altgrad_cli.pipeline import tensors_without_gradient

    missing, total = tensors_without_gradient(report)
    if missing:
        _warn(
            f"{missing} of {total} tensors have no gradient in --grads; their updates come from "
            'AFTER - BEFORE (update_source "delta" in their records, "mixed" in the summary)',
        )


def _finish_checks(results: list, junit: Path | None) -> None:
    """Report failures on stderr, write JUnit and the GitHub step summary, exit 1 on a failure."""
    if not results and junit is None:
        return
    from altgrad_cli.report.render.junit import render_junit, render_step_summary
    from altgrad_cli.report.render.safe_text import printable

    if junit is not None:
        write_atomic(junit, render_junit(results))
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path and results:
        append_text(
            summary_path, render_step_summary(results, shlex.join(["altgrad", *sys.argv[1:]]))
        )
    failed = [r for r in results if r.status == "fail"]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for r in failed:
        err.print(
            printable(
                f"FAIL {r.rule}: {r.target} [{r.format}] = {r.value!r} (threshold {r.threshold!r})"
            ),
            markup=False,
        )
    if results:
        skipped = sum(r.status == "skip" for r in results)
        tail = f", {skipped} skipped" if skipped else ""
        err.print(f"altgrad: {len(failed)} of {len(results)} checks failed{tail}", markup=False)
    if failed:
        raise typer.Exit(1)


def _sorted(report, key: str | None, top: int | None):
    layers = list(report.layers)
    if key is not None:
        from altgrad_cli.report.records import LayerRecord
        from altgrad_cli.report.render.columns import value
        from altgrad_cli.report.schema import field_paths

        if key not in field_paths(LayerRecord):
            raise UsageError(f"--sort {key!r}: no such metric in the layer records")
        layers.sort(
            key=lambda layer: (value(layer, key) is None, -(value(layer, key) or 0), layer.name)
        )
    if top is not None:
        if top < 0:
            raise UsageError("--top must be >= 0")
        layers = layers[:top]
    return replace(report, layers=tuple(layers))


@contextmanager
def _progress(quiet: bool):
    """A progress bar on stderr (only on a terminal, never with --quiet)."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
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


@app.command("schema")
def schema_command(
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="The schema of `altgrad trajectory -o json`.")
    ] = False,
) -> None:
    """Print the JSON Schema of the report (`--output json`)."""
    if trajectory:
        from altgrad_cli.report.trajectory import trajectory_schema

        sys.stdout.write(json.dumps(trajectory_schema(), indent=2) + "\n")
        return
    from altgrad_cli.report.schema import report_schema

    sys.stdout.write(json.dumps(report_schema(), indent=2) + "\n")


def main() -> None:
    keep_freed_buffers()
    from altgrad_cli.io import sigbus

    sigbus.install()  # a checkpoint truncated mid-read: exit 3 naming it, not death by SIGBUS
    try:
        app()
    except AltgradError as error:  # raised outside a command body (option callbacks)
        _fail(error)
    except (
        Exception
    ) as error:  # a bug, not bad input: still one line, unless asked for the traceback
        if os.environ.get("ALTGRAD_DEBUG") == "1":
            raise
        _error_line(
            "internal error: ",
            f"{type(error).__name__}: {error} (ALTGRAD_DEBUG=1 shows the traceback; please report it)",
        )
        raise SystemExit(3) from None


from altgrad_cli.cli import trajectory_cmd  # noqa: E402,F401  registers `altgrad trajectory`
