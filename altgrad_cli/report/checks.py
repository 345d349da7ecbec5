"""CI rules: `[summary.]KEY OP VALUE`, parsed by a small grammar (never eval) and evaluated on report dicts.

VALUE is a number, or `baseline` optionally followed by `+ N`, `- N` or `* N`, where `baseline`
is the same KEY for the same tensor and format in a baseline report. Pure: no printing, no I/O.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from altgrad_cli.errors import InputError, UsageError
from altgrad_cli.io.regex import compile_name_filter
from altgrad_cli.report.records import CheckResult, ChecksSection, lookup

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
# Unambiguous (one way to split any digit run), so a failed match backtracks linearly, not
# quadratically as `\d+\.?\d*` did on a long run of digits.
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
MAX_RULE = 1000
"""Characters in one rule; real rules are tens."""
_KEY = re.compile(r"\s*(summary\.)?([A-Za-z_][\w\-+]*(?:\.[\w\-+]+)*)\s*")
_OP = re.compile(r"(<=|>=|==|!=|<|>)\s*")
_VALUE = re.compile(rf"(?:({_NUMBER})|baseline(?:\s*([+\-*])\s*({_NUMBER}))?)\s*$")


@dataclass(frozen=True)
class Rule:
    text: str
    summary: bool
    key: str
    op: str
    number: float | None  # None: relative to the baseline
    baseline_op: str | None = None
    baseline_arg: float = 0.0

    @property
    def uses_baseline(self) -> bool:
        return self.number is None

    def threshold(self, baseline: float) -> float:
        if self.baseline_op == "+":
            return baseline + self.baseline_arg
        if self.baseline_op == "-":
            return baseline - self.baseline_arg
        if self.baseline_op == "*":
            return baseline * self.baseline_arg
        return baseline


def _syntax_error(text: str, position: int, expected: str) -> UsageError:
    """One line: the rule with a ^ marking the column where the problem starts."""
    marked = f"{text[:position]}^{text[position:]}"
    return UsageError(
        f"bad rule {text!r}: expected {expected} at column {position + 1} (at the ^: {marked!r})"
    )


def _finite(text: str, rule: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UsageError(f"bad rule {rule!r}: {text[:30]!r} is beyond the range of a float")
    return value


def parse_rule(text: str) -> Rule:
    """Parse one rule; a syntax error says where and what was expected."""
    if len(text) > MAX_RULE:
        raise UsageError(f"bad rule {text[:40]!r}...: longer than {MAX_RULE} characters")
    key_match = _KEY.match(text)
    if key_match is None or not key_match.group(2):
        raise _syntax_error(text, 0, "a metric key such as stall_ratio or ulp.median")
    pos = key_match.end()
    op_match = _OP.match(text, pos)
    if op_match is None:
        raise _syntax_error(text, pos, "an operator: < <= > >= == !=")
    pos = op_match.end()
    value_match = _VALUE.match(text, pos)
    if value_match is None:
        raise _syntax_error(text, pos, "a number, or baseline [+|-|* NUMBER]")
    number, bop, barg = value_match.groups()
    return Rule(
        text=text.strip(),
        summary=bool(key_match.group(1)),
        key=key_match.group(2),
        op=op_match.group(1),
        number=_finite(number, text) if number is not None else None,
        baseline_op=bop,
        baseline_arg=_finite(barg, text) if barg is not None else 0.0,
    )


def _leaf_keys(record: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            keys += _leaf_keys(value, f"{path}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append(path)
    return keys


def _numeric(record: dict[str, Any], rule: Rule) -> float:
    try:
        value = lookup(record, rule.key)
    except KeyError:
        head = rule.key.split(".")[0]
        if head in record and record[head] is None:
            raise UsageError(
                f"rule {rule.text!r}: the report has no {head} (it needs --grads)"
            ) from None
        valid = ", ".join(sorted(_leaf_keys(record)))
        raise UsageError(
            f"rule {rule.text!r}: unknown key {rule.key!r}; valid keys: {valid}"
        ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"rule {rule.text!r}: {rule.key!r} is not a number")
    return float(value)


def _baseline_index(baseline: dict[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    if baseline is None:
        return {}
    index = {(layer["name"], layer["format"]): layer for layer in baseline.get("layers", [])}
    index.update({("summary", s["format"]): s for s in baseline.get("summary", [])})
    return index


MISSING = "not in the baseline"


def evaluate(
    report: dict[str, Any],
    rules: Sequence[Rule],
    *,
    baseline: dict[str, Any] | None = None,
    layer: str | None = None,
    formats: Sequence[str] | None = None,
    fail_on_missing: bool = False,
) -> list[CheckResult]:
    """Every rule on every selected tensor (or summary) and format, in a stable order. A target
    the baseline lacks is skipped (and counted), or fails with `fail_on_missing`: a gate
    against a baseline that has since lost most of its tensors should not pass by default."""
    layer_re = compile_name_filter(layer, "--layer")
    if any(rule.uses_baseline for rule in rules) and baseline is None:
        raise UsageError("a rule compares with baseline but no --baseline report was given")
    base = _baseline_index(baseline)
    results: list[CheckResult] = []
    for rule in rules:
        if rule.summary:
            targets = [("summary", s["format"], s) for s in report.get("summary", [])]
        else:
            targets = [(r["name"], r["format"], r) for r in report.get("layers", [])]
            if layer_re is not None:
                targets = [t for t in targets if layer_re.search(t[0])]
        if formats:
            targets = [t for t in targets if t[1] in formats]
        if not targets:
            raise UsageError(_selects_nothing(report, rule, layer, formats))
        if rule.uses_baseline and not any((t[0], t[1]) in base for t in targets):
            raise InputError(
                "--baseline",
                f"shares no tensor and format with the report for rule {rule.text!r}",
            )
        for target, fmt, record in targets:
            if rule.key.split(".")[0] == "blocks" and record.get("blocks", {}) is None:
                message = "one scale: no blocks record"  # tensor or unscaled recipe
                results.append(CheckResult(rule.text, target, fmt, None, None, "skip", message))
                continue
            value = _numeric(record, rule)
            if rule.uses_baseline:
                old = base.get((target, fmt))
                if old is None:
                    status = "fail" if fail_on_missing else "skip"
                    results.append(
                        CheckResult(rule.text, target, fmt, value, None, status, MISSING)
                    )
                    continue
                threshold = rule.threshold(_numeric(old, rule))
            else:
                threshold = float(rule.number)
            if not (math.isfinite(value) and math.isfinite(threshold)):
                # NaN compares false with everything: fail closed instead of passing
                # (null in strict JSON: the message says why)
                finite = [v if math.isfinite(v) else None for v in (value, threshold)]
                results.append(
                    CheckResult(rule.text, target, fmt, *finite, "fail", "not a finite number")
                )
                continue
            triggered = OPERATORS[rule.op](
                value, threshold
            )  # --fail-if: the rule describes a failure
            status = "fail" if triggered else "pass"
            results.append(CheckResult(rule.text, target, fmt, value, threshold, status))
    return results


def _selects_nothing(
    report: dict[str, Any], rule: Rule, layer: str | None, formats: Sequence[str] | None
) -> str:
    """Why a rule checked nothing, and what it could have matched: a gate that checks nothing
    must not pass."""
    records = report.get("summary" if rule.summary else "layers", [])
    names = sorted({r["name"] for r in report.get("layers", [])})
    known = list(dict.fromkeys(r["format"] for r in records))
    text = f"rule {rule.text!r} selects no record"
    if not records:
        return text + ": the report has none"
    if formats and not set(formats) & set(known):
        return text + f": no format {', '.join(formats)} in the report (it has {', '.join(known)})"
    if layer is not None:
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f" (tensors: {_few(names)})"
        return text + f": --layer {layer!r} matches no tensor{hint}"
    return text


def _few(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def checks_section(rules: Sequence[Rule], results: Sequence[CheckResult]) -> ChecksSection:
    """The `checks` section of the report."""
    failed = [r for r in results if r.status == "fail"]
    return ChecksSection(
        rules=tuple(rule.text for rule in rules),
        passed=not failed,
        failures=len(failed),
        results=tuple(results),
    )
