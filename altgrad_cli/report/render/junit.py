"""JUnit XML for CI systems: one test case per rule × tensor × format; and a Markdown step summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from altgrad_cli.report.records import CheckResult
from altgrad_cli.report.render.columns import fmt_number


def render_junit(results: Sequence[CheckResult]) -> str:
    failures = sum(r.status == "fail" for r in results)
    skipped = sum(r.status == "skip" for r in results)
    suites = ET.Element(
        "testsuites", name="altgrad", tests=str(len(results)), failures=str(failures)
    )
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="altgrad checks",
        tests=str(len(results)),
        failures=str(failures),
        skipped=str(skipped),
    )
    for r in results:
        case = ET.SubElement(
            suite, "testcase", classname=f"altgrad.{r.format}", name=f"{r.rule} :: {r.target}"
        )
        if r.status == "fail":
            message = (
                f"{r.target} [{r.format}]: value {r.value!r}, threshold {r.threshold!r} ({r.rule})"
            )
            failure = ET.SubElement(case, "failure", message=message, type="threshold")
            failure.text = message
        elif r.status == "skip":
            ET.SubElement(case, "skipped", message=r.message)
        ET.SubElement(case, "properties")
        props = case.find("properties")
        for name, value in (("value", r.value), ("threshold", r.threshold), ("format", r.format)):
            ET.SubElement(
                props,
                "property",
                name=name,
                value=""
                if value is None
                else repr(value)
                if isinstance(value, float)
                else str(value),
            )
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )


def render_step_summary(results: Sequence[CheckResult]) -> str:
    failed = [r for r in results if r.status == "fail"]
    head = "❌" if failed else "✅"
    lines = [f"### {head} altgrad: {len(failed)} of {len(results)} checks failed", ""]
    if failed:
        lines += ["| rule | tensor | format | value | threshold |", "|---|---|---|---|---|"]
        lines += [
            f"| `{r.rule}` | `{r.target}` | {r.format} | {fmt_number(r.value)} | {fmt_number(r.threshold)} |"
            for r in failed
        ]
    return "\n".join(lines) + "\n\n"
