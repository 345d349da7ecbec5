"""AnalysisOptions: the CLI's arguments gathered once and carried down, the same object the
library's analyze() builds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altgrad_cli import analyze
from altgrad_cli.cli import analyze as analyze_cli
from altgrad_cli.cli.app import app
from altgrad_cli.engine.tensor import DEFAULT_CHUNK
from altgrad_cli.pipeline import AnalysisOptions, run_analysis
from altgrad_cli.report.render.json_out import render_json

SAMPLES = Path(__file__).resolve().parent.parent / "sample_checkpoints"
BEFORE, AFTER, GRADS = (SAMPLES / f"{n}.safetensors" for n in ("before", "after", "grads"))


@pytest.fixture
def captured(monkeypatch):
    """Replace the analysis with a recorder of the options the CLI hands it."""
    import altgrad_cli.pipeline as pipeline

    seen: list[AnalysisOptions] = []
    real = pipeline.run_analysis

    def record(options, **kwargs):
        seen.append(options)
        return real(AnalysisOptions(BEFORE, AFTER), **kwargs)

    monkeypatch.setattr(pipeline, "run_analysis", record)
    return seen


def test_cli_arguments_become_one_options_object(captured):
    result = CliRunner().invoke(
        app,
        ["analyze", str(BEFORE), str(AFTER), "--grads", str(GRADS), "-f", "e5m2", "-f", "E0M7",
         "--scaling", "block:32:rceil", "--rescale", "--grad-eps", "1e-6",
         "--strip-prefix", "model.", "--strip-prefix", "module.", "--include", "fc",
         "--exclude", "bias", "--chunk-size", "4096", "-j", "2", "-o", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert captured == [
        AnalysisOptions(
            before=BEFORE,
            after=AFTER,
            grads=GRADS,
            formats=("e5m2", "E0M7"),
            scaling="block:32:rceil",
            rescale=True,
            grad_eps=1e-6,
            strip_prefix=("model.", "module."),
            include="fc",
            exclude="bias",
            chunk_size=4096,
            threads=2,
        )
    ]


def test_cli_defaults_are_the_library_defaults(captured):
    assert CliRunner().invoke(app, ["analyze", str(BEFORE), str(AFTER)]).exit_code == 0
    assert captured == [AnalysisOptions(BEFORE, AFTER)]
    assert (
        analyze_cli.DEFAULT_CHUNK == DEFAULT_CHUNK
    )  # spelt in the CLI to keep torch out of --help


def test_analyze_is_run_analysis_on_the_same_options():
    kwargs = dict(grads=GRADS, formats=["e4m3fn", "e2m1fn"], strip_prefix=[], chunk_size=1000)
    library = render_json(analyze(BEFORE, AFTER, threads=1, **kwargs))
    direct = render_json(run_analysis(AnalysisOptions(BEFORE, AFTER, threads=1, **kwargs)))
    assert library == direct


def test_options_are_frozen_and_keep_tuples():
    options = AnalysisOptions("b", "a", formats=["e4m3fn"], strip_prefix=["m."])
    assert options.formats == ("e4m3fn",) and options.strip_prefix == ("m.",)
    assert hash(options) == hash(
        AnalysisOptions("b", "a", formats=("e4m3fn",), strip_prefix=("m.",))
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.rescale = True  # type: ignore[misc]
