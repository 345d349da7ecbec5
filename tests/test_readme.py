"""Every `altgrad` command in the README runs, as written, and ends as the README says it would.

The commands name files a reader has (`before.safetensors`, `step_1000/`, `fp8.json`): the test
builds a folder where each of those names exists, made from the sample checkpoints, and runs each
command there with bash (pipes, globs and brace expansion included) through the installed
console script. A command that names a file this test does not know fails it, so a new README
example gets a file here too. Exit 0 is expected; 1 where the command gates on `--fail-if`; the
one command addressed to a cluster that does not exist must fail with one line, exit 3.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_checkpoints"
ALTGRAD = Path(sys.executable).with_name("altgrad")
pytestmark = pytest.mark.skipif(not ALTGRAD.exists(), reason="the console script is not installed")


def readme_commands() -> list[str]:
    """Each `altgrad …` command of the README's code blocks: continuation lines joined, comments
    and prompts dropped, the `altgrad` part of an install-and-run `&&` chain."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for body in re.findall(r"```[\w-]*\n(.*?)```", text, re.S):
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("altgrad "):
                    command = re.sub(r"\s+# .*$", "", part)  # a trailing comment
                    shlex.split(command)  # quotes balanced: the line was read whole
                    commands.append(" ".join(command.split()))
    return list(dict.fromkeys(commands))


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _renamed(src: Path, dst: Path) -> None:
    """The sample with a transformer's names (the CI example selects `--layer 'attn|mlp'`)."""
    from safetensors.torch import load_file, save_file

    names = {"embed": "model.embed_tokens", "hidden": "model.layers.0.mlp", "head": "model.attn"}
    tensors = load_file(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{names.get(k.split('.')[0], k.split('.')[0])}.{k.split('.', 1)[1]}": v
               for k, v in tensors.items()}, dst)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder in which every file a README command names exists."""
    ws = tmp_path_factory.mktemp("readme")
    shutil.copytree(SAMPLE, ws / "sample_checkpoints")
    for role in ("before", "after", "grads"):
        _copy(SAMPLE / f"{role}.safetensors", ws / f"{role}.safetensors")
        _copy(SAMPLE / f"{role}.safetensors", ws / role / "model.safetensors")
        _renamed(SAMPLE / f"{role}.safetensors", ws / "step_1000" / f"{role}.safetensors")
    steps = sorted((SAMPLE / "trajectory").glob("*.safetensors"))
    for i, step in enumerate(steps[:4]):
        _copy(step, ws / f"step_{100 * (i + 1)}" / "model.safetensors")
        _copy(step, ws / f"ckpt_{i}.safetensors")
    report = ws / "fp8.json"
    run(ws, f"{ALTGRAD} analyze before.safetensors after.safetensors -o json --out {report}")
    shutil.copyfile(report, ws / "main-fp8.json")
    return ws


def run(ws: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{ALTGRAD.parent}:/usr/bin:/bin", "COLUMNS": "100", "HOME": str(ws)}
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_run():
    assert len(COMMANDS) >= 15  # the extraction found them: an empty list would check nothing
    assert any(c.startswith("altgrad analyze") for c in COMMANDS)
    assert any(c.startswith("altgrad trajectory") for c in COMMANDS)
    assert any(c.startswith("altgrad check") for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(workspace, command):
    if "| jq" in command and shutil.which("jq") is None:
        command = command.split("|")[0]  # the JSON itself is checked below
    result = run(workspace, command)
    gate = "--fail-if" in command
    if "tcp://scheduler" in command:  # a placeholder address: the error must be one line
        assert result.returncode == 3, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "scheduler" in result.stderr
        return
    assert result.returncode in ((0, 1) if gate else (0,)), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    if "-o json" in command or "--output json" in command:
        if "--out" not in command:
            json.loads(result.stdout)
    elif "--out" not in command and "--junit" not in command and not gate:
        assert result.stdout.strip(), "the command printed nothing"
