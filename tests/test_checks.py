"""CI rules: grammar, evaluation, exit codes, baselines, JUnit and the GitHub step summary."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altgrad_cli import UsageError, analyze
from altgrad_cli.report.checks import evaluate, parse_rule
from altgrad_cli.report.render.json_out import render_json

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(scope="module")
def report_dict() -> dict:
    report = analyze(
        SAMPLES / "before.safetensors",
        SAMPLES / "after.safetensors",
        grads=SAMPLES / "grads.safetensors",
        formats=["e4m3fn", "E0M7"],
    )
    return json.loads(render_json(report))


@pytest.fixture
def report_file(tmp_path, report_dict) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report_dict))
    return path


def check(*args, env=None):
    return CliRunner().invoke(
        __import__("altgrad_cli.cli.app", fromlist=["app"]).app, ["check", *map(str, args)], env=env
    )


def _values(report, key, fmt="e4m3fn"):
    return {layer["name"]: layer[key] for layer in report["layers"] if layer["format"] == fmt}


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_every_operator(report_dict, op):
    stalls = _values(report_dict, "stall_ratio")
    threshold = stalls["head.weight"]
    results = evaluate(
        report_dict, [parse_rule(f"stall_ratio {op} {threshold!r}")], formats=["e4m3fn"]
    )
    failed = {r.target for r in results if r.status == "fail"}
    compare = {
        "<": lambda v: v < threshold,
        "<=": lambda v: v <= threshold,
        ">": lambda v: v > threshold,
        ">=": lambda v: v >= threshold,
        "==": lambda v: v == threshold,
        "!=": lambda v: v != threshold,
    }[op]
    assert failed == {name for name, v in stalls.items() if compare(v)}
    assert failed and failed != set(
        stalls
    )  # the rule splits the tensors: it can both pass and fail


def test_summary_vs_layer_rules(report_dict):
    results = evaluate(report_dict, [parse_rule("summary.stall_ratio > 0.5")])
    assert [(r.target, r.format) for r in results] == [("summary", "e4m3fn"), ("summary", "E0M7")]
    summary = {s["format"]: s["stall_ratio"] for s in report_dict["summary"]}
    assert [r.status for r in results] == [
        "fail" if summary[f] > 0.5 else "pass" for f in ("e4m3fn", "E0M7")
    ]
    layer_results = evaluate(report_dict, [parse_rule("ulp.median >= 0")])
    assert len(layer_results) == len(report_dict["layers"]) and all(
        r.status == "fail" for r in layer_results
    )


def test_layer_regex_and_format_filter(report_dict):
    results = evaluate(
        report_dict, [parse_rule("flips >= 0")], layer=r"^hidden\.", formats=["E0M7"]
    )
    assert [(r.target, r.format) for r in results] == [
        ("hidden.bias", "E0M7"),
        ("hidden.weight", "E0M7"),
    ]


def test_baseline_rules_and_missing_tensor(report_dict):
    baseline = json.loads(json.dumps(report_dict))
    baseline["layers"] = [layer for layer in baseline["layers"] if layer["name"] != "norm.weight"]
    for layer in baseline["layers"]:
        layer["stall_ratio"] = layer["stall_ratio"] - 0.1
    results = evaluate(
        report_dict, [parse_rule("stall_ratio > baseline + 0.05")], baseline=baseline
    )
    by = {(r.target, r.format): r for r in results}
    assert by[("norm.weight", "e4m3fn")].status == "skip"
    head = by[("head.weight", "e4m3fn")]
    assert head.status == "fail" and head.threshold == pytest.approx(head.value - 0.05)
    same = evaluate(report_dict, [parse_rule("stall_ratio > baseline * 1.5")], baseline=report_dict)
    assert all(r.status == "pass" for r in same if r.value > 0)
    minus = evaluate(
        report_dict, [parse_rule("summary.flips < baseline - 1")], baseline=report_dict
    )
    assert all(r.status == "pass" for r in minus)
    with pytest.raises(UsageError, match="--baseline"):
        evaluate(report_dict, [parse_rule("flips > baseline")])


@pytest.mark.parametrize(
    ("rule", "column", "expected"),
    [
        ("stall_ratio >> 0.5", 14, "a number"),
        ("stall_ratio 0.5", 13, "an operator"),
        ("> 0.5", 1, "a metric key"),
        ("stall_ratio > baseline ^ 2", 15, "a number"),
        ("stall_ratio > 0.5 extra", 15, "a number"),
    ],
)
def test_rule_syntax_errors_point_at_the_problem(report_file, rule, column, expected):
    result = check(report_file, "--fail-if", rule)
    assert result.exit_code == 2
    assert f"expected {expected}" in result.stderr and f"column {column}" in result.stderr
    assert "^" in result.stderr and "Traceback" not in result.output


def test_unknown_key_and_missing_metric_are_usage_errors(report_dict, report_file, tmp_path):
    result = check(report_file, "--fail-if", "stall_ratoi > 0.5")
    assert (
        result.exit_code == 2 and "valid keys" in result.stderr and "stall_ratio" in result.stderr
    )
    no_grads = json.loads(json.dumps(report_dict))
    for layer in no_grads["layers"]:
        layer["grad_stiffness"] = None
    path = tmp_path / "nograds.json"
    path.write_text(json.dumps(no_grads))
    result = check(path, "--fail-if", "grad_stiffness.correlation > 0.5")
    assert result.exit_code == 2 and "needs --grads" in result.stderr


def test_exit_codes(report_file, tmp_path):
    assert check(report_file, "--fail-if", "summary.stall_ratio > 2").exit_code == 0
    failing = check(report_file, "--fail-if", "stall_ratio >= 1")
    assert failing.exit_code == 1
    assert "FAIL stall_ratio >= 1: norm.weight [e4m3fn] = 1.0 (threshold 1.0)" in failing.stderr
    assert check(tmp_path / "missing.json", "--fail-if", "flips > 0").exit_code == 3
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "altgrad.report/2", "layers": [')
    result = check(corrupt, "--fail-if", "flips > 0")
    assert (
        result.exit_code == 3
        and "corrupt.json" in result.stderr
        and "Traceback" not in result.output
    )
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert check(other, "--fail-if", "flips > 0").exit_code == 3


def test_junit_case_by_case(report_dict, report_file, tmp_path):
    junit = tmp_path / "checks.xml"
    result = check(report_file, "--fail-if", "stall_ratio > 0.7", "-f", "e4m3fn", "--junit", junit)
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    cases = root.findall("./testsuite/testcase")
    stalls = _values(report_dict, "stall_ratio")
    assert len(cases) == len(stalls)
    for case in cases:
        name = case.get("name").split(" :: ")[1]
        failure = case.find("failure")
        assert (failure is not None) == (stalls[name] > 0.7), name
        assert case.find("properties") is None  # junit-10.xsd allows none inside a testcase
        props = dict(item.split("=", 1) for item in case.find("system-out").text.split())
        assert float(props["value"]) == stalls[name] and float(props["threshold"]) == 0.7
        if failure is not None:
            assert repr(stalls[name]) in failure.get("message")
    assert root.get("failures") == str(sum(v > 0.7 for v in stalls.values()))


def test_github_step_summary(report_file, tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    result = check(
        report_file, "--fail-if", "stall_ratio >= 1", env={"GITHUB_STEP_SUMMARY": str(summary)}
    )
    assert result.exit_code == 1
    text = summary.read_text()
    assert (
        text.startswith("earlier step\n")
        and "| `stall_ratio >= 1` | `norm.weight` | e4m3fn |" in text
    )


def test_analyze_fail_if_adds_checks_section(tmp_path):
    from altgrad_cli.cli.app import app

    out = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["analyze", str(SAMPLES / "before.safetensors"), str(SAMPLES / "after.safetensors"),
         "--grads", str(SAMPLES / "grads.safetensors"), "-o", "json", "--out", str(out),
         "--fail-if", "stall_ratio > 0.95", "--layer", "norm"],
    )  # fmt: skip
    assert result.exit_code == 1
    checks = json.loads(out.read_text())["checks"]
    assert checks["failures"] == 1 and checks["rules"] == ["stall_ratio > 0.95"]
    assert {r["target"] for r in checks["results"]} == {"norm.weight", "norm.bias"}


JUNIT_XSD = Path(__file__).resolve().parents[2] / "shared" / "data" / "jenkins-junit-10.xsd"


def _junit_with_every_status(tmp_path) -> Path:
    from altgrad_cli.report.records import CheckResult
    from altgrad_cli.report.render.junit import render_junit

    results = [
        CheckResult("stall_ratio > 0.5", "a.weight", "e4m3fn", 0.75, 0.5, "fail"),
        CheckResult("stall_ratio > 0.5", "b.weight", "e4m3fn", 0.25, 0.5, "pass"),
        CheckResult(
            "flips < baseline", "c.weight", "e4m3fn", 3.0, None, "skip", "not in the baseline"
        ),
    ]
    path = tmp_path / "junit.xml"
    path.write_text(render_junit(results), encoding="utf-8")
    return path


def test_junit_validates_against_jenkins_xsd(tmp_path):
    if not JUNIT_XSD.exists():
        pytest.skip(f"the Jenkins junit-10.xsd is not at {JUNIT_XSD}")
    lxml = pytest.importorskip("lxml.etree", reason="lxml validates the JUnit XML")
    schema = lxml.XMLSchema(lxml.parse(str(JUNIT_XSD)))
    doc = lxml.parse(str(_junit_with_every_status(tmp_path)))
    assert schema.validate(doc), schema.error_log


def test_junit_suite_attributes(tmp_path):
    root = ET.parse(_junit_with_every_status(tmp_path)).getroot()
    suite = root.find("testsuite")
    for element in (root, suite):
        assert element.get("tests") == "3" and element.get("failures") == "1"
        assert element.get("errors") == "0" and element.get("time") == "0"
    assert suite.get("skipped") == "1"
    assert root.findall(".//testcase/properties") == []


def test_step_summary_names_the_run_collapses_passes_and_caps_failures():
    from altgrad_cli.report.records import CheckResult
    from altgrad_cli.report.render.junit import render_step_summary

    results = [CheckResult("flips > 0", f"t{i}", "e4m3fn", 1.0, 0.0, "fail") for i in range(25)]
    results += [CheckResult("flips > 0", f"p{i}", "e4m3fn", 0.0, 0.0, "pass") for i in range(7)]
    results += [CheckResult("flips > baseline", "s", "e4m3fn", 1.0, None, "skip", "absent")]
    text = render_step_summary(results, "altgrad check run/report.json --fail-if 'flips > 0'")
    assert text.startswith("### ❌ altgrad: 25 of 33 checks failed, 1 skipped")
    assert "`altgrad check run/report.json --fail-if 'flips > 0'`" in text
    assert "7 checks passed." in text and "| `flips > 0` | `p0`" not in text
    assert text.count("| `flips > 0` | `t") == 20 and "and 5 more failing checks" in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--layer", "atention"), "matches no tensor"),
        (("--layer", "nomatch"), "matches no tensor"),
        (("-f", "E5M3"), "no format E5M3 in the report (it has e4m3fn"),
    ],
)
def test_a_rule_that_selects_nothing_is_a_usage_error(report_file, args, expected):
    result = check(report_file, "--fail-if", "stall_ratio > 0.9", *args)
    assert result.exit_code == 2, result.output
    assert "selects no record" in result.stderr and expected in result.stderr
    assert "stall_ratio > 0.9" in result.stderr


def test_a_typo_in_layer_gets_close_matches(report_file):
    result = check(report_file, "--fail-if", "stall_ratio > 0.9", "--layer", "hiden.weight")
    assert result.exit_code == 2 and "did you mean hidden.weight" in result.stderr


def test_fail_on_missing_turns_tensors_the_baseline_lacks_into_failures(report_dict, tmp_path):
    baseline = json.loads(json.dumps(report_dict))
    baseline["layers"] = [layer for layer in baseline["layers"] if layer["name"] != "norm.weight"]
    rule = [parse_rule("stall_ratio > baseline + 10")]  # passes wherever the baseline has it
    lenient = evaluate(report_dict, rule, baseline=baseline)
    strict = evaluate(report_dict, rule, baseline=baseline, fail_on_missing=True)
    missing = {r.target for r in lenient if r.status == "skip"}
    assert missing == {"norm.weight"}
    assert {r.target for r in strict if r.status == "fail"} == missing
    assert all(r.message == "not in the baseline" for r in strict if r.status == "fail")

    report, base = tmp_path / "r.json", tmp_path / "b.json"
    report.write_text(json.dumps(report_dict))
    base.write_text(json.dumps(baseline))
    args = (report, "--fail-if", "stall_ratio > baseline + 10", "--baseline", base)
    passed = check(*args)
    assert passed.exit_code == 0 and "skipped" in passed.stderr
    failed = check(*args, "--fail-on-missing")
    assert failed.exit_code == 1
    assert "FAIL" in failed.stderr and "norm.weight" in failed.stderr
    assert "not in the baseline" in failed.stderr
