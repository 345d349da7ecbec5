"""The lazy public API and the commands that must not load torch, each run in a fresh interpreter."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import altgrad_cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"

# Runs the CLI's main() with the given arguments, then reports its exit code and whether torch
# was imported, as the last line on stderr.
PROBE = """
import sys
sys.argv = ["altgrad", *sys.argv[1:]]
from altgrad_cli.cli.app import main
try:
    main()
    code = 0
except SystemExit as exit:
    code = exit.code or 0
sys.stdout.flush()
sys.stderr.write(f"\\nprobe exit={code} torch={'torch' in sys.modules}\\n")
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY", "ALTGRAD_DEBUG")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "160"
    return env


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=120
    )


def _probe(*argv: str) -> tuple[int, bool, str]:
    """(exit code, torch imported, stdout) of `altgrad ARGV` run through main() in a subprocess."""
    result = _python("-c", PROBE, *argv)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("probe exit="), result.stderr
    code, torch = (field.split("=")[1] for field in last.split()[1:])
    return int(code), torch == "True", result.stdout


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    from altgrad_cli.report.render.json_out import render_json

    report = altgrad_cli.analyze(
        SAMPLES / "before.safetensors",
        SAMPLES / "after.safetensors",
        grads=SAMPLES / "grads.safetensors",
    )
    path = tmp_path_factory.mktemp("report") / "report.json"
    path.write_text(render_json(report))
    return path


def test_import_loads_no_torch():
    code = (
        "import sys, altgrad_cli\n"
        "assert altgrad_cli.get_format('e4m3fn').max == 448 and altgrad_cli.E4M3.max == 448\n"
        "assert issubclass(altgrad_cli.UsageError, altgrad_cli.AltgradError)\n"
        "assert set(altgrad_cli.__all__) <= set(dir(altgrad_cli))\n"
        "print('torch' in sys.modules)\n"
    )
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_engine_names_do_load_torch():
    """The other side of the probe above: it would notice torch if a name pulled it in."""
    result = _python(
        "-c", "import sys, altgrad_cli; altgrad_cli.analyze; print('torch' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize(
    "argv, exit_code",
    [
        (["--help"], 0),
        (["formats"], 0),
        (["formats", "-o", "json"], 0),
        (["schema"], 0),
        (["check", "--help"], 0),
        (["analyze", "--help"], 0),
        (["check", "REPORT", "--fail-if", "stall_ratio > 0.9"], 1),
        (["check", "REPORT", "--fail-if", "stall_ratio > 1", "-o", "json"], 0),
        (["render", "REPORT", "-o", "json"], 0),
        (["render", "REPORT", "-o", "markdown"], 0),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else str(value),
)
def test_commands_without_torch(argv, exit_code, report_file):
    argv = [str(report_file) if arg == "REPORT" else arg for arg in argv]
    code, torch_loaded, stdout = _probe(*argv)
    assert code == exit_code and not torch_loaded
    if argv[:1] == ["schema"] or "json" in argv:
        json.loads(stdout)  # the whole document came out, not a half-rendered one


def test_analyze_does_load_torch(report_file):
    code, torch_loaded, stdout = _probe(
        "analyze",
        str(SAMPLES / "before.safetensors"),
        str(SAMPLES / "after.safetensors"),
        "-o",
        "json",
    )
    assert code == 0 and torch_loaded and json.loads(stdout)["layers"]


def test_public_names_resolve_and_are_listed():
    from altgrad_cli.numerics.formats import Format, get_format
    from altgrad_cli.pipeline import analyze

    assert len(set(altgrad_cli.__all__)) == len(altgrad_cli.__all__)
    for name in altgrad_cli.__all__:
        assert getattr(altgrad_cli, name) is not None, name
    assert set(altgrad_cli.__all__) <= set(dir(altgrad_cli))
    assert altgrad_cli.analyze is analyze and altgrad_cli.FP8Format is Format
    assert get_format("E4M3") == altgrad_cli.E4M3 and altgrad_cli.E0M7.name == "E0M7"
    with pytest.raises(AttributeError, match="no_such_name"):
        altgrad_cli.no_such_name  # noqa: B018
    namespace: dict = {}
    exec("from altgrad_cli import *", namespace)
    assert set(altgrad_cli.__all__) <= set(namespace)


def test_no_public_name_is_a_submodule():
    submodules = {info.name for info in pkgutil.iter_modules(altgrad_cli.__path__)}
    assert {"pipeline", "cli", "engine", "numerics", "report"} <= submodules
    assert not submodules & set(altgrad_cli.__all__)
