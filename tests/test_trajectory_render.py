"""Trajectory renderers against golden files, from one hand-built report (no computation involved).

Regenerate after an intended change with ALTGRAD_UPDATE_GOLDEN=1 and read the diff.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from altgrad_cli.report.records import Skipped
from altgrad_cli.report.render.json_out import render_json, render_jsonl
from altgrad_cli.report.render.trajectory import (
    render_trajectory_csv,
    render_trajectory_markdown,
    render_trajectory_table,
)
from altgrad_cli.report.trajectory import (
    OscillatingTensor,
    TrajectoryInputs,
    TrajectoryLayer,
    TrajectoryMetrics,
    TrajectoryOptions,
    TrajectoryReport,
    TrajectoryScale,
    TrajectorySummary,
    trajectory_schema,
)

GOLDEN = Path(__file__).parent / "golden"


def _metrics(
    flips: list[int], ever: int, net: int, backs: int, path: int, straight: int, runs: int
):
    return TrajectoryMetrics.from_counts(
        steps=len(flips),
        numel=64,
        nonfinite=0,
        flips_per_step=flips,
        ever_flipped=ever,
        net_flipped=net,
        flip_backs=backs,
        grid_steps=path,
        net_grid_steps=straight,
        frozen_run_total=runs,
    )


@pytest.fixture
def report() -> TrajectoryReport:
    q = _metrics([10, 12, 0, 8, 20], 30, 12, 18, 60, 15, 150)
    norm = _metrics([0, 0, 0, 0, 0], 0, 0, 0, 0, 0, 320)
    layers = (
        TrajectoryLayer(
            "blocks.0.attn.q.weight",
            "e2m1fn",
            "F32",
            (8, 8),
            TrajectoryScale("tensor", (0.01, 0.011, 0.0105, 0.012, 0.0119, 0.0121)),
            q,
        ),
        TrajectoryLayer(
            "blocks.0.norm.weight",
            "e2m1fn",
            "F32",
            (64,),
            TrajectoryScale("tensor", (0.2,) * 6),
            norm,
        ),
    )
    total = TrajectoryMetrics.from_counts(
        steps=5,
        numel=128,
        nonfinite=0,
        flips_per_step=[10, 12, 0, 8, 20],
        ever_flipped=30,
        net_flipped=12,
        flip_backs=18,
        grid_steps=60,
        net_grid_steps=15,
        frozen_run_total=470,
    )
    return TrajectoryReport(
        inputs=TrajectoryInputs(tuple(f"step_{k}.safetensors" for k in range(6))),
        options=TrajectoryOptions(("e2m1fn",), "tensor", False, (), None, None, 1 << 18, False),
        formats=(),
        layers=layers,
        summary=(
            TrajectorySummary(
                "e2m1fn",
                2,
                total,
                (
                    OscillatingTensor(
                        "blocks.0.attn.q.weight", q.oscillation_rate, 18, 0.46875, 0.25
                    ),
                    OscillatingTensor("blocks.0.norm.weight", 0.0, 0, 0.0, 0.0),
                ),
            ),
        ),
        skipped=(Skipped("step", "not a floating dtype (I64)"),),
    )


def _table(report: TrajectoryReport) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None, record=True)
    render_trajectory_table(report, console)
    return console.export_text()


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("trajectory.txt", _table),
        ("trajectory.md", render_trajectory_markdown),
        ("trajectory.csv", render_trajectory_csv),
        ("trajectory.jsonl", render_jsonl),
    ],
)
def test_golden(report, name, render):
    text = render(report)
    path = GOLDEN / name
    if os.environ.get("ALTGRAD_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_hand_built_numbers_and_schema(report):
    q = report.layers[0].metrics
    assert q.flips == 50 and q.oscillation_rate == 18 / 40 and q.path_efficiency == 15 / 60
    assert q.ever_flipped_frac == 30 / 64 and q.frozen_frac == 34 / 64
    assert q.frozen_run_mean == 150 / 64
    assert report.summary[0].metrics.frozen_run_mean == 470 / 128
    data = json.loads(render_json(report))
    jsonschema.validate(data, trajectory_schema())
    assert max(len(line) for line in _table(report).splitlines()) <= 80
