"""The one error boundary, through the installed `altgrad` console script: exit codes with and
without the debug switch, the traceback only when asked for, and every command taking --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from altgrad_cli.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
SCRIPT = Path(sys.executable).with_name("altgrad")


def altgrad(*args: object, debug_env: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script the package installs, importing the tree under test."""
    assert SCRIPT.exists(), f"no console script at {SCRIPT}: install the package (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY", "ALTGRAD_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if debug_env is not None:
        env["ALTGRAD_DEBUG"] = debug_env
    return subprocess.run(
        [str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
    )


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _plain(result, code: int, prefix: str, *fragments: str) -> None:
    """Exit `code`, exactly one line on stderr, starting with `prefix`, no traceback."""
    assert result.returncode == code, result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(prefix), lines
    assert all(fragment in lines[0] for fragment in fragments), lines


def _debug(result, code: int, prefix: str, exception: str) -> None:
    """Exit `code`, the traceback naming the exception, then the same one line last."""
    assert result.returncode == code, result.stderr
    lines = _lines(result.stderr)
    assert lines[0] == "Traceback (most recent call last):", lines
    assert any(line.startswith(f"altgrad_cli.errors.{exception}: ") for line in lines), lines
    assert lines[-1].startswith(prefix), lines


MISSING = ("analyze", "/nonexistent/before.safetensors", SAMPLES / "after.safetensors")
BAD_FORMAT = (
    "analyze",
    SAMPLES / "before.safetensors",
    SAMPLES / "after.safetensors",
    "-f",
    "e9m9x",
)


def test_the_script_is_the_one_under_test():
    result = altgrad("--version")
    assert result.returncode == 0 and result.stdout == "altgrad 0.1.0\n"


def test_missing_file_is_exit_3_one_line():
    _plain(altgrad(*MISSING), 3, "error: ", "/nonexistent/before.safetensors", "no such file")


@pytest.mark.parametrize(
    "args, debug_env",
    [
        ((*MISSING, "--debug"), None),  # after the subcommand
        (("--debug", *MISSING), None),  # before it
        (MISSING, "1"),
        (MISSING, "true"),
    ],
    ids=["--debug after", "--debug before", "ALTGRAD_DEBUG=1", "ALTGRAD_DEBUG=true"],
)
def test_missing_file_with_debug_is_still_exit_3(args, debug_env):
    _debug(altgrad(*args, debug_env=debug_env), 3, "error: ", "InputError")


def test_debug_env_zero_is_off():
    _plain(altgrad(*MISSING, debug_env="0"), 3, "error: ")


def test_bad_format_is_exit_2_one_line():
    _plain(altgrad(*BAD_FORMAT), 2, "usage error: ", "unknown format or recipe 'e9m9x'")


def test_bad_format_with_debug_is_still_exit_2():
    _debug(altgrad(*BAD_FORMAT, "--debug"), 2, "usage error: ", "FormatError")
    _debug(altgrad(*BAD_FORMAT, debug_env="1"), 2, "usage error: ", "FormatError")


def test_check_errors_share_the_boundary(tmp_path):
    _plain(altgrad("check", tmp_path / "none.json", "--fail-if", "flips > 0"), 3, "error: ")
    _plain(altgrad("check", tmp_path / "none.json"), 2, "usage error: ", "--fail-if")
    _debug(altgrad("check", tmp_path / "none.json", "--debug"), 2, "usage error: ", "UsageError")


def test_unknown_option_stays_click_usage_error_exit_2():
    result = altgrad("analyze", "--no-such-option")
    assert result.returncode == 2 and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- unexpected errors


@pytest.fixture
def broken_pipeline(monkeypatch):
    import altgrad_cli.pipeline as pipeline

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug [not bad input]")

    monkeypatch.setattr(pipeline, "run_analysis", bug)


def test_a_bug_is_one_internal_error_line_exit_3(broken_pipeline):
    result = CliRunner().invoke(app, [*map(str, MISSING)])
    assert result.exit_code == 3
    assert _lines(result.stderr) == [
        "internal error: ZeroDivisionError: a bug [not bad input] (please report it; "
        "--debug shows the traceback)"
    ]


def test_a_bug_with_debug_shows_the_traceback_exit_3(broken_pipeline):
    result = CliRunner().invoke(app, [*map(str, MISSING), "--debug"])
    lines = _lines(result.stderr)
    assert result.exit_code == 3 and lines[0] == "Traceback (most recent call last):"
    assert "ZeroDivisionError: a bug [not bad input]" in lines
    assert (
        lines[-1] == "internal error: ZeroDivisionError: a bug [not bad input] (please report it)"
    )


# ----------------------------------------------------------------------------- one switch everywhere


def test_every_command_takes_debug():
    group = typer.main.get_command(app)
    assert "--debug" in {opt for param in group.params for opt in param.opts}
    for name, command in group.commands.items():
        assert "--debug" in {opt for param in command.params for opt in param.opts}, name


def test_debug_does_not_leak_between_runs(tmp_path):
    runner, missing = CliRunner(), [str(tmp_path / "nope"), str(tmp_path / "nope")]
    assert "Traceback" in runner.invoke(app, ["analyze", *missing, "--debug"]).stderr
    assert "Traceback" not in runner.invoke(app, ["analyze", *missing]).stderr
