"""Helpers for the hostile-input tests: run the CLI in-process with a hang guard, build files."""

from __future__ import annotations

import contextlib
import json
import signal
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli.cli.app import app

HANG_LIMIT_S = 60  # a guard against a hang, far above any expected run: not a timing assertion


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: int = HANG_LIMIT_S):
    """Raise Hang instead of blocking forever (a FIFO, a backtracking regex)."""

    def _raise(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cli(*args, env=None):
    with no_hang():
        return CliRunner().invoke(app, [str(a) for a in args], env=env)


def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_line(result, code: int, *fragments: str) -> str:
    """Exit `code`, exactly one stderr line holding every fragment, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = stderr_lines(result)
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_raw(path: Path, header: dict | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def pair(tmp_path: Path, names=("w", "b"), grads: tuple[str, ...] | None = None) -> tuple:
    """before/after (and grads for `grads` names) with a small step, as safetensors files."""
    gen = torch.Generator().manual_seed(0)
    before = {n: torch.randn(4, 8, generator=gen) for n in names}
    after = {n: t + 0.05 * torch.randn(4, 8, generator=gen) for n, t in before.items()}
    paths = [tmp_path / "before.safetensors", tmp_path / "after.safetensors"]
    save_file(before, str(paths[0]))
    save_file(after, str(paths[1]))
    if grads is not None:
        paths.append(tmp_path / "grads.safetensors")
        save_file({n: torch.randn(4, 8, generator=gen) for n in grads}, str(paths[2]))
    return tuple(paths)
