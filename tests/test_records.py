"""The typed records are the one vocabulary: JSON, schema, columns and rule keys all follow them."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from altgrad_cli import analyze
from altgrad_cli.engine.kernel import FormatCounts, TensorCounts
from altgrad_cli.report.checks import checks_section, evaluate, parse_rule
from altgrad_cli.report.records import LayerRecord, Report, SummaryRecord
from altgrad_cli.report.render import columns
from altgrad_cli.report.render.json_out import render_json
from altgrad_cli.report.schema import field_paths, report_schema

SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints"


@pytest.fixture(scope="module")
def report() -> Report:
    rules = [parse_rule("stall_ratio > 0.9"), parse_rule("summary.flip_rate < 1e-4")]
    report = analyze(
        SAMPLE / "before.safetensors",
        SAMPLE / "after.safetensors",
        grads=SAMPLE / "grads.safetensors",
        formats=["e4m3fn", "e2m1fn"],
        threads=1,
    )
    results = evaluate(report.to_dict(), rules)
    return replace(report, checks=checks_section(rules, results))


def _leaf_paths(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict):
        out: set[str] = set()
        for key, value in node.items():
            out |= (
                _leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
            )
        return out
    return set()


def test_json_round_trips_through_the_records(report):
    text = render_json(report)
    again = Report.from_dict(json.loads(text))
    assert again == report
    assert render_json(again) == text


def test_generated_schema_validates_and_is_strict(report):
    schema = report_schema()
    data = report.to_dict()
    jsonschema.validate(data, schema)
    extra = copy.deepcopy(data)
    extra["layers"][0]["stall_ratio_typo"] = 0.5
    missing = copy.deepcopy(data)
    del missing["summary"][0]["ulp"]["median"]
    wrong = copy.deepcopy(data)
    wrong["layers"][0]["flips"] = "12"
    out_of_range = copy.deepcopy(data)
    out_of_range["layers"][0]["stall_ratio"] = 1.5
    for bad in (extra, missing, wrong, out_of_range):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("mutate", ["extra", "missing", "wrong_type", "not_a_list"])
def test_from_dict_refuses_a_report_of_the_wrong_shape(report, mutate):
    data = report.to_dict()
    if mutate == "extra":
        data["layers"][0]["surprise"] = 1
    elif mutate == "missing":
        del data["layers"][0]["stiffness"]["histogram"]
    elif mutate == "wrong_type":
        data["summary"][0]["flips"] = 1.5
    else:
        data["layers"] = 5
    with pytest.raises(ValueError):
        Report.from_dict(data)


def test_field_paths_are_exactly_the_json_keys(report):
    layer = report.layers[0].to_dict()
    summary = report.summary[0].to_dict()
    # histograms are open-ended objects: their keys are data, not fields
    # one scale per tensor here: `blocks` is null and the group-scale fields are absent
    paths = field_paths(LayerRecord)
    assert {p for p in _leaf_paths(layer) if ".histogram." not in p} - {"blocks"} | {
        "grid_steps.histogram",
        "stiffness.histogram",
    } == paths - {"scale.tensor_scale"} - {p for p in paths if p.startswith("blocks.")}
    assert layer["blocks"] is None
    assert {"worst", "tensors", "format"} <= field_paths(SummaryRecord)
    summary_paths = {p for p in _leaf_paths(summary) if ".histogram." not in p} - {"blocks"}
    assert summary_paths <= field_paths(SummaryRecord)


def test_every_column_names_a_field():
    paths = field_paths(LayerRecord)
    groups = [
        columns.STALL_COLUMNS,
        columns.ULP_COLUMNS,
        columns.GRID_COLUMNS,
        columns.GRAD_COLUMNS,
    ]
    keys = [key for group in groups for _, key in group] + columns.CSV_KEYS
    assert keys and all(key in paths for key in keys), set(keys) - paths


def test_an_unknown_column_key_is_an_error_not_a_blank(report):
    layer = report.layers[0]
    assert columns.value(layer, "ulp.median") == layer.metrics.ulp.median
    with pytest.raises(KeyError):
        columns.value(layer, "ulp.medain")


def test_absent_optional_group_reads_as_none(report):
    no_grads = replace(
        report.layers[0], metrics=replace(report.layers[0].metrics, grad_stiffness=None)
    )
    assert columns.value(no_grads, "grad_stiffness.correlation") is None


def test_counters_refuse_a_misspelt_name():
    counts = FormatCounts()
    counts.flips += 2
    with pytest.raises(AttributeError):
        counts.flps += 1  # type: ignore[attr-defined]
    other = FormatCounts(flips=3, on_grid=1)
    counts.merge(other)
    assert (counts.flips, counts.on_grid) == (5, 1)
    tensor = TensorCounts(numel=4, n=3, nonfinite=1, updates=2)
    tensor.merge(TensorCounts(numel=1, n=1))
    assert (tensor.numel, tensor.n, tensor.nonfinite, tensor.updates) == (5, 4, 1, 2)
