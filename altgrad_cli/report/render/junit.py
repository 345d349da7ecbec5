"""JUnit XML for CI systems: one test case per rule × tensor × format; and a Markdown step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from altgrad_cli.report.records import CheckResult
from altgrad_cli.report.render.columns import fmt_number
from altgrad_cli.report.render.safe_text import markdown_cell, markdown_code, printable


def render_junit(results: Sequence[CheckResult]) -> str:
    """JUnit XML that validates against Jenkins' junit-10.xsd (the strictest common reader):
    `errors` and `time` on the suites, and no `<properties>` inside a `<testcase>` (the value and
    threshold go to the case's `<system-out>` instead)."""
    failures = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    counts = {"tests": str(len(results)), "failures": str(failures), "errors": "0", "time": "0"}
    suites = ET.Element("testsuites", name="altgrad", **counts)
    suite = ET.SubElement(
        suites, "testsuite", name="altgrad checks", **counts, skipped=str(skipped)
    )
    for r in results:
        # printable(): XML 1.0 cannot hold most control characters, even escaped
        case = ET.SubElement(
            suite,
            "testcase",
            classname=printable(f"altgrad.{r.format}"),
            name=printable(f"{r.rule} :: {r.target}"),
            time="0",
        )
        if r.status == "fail":
            message = printable(
                f"{r.target} [{r.format}]: value {r.value!r}, threshold {r.threshold!r} ({r.rule})"
                + (f": {r.message}" if r.message else "")
            )
            failure = ET.SubElement(case, "failure", message=message, type="threshold")
            failure.text = message
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=printable(r.message))
        out = ET.SubElement(case, "system-out")
        out.text = printable(
            f"value={_text(r.value)} threshold={_text(r.threshold)} format={r.format}"
        )
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def _text(value: float | None) -> str:
    return "" if value is None else repr(value)


MAX_SUMMARY_ROWS = 20


def render_step_summary(results: Sequence[CheckResult], invocation: str) -> str:
    """One Markdown block for GITHUB_STEP_SUMMARY per run: what ran on what, the passes in one
    line, at most MAX_SUMMARY_ROWS failing rows, and the skipped checks counted."""
    failed = [r for r in results if r.status == "fail"]
    skipped = sum(r.status == "skip" for r in results)
    passed = len(results) - len(failed) - skipped
    head = "❌" if failed else "✅"
    title = f"### {head} altgrad: {len(failed)} of {len(results)} checks failed"
    if skipped:
        title += f", {skipped} skipped"
    lines = [title, "", markdown_code(invocation), "", f"{passed} checks passed."]
    if failed:
        lines += ["", "| rule | tensor | format | value | threshold |", "|---|---|---|---|---|"]
        lines += [
            f"| {markdown_code(r.rule)} | {markdown_code(r.target)} | {markdown_cell(r.format)} "
            f"| {fmt_number(r.value)} | {fmt_number(r.threshold)} |"
            for r in failed[:MAX_SUMMARY_ROWS]
        ]
        if len(failed) > MAX_SUMMARY_ROWS:
            lines += ["", f"… and {len(failed) - MAX_SUMMARY_ROWS} more failing checks."]
    return "\n".join(lines) + "\n\n"
