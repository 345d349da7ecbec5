"""`altgrad_cli.analyze()` inside a training loop: state dicts instead of files, one format name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from altgrad_cli import AltgradError, analyze
from altgrad_cli.report.render.json_out import render_json


def _step():
    g = torch.Generator().manual_seed(3)
    before = {"w": torch.randn(64, 32, generator=g) * 0.02, "b": torch.randn(32, generator=g)}
    after = {k: v + torch.randn(v.shape, generator=g) * 1e-3 for k, v in before.items()}
    grads = {k: torch.randn(v.shape, generator=g) for k, v in before.items()}
    return before, after, grads


def test_state_dicts_give_the_same_numbers_as_files(tmp_path: Path):
    before, after, grads = _step()
    paths = {}
    for role, state in (("before", before), ("after", after), ("grads", grads)):
        paths[role] = tmp_path / f"{role}.safetensors"
        save_file(state, str(paths[role]))
    from_files = analyze(paths["before"], paths["after"], grads=paths["grads"], formats="e4m3fn")
    in_memory = analyze(before, after, grads=grads, formats="e4m3fn")
    assert in_memory.layers == from_files.layers and in_memory.summary == from_files.summary
    assert in_memory.inputs.before == "<before state dict>"
    assert in_memory.inputs.grads == "<grads state dict>"
    assert '"format": "e4m3fn"' in render_json(in_memory)


def test_a_single_format_name_is_one_format():
    before, after, _ = _step()
    report = analyze(before, after, formats="e2m1fn")
    assert report.options.formats == ("e2m1fn",)
    assert {layer.format for layer in report.layers} == {"e2m1fn"}


def test_a_state_dict_of_non_tensors_is_an_input_error():
    with pytest.raises(AltgradError, match="not a state dict"):
        analyze({"w": [1.0, 2.0]}, {"w": [1.0, 2.0]})


def test_progress_names_the_tensor_being_analysed():
    before, after, _ = _step()
    calls = []
    analyze(before, after, progress=lambda done, total, name: calls.append((done, total, name)))
    assert calls == [(0, 2, "b"), (1, 2, "w"), (2, 2, "done")]
