"""The sample report's HTML page in a real browser: headless Chromium draws every plot, logs
nothing to the console (a script error or a refused network request would be logged) and
paints a non-blank page. Skipped, with the reason, where no Chromium is installed."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altgrad_cli.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_checkpoints"
BROWSER = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

pytestmark = pytest.mark.skipif(
    BROWSER is None,
    reason="no headless Chromium on PATH (apt-get install chromium; .ci/run installs it)",
)


def _chromium(tmp_path: Path, page: Path, *mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",  # let every plot draw before the capture
            "--window-size=1280,1600",
            *mode,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _console(stderr: str) -> list[str]:
    """The page's console messages (errors, warnings, CSP refusals) from Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _png_pixel_bytes(path: Path) -> tuple[tuple[int, int], bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, size, idat = 8, (0, 0), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return size, zlib.decompress(idat)


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("browser") / "report.html"
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(SAMPLE / "before.safetensors"),
            str(SAMPLE / "after.safetensors"),
            "--grads",
            str(SAMPLE / "grads.safetensors"),
            "-f",
            "e4m3fn",
            "-f",
            "e2m1fn",
            "--fail-if",
            "stall_ratio > 0.95",
            "-o",
            "html",
            "--out",
            str(path),
        ],
    )
    assert result.exit_code == 1, result.output  # the rule fails on norm.*: a checks section
    return path


def test_every_plot_draws_without_console_messages(page, tmp_path):
    run = _chromium(tmp_path, page, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    plots = re.findall(r'<div class="plot" id="plot-\d+"', page.read_text(encoding="utf-8"))
    assert len(plots) == 4  # what-if, layer × recipe, stiffness and grid-step histograms
    # plotly marks a div it drew into; every one of ours was drawn
    drawn = re.findall(r'<div class="plot[^"]*js-plotly-plot[^"]*" id="plot-\d+"', run.stdout)
    assert len(drawn) == len(plots)
    assert run.stdout.count('class="main-svg"') >= len(plots)


def test_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, page, f"--screenshot={shot}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    size, pixels = _png_pixel_bytes(shot)
    assert size == (1280, 1600)
    # a single-colour page decodes to a handful of distinct bytes whatever PNG filter Chromium
    # picks (a blank white one: 4); text, tables and plots give nearly all 256
    assert len(set(pixels)) > 128
