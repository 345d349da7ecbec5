"""The CI gate: `altgrad check` on a saved report, and the rule options and verdict it shares with
`analyze --fail-if`. Reads JSON only, so it never loads torch."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from altgrad_cli.cli.boundary import DebugOption
from altgrad_cli.cli.output import Output, outputs
from altgrad_cli.errors import UsageError
from altgrad_cli.io.output import append_text, guard_outputs, write_atomic
from altgrad_cli.report.checks import checks_section, evaluate, parse_rule
from altgrad_cli.report.records import CheckResult, to_json

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
FailOnMissingOption = Annotated[
    bool,
    typer.Option(
        "--fail-on-missing",
        help="A tensor or format the --baseline lacks fails its check (default: skipped, "
        "counted in the verdict).",
    ),
]
LayerOption = Annotated[
    str | None, typer.Option("--layer", help="Apply rules only to tensors matching this regex.")
]
JunitOption = Annotated[
    Path | None, typer.Option("--junit", help="Write rule results as JUnit XML here.")
]


def check_command(
    report_path: Annotated[
        Path, typer.Argument(metavar="REPORT.json", help="A report written by `analyze -o json`.")
    ],
    fail_if: FailIfOption = [],
    baseline: BaselineOption = None,
    fail_on_missing: FailOnMissingOption = False,
    layer: LayerOption = None,
    format: Annotated[
        list[str], typer.Option("--format", "-f", help="Apply rules only to these formats.")
    ] = [],
    junit: JunitOption = None,
    output: Annotated[
        Output | None,
        typer.Option("--output", "-o", case_sensitive=False, help="Print the checks as json."),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Gate a saved report: exit 1 when a rule fails, 0 when every rule holds."""
    if not fail_if:
        raise UsageError("give at least one --fail-if RULE")
    if output not in (None, Output.json):  # never print nothing: say what check can print
        raise UsageError(
            f"check prints its checks as -o json (or a verdict on stderr without -o); "
            f"to render the report as {output.value}, use `altgrad render REPORT -o {output.value}`"
        )
    guard_outputs(outputs(None, junit, fail_if), [report_path, baseline])
    rules = [parse_rule(text) for text in fail_if]
    report = load_report(report_path)
    baseline_report = load_report(baseline) if baseline is not None else None
    results = evaluate(
        report,
        rules,
        baseline=baseline_report,
        layer=layer,
        formats=format or None,
        fail_on_missing=fail_on_missing,
    )
    if output is Output.json:
        section = to_json(checks_section(rules, results))
        sys.stdout.write(json.dumps(section, indent=2, allow_nan=False) + "\n")
    finish_checks(results, junit)


def load_report(path: Path) -> dict:
    """A saved JSON report (strict: size, depth, shape), or an InputError saying why not."""
    from altgrad_cli.report.loading import load_report as load

    return load(path)


def finish_checks(results: list[CheckResult], junit: Path | None) -> None:
    """Report failures on stderr, write JUnit and the GitHub step summary, exit 1 on a failure."""
    if not results and junit is None:
        return
    from altgrad_cli.report.render.junit import render_junit, render_step_summary
    from altgrad_cli.report.render.safe_text import printable

    if junit is not None:
        write_atomic(junit, render_junit(results))
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path and results:
        invocation = shlex.join(["altgrad", *sys.argv[1:]])
        append_text(summary_path, render_step_summary(results, invocation))
    failed = [r for r in results if r.status == "fail"]
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for r in failed:
        line = f"FAIL {r.rule}: {r.target} [{r.format}] = {r.value!r} (threshold {r.threshold!r})"
        if r.message:
            line += f": {r.message}"
        err.print(printable(line), markup=False)
    if results:
        skipped = sum(r.status == "skip" for r in results)
        tail = f", {skipped} skipped" if skipped else ""
        err.print(f"altgrad: {len(failed)} of {len(results)} checks failed{tail}", markup=False)
    if failed:
        raise typer.Exit(1)
