"""Tables a person can read: terminal width, shortened names, one number style per column,
"no updates" instead of a stall ratio of 0, ULPs once per tensor."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli.cli.app import app
from altgrad_cli.report.render.columns import fmt_column
from altgrad_cli.report.render.table import console_width, shorten

LONG = "model.layers.17.self_attn.rotary_embedding_projection.q_proj.weight"


@pytest.fixture
def step(tmp_path):
    g = torch.Generator().manual_seed(0)
    before = {
        LONG: torch.randn(16, 32, generator=g) * 0.02,
        "frozen.weight": torch.randn(8, generator=g),
        "norm.weight": torch.ones(8),
    }
    after = {k: v.clone() for k, v in before.items()}
    after[LONG] += torch.randn(16, 32, generator=g) * 1e-3
    after["norm.weight"][0] = -1.0  # one sign change
    grads = {k: torch.full_like(v, 1e-3) for k, v in before.items()}
    grads["frozen.weight"].zero_()  # no update at all
    paths = []
    for name, tensors in (("b", before), ("a", after), ("g", grads)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file(tensors, str(paths[-1]))
    return paths


def run(*args, columns=80):
    return CliRunner().invoke(app, ["analyze", *map(str, args)], env={"COLUMNS": str(columns)})


def test_80_columns_fit_and_long_names_shorten_from_the_left(step):
    b, a, g = step
    result = run(b, a, "--grads", g, "-f", "e4m3fn", "-f", "e2m1fn", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" in result.stdout and LONG not in result.stdout
    assert any(re.search(r"│ …\S*q_proj\.weight", line) for line in lines)  # the tail is kept
    wide = run(b, a, "--grads", g, "-f", "e4m3fn", columns=200)
    assert LONG in wide.stdout  # nothing shortened when it fits
    assert max(len(line) for line in wide.stdout.splitlines()) <= 200
    json_out = run(b, a, "--grads", g, "-o", "json", columns=40)
    assert LONG in {layer["name"] for layer in json.loads(json_out.stdout)["layers"]}


def test_no_cell_wraps_at_narrow_widths(step):
    b, a, g = step
    for columns in (60, 80, 100):
        result = run(b, a, "--grads", g, columns=columns)
        for line in result.stdout.splitlines():
            if line.startswith("│"):  # a table row: every cell on one line
                assert len(line) <= columns, line


def test_no_updates_instead_of_zero_and_out_of_worst(step):
    b, a, g = step
    table = run(b, a, "--grads", g, columns=120).stdout
    row = next(line for line in table.splitlines() if "frozen.weight" in line)
    assert "no updates" in row
    assert "(1 without updates)" in table
    report = json.loads(run(b, a, "--grads", g, "-o", "json").stdout)
    frozen = next(r for r in report["layers"] if r["name"] == "frozen.weight")
    assert frozen["updates"] == 0 and frozen["stall_ratio"] == 0.0  # the seed's value stays
    summary = report["summary"][0]
    assert summary["no_update_tensors"] == 1
    assert "frozen.weight" not in {w["name"] for w in summary["worst"]}


def test_ulps_once_per_tensor_with_sign_changes_apart(step):
    b, a, g = step
    result = run(b, a, "--grads", g, "-f", "e4m3fn", "-f", "e2m1fn", columns=120)
    ulp_table = result.stdout.split("Storage ULPs")[1].split("Grid alignment")[0]
    assert ulp_table.count("norm.weight") == 1
    report = json.loads(run(b, a, "--grads", g, "-o", "json").stdout)
    norm = next(r for r in report["layers"] if r["name"] == "norm.weight")["ulp"]
    # 1.0 → -1.0 crosses zero: 2 · ord(1.0) ULPs, counted apart from the 7 unmoved elements
    assert norm["sign_changes"] == 1 and norm["max"] == 2 * 0x3F800000
    assert norm["mean_same_sign"] == 0.0 and norm["mean"] == 2 * 0x3F800000 / 8


def test_stiffness_mean_is_null_when_no_weight_defines_it(tmp_path):
    b, a = tmp_path / "b.safetensors", tmp_path / "a.safetensors"
    save_file({"zeros": torch.zeros(4)}, str(b))
    save_file({"zeros": torch.full((4,), 1e-3)}, str(a))
    record = json.loads(run(b, a, "-o", "json").stdout)["layers"][0]
    assert record["stiffness"]["mean"] is None
    assert record["update_stiffness"]["ratio_mean"] is None
    assert record["grid_alignment"]["rel_mean"] is None


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([14177.4, 16896.0, 981668380.2], ["14,177", "16,896", "981,668,380"]),
        ([0.25, 0.0, 1.0], ["0.250", "0", "1.000"]),
        ([6.1e-05, 1.0], ["6.100e-05", "1.000e+00"]),
        ([16896, 1938489891, None], ["16,896", "1,938,489,891", "–"]),
    ],
)
def test_one_number_style_per_column(values, expected):
    assert fmt_column(values) == expected


def test_console_width_honours_columns_and_defaults_to_120(monkeypatch):
    monkeypatch.setenv("COLUMNS", "93")
    assert console_width() == 93
    monkeypatch.delenv("COLUMNS")
    assert console_width() == 120  # pytest captures stdout: not a terminal


def test_shorten_keeps_the_tail():
    assert shorten("abcdef", 6) == "abcdef" and shorten("abcdefgh", 5) == "…efgh"
