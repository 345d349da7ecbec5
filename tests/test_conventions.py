"""CLI conventions: case-insensitive choices, `check` never prints nothing, `--sort` on any key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altgrad_cli.cli.app import app

SAMPLE = Path(__file__).resolve().parent.parent / "sample_checkpoints"
PAIR = [str(SAMPLE / "before.safetensors"), str(SAMPLE / "after.safetensors")]


def cli(*args: str):
    return CliRunner().invoke(app, [*args])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("r") / "report.json"
    assert cli("analyze", *PAIR, "-o", "json", "--out", str(path)).exit_code == 0
    return path


def test_output_choices_ignore_case(saved):
    result = cli("analyze", *PAIR, "-o", "JSON")
    assert result.exit_code == 0 and json.loads(result.stdout)["schema"].startswith("altgrad")
    check = cli("check", str(saved), "--fail-if", "stall_ratio > 2", "-o", "Json")
    assert check.exit_code == 0 and json.loads(check.stdout)["passed"] is True


@pytest.mark.parametrize("fmt", ["csv", "markdown", "table"])
def test_check_refuses_an_output_it_cannot_print(saved, fmt):
    result = cli("check", str(saved), "--fail-if", "stall_ratio > 2", "-o", fmt)
    assert result.exit_code == 2 and result.stdout == ""
    assert f"altgrad render REPORT -o {fmt}" in result.stderr


def test_sort_by_text_is_a_to_z_and_numbers_largest_first():
    names = [
        r["name"]
        for r in json.loads(cli("analyze", *PAIR, "-o", "json", "--sort", "name").stdout)["layers"]
    ]
    assert names == sorted(names)
    stalls = [
        r["stall_ratio"]
        for r in json.loads(cli("analyze", *PAIR, "-o", "json", "--sort", "stall_ratio").stdout)[
            "layers"
        ]
    ]
    assert stalls == sorted(stalls, reverse=True)


def test_sort_by_an_unknown_key_lists_the_valid_ones():
    result = cli("analyze", *PAIR, "--sort", "stal_ratio")
    assert (
        result.exit_code == 2 and "valid keys:" in result.stderr and "stall_ratio" in result.stderr
    )
