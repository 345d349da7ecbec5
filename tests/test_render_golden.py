"""Renderers against golden files, from one hand-built report (no computation involved).

Regenerate after an intended change with ALTGRAD_UPDATE_GOLDEN=1 and read the diff.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from altgrad_cli.report.records import (
    Inputs,
    LayerRecord,
    Metrics,
    Report,
    ReportOptions,
    SingleScale,
    Skipped,
    SummaryRecord,
    WorstRow,
)
from altgrad_cli.report.render.csv_out import render_csv
from altgrad_cli.report.render.json_out import render_json, render_jsonl
from altgrad_cli.report.render.markdown import render_markdown
from altgrad_cli.report.render.table import render_table
from altgrad_cli.report.serialize import from_json

GOLDEN = Path(__file__).parent / "golden"


def _metrics(updates: int, flips: int, on_updates: int, numel: int) -> Metrics:
    stall = 1 - on_updates / updates if updates else 0.0
    return from_json(
        Metrics,
        {
            "numel": numel,
            "nonfinite": 0,
            "updates": updates,
            "update_source": "grads",
            "flips": flips,
            "flips_on_updates": on_updates,
            "flips_without_update": flips - on_updates,
            "flip_rate": flips / numel,
            "stall_ratio": stall,
            "grid_steps": {
                "mean": 0.75,
                "max": 3,
                "histogram": {"0": 2, "1": 1, "2": 0, "3": 1, "4-7": 0, "8-15": 0, "16+": 0},
            },
            "ulp": {
                "mean": 1234.5,
                "median": 1000,
                "max": 5000,
                "zero_frac": 0.25,
                "sign_changes": 0,
                "mean_same_sign": 1234.5,
            },
            "stiffness": {
                "mean": 0.0078125,
                "min": 0.00390625,
                "max": 0.015625,
                "histogram": {"-8": 1, "-7": 2, "-6": 1},
            },
            "grid_alignment": {
                "mean": 0.001,
                "max": 0.003,
                "std": 0.0005,
                "on_grid_frac": 0.25,
                "rel_mean": 0.125,
            },
            "grad_stiffness": {"correlation": 0.5, "ratio_mean": 0.75, "below_frac": 0.5},
            "update_stiffness": {
                "ratio_mean": 0.6,
                "below_half_frac": 0.5,
                "predicted_vs_actual": {
                    "predicted_flip": {"flipped": 1, "not_flipped": 1},
                    "predicted_stall": {"flipped": 0, "not_flipped": 2},
                },
            },
            "stored": {
                "rne_moved": on_updates,
                "rne_lost_frac": stall,
                "lost_mass_frac": stall / 2,
                "sr_expected_moved": updates * 0.625,
                "sr_moved_std": 0.75,
            },
            "overflow_frac": 0.0,
            "underflow_frac": 0.0,
            "blocks": None,
        },
    )


@pytest.fixture
def report() -> Report:
    scale = SingleScale("tensor", 0.5)
    layers = (
        LayerRecord(
            "blocks.0.attn.q.weight", "e4m3fn", "BF16", (2, 2), scale, _metrics(4, 1, 1, 4)
        ),
        LayerRecord("blocks.0.attn.q.weight", "E0M7", "BF16", (2, 2), scale, _metrics(4, 3, 3, 4)),
        LayerRecord("norm.weight", "e4m3fn", "BF16", (4,), scale, _metrics(4, 0, 0, 4)),
        LayerRecord("norm.weight", "E0M7", "BF16", (4,), scale, _metrics(4, 2, 2, 4)),
    )
    summary = (
        SummaryRecord(
            "e4m3fn",
            2,
            0,
            _metrics(8, 1, 1, 8),
            (WorstRow("norm.weight", 1.0, 4, 0),),
        ),
        SummaryRecord(
            "E0M7",
            2,
            0,
            _metrics(8, 5, 5, 8),
            (WorstRow("norm.weight", 0.5, 4, 2),),
        ),
    )
    return Report(
        inputs=Inputs("b.safetensors", "a.safetensors", "g.safetensors"),
        options=ReportOptions(("e4m3fn", "E0M7"), "tensor", False, 1e-10, (), None, None, 1 << 18),
        formats=(),
        layers=layers,
        summary=summary,
        skipped=(Skipped("step", "not a floating dtype (I64)"),),
    )


def _table(report: Report) -> str:
    console = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    render_table(report, console)
    return console.export_text()


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("report.txt", _table),
        ("report.md", render_markdown),
        ("report.csv", render_csv),
        ("report.jsonl", render_jsonl),
    ],
)
def test_golden(report, name, render):
    text = render(report)
    path = GOLDEN / name
    if os.environ.get("ALTGRAD_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_json_round_trips(report):
    data = json.loads(render_json(report))
    assert data["layers"][0]["name"] == "blocks.0.attn.q.weight" and data["skipped"][0][
        "reason"
    ].startswith("not a")
