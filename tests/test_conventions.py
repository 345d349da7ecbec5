"""CLI conventions: case-insensitive choices, `check` never prints nothing, `--sort` on any key."""

from __future__ import annotations

import json
import re
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


def names_of(*args: str) -> list[str]:
    result = cli("analyze", *PAIR, "-o", "json", *args)
    assert result.exit_code == 0, result.stderr
    return [r["name"] for r in json.loads(result.stdout)["layers"]]


def test_include_and_exclude_repeat_and_any_pattern_selects():
    every = names_of()
    both = names_of("--include", "^embed", "--include", "^head")
    assert both == [n for n in every if n.startswith(("embed", "head"))]
    assert set(names_of("--include", "^embed")) < set(both)  # the second one is not dropped
    kept = names_of("--exclude", "bias$", "--exclude", "^embed")
    assert kept == [n for n in every if not n.endswith("bias") and not n.startswith("embed")]


def test_one_include_is_recorded_as_written_several_as_their_union():
    one = json.loads(cli("analyze", *PAIR, "-o", "json", "--include", "head").stdout)
    assert one["options"]["include"] == "head"
    two = json.loads(
        cli("analyze", *PAIR, "-o", "json", "--include", "head", "--include", "embed").stdout
    )
    assert two["options"]["include"] == "(?:head)|(?:embed)"


def test_a_bad_pattern_among_several_is_named():
    result = cli("analyze", *PAIR, "--include", "head", "--include", "a(")
    assert result.exit_code == 2 and "--include 'a('" in result.stderr


def test_the_library_takes_several_patterns_too():
    from altgrad_cli import analyze

    report = analyze(*PAIR, include=["^embed", "^head"], exclude=("bias$",))
    assert [r.name for r in report.layers] == ["embed.weight", "head.weight"]


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    return result.stdout


@pytest.mark.parametrize("command", ["analyze", "trajectory", "check", "render", "formats"])
def test_help_names_values_plainly(command):
    text = help_text(command)
    assert "<bool>" not in text and "<list[" not in text and "<path>" not in text
    assert "{" not in text.split("\n\n")[0] + text.splitlines()[1]  # usage line: no braces


def test_help_usage_shows_arguments_by_name_and_flags_take_no_value():
    text = help_text("analyze")
    assert re.search(r"analyze \[OPTIONS\] BEFORE AFTER *$", text, re.M)
    quiet = next(line for line in text.splitlines() if "--quiet" in line)
    assert "BOOL" not in quiet.upper().replace("--", "")
    grads = next(line for line in text.splitlines() if "--grads" in line)
    assert "PATH" in grads
    assert "trajectory [OPTIONS] C0 C1 … Cn" in help_text("trajectory")


def test_help_texts_are_literal_not_markup():
    text = " ".join(help_text("analyze").split())
    assert "FORMAT[@SCALING]" in text.replace("│ ", "").replace(" │", "")
    assert "altgrad-cli[dask]" in text.replace("│ ", "").replace(" │", "")


def test_shell_completion_is_offered():
    root = help_text()
    assert "--install-completion" in root and "--show-completion" in root


def test_out_and_junit_create_missing_folders(tmp_path):
    out, junit = tmp_path / "a" / "b" / "report.json", tmp_path / "c" / "junit.xml"
    result = cli(
        "analyze", *PAIR, "-o", "json", "--out", str(out),
        "--fail-if", "stall_ratio > 2", "--junit", str(junit),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["schema"].startswith("altgrad.report")
    assert junit.read_text().startswith("<?xml")


def test_a_failed_run_leaves_no_new_folder(tmp_path):
    out = tmp_path / "new" / "report.json"
    result = cli("analyze", str(tmp_path / "missing.safetensors"), PAIR[1], "--out", str(out))
    assert result.exit_code == 3 and not (tmp_path / "new").exists()
