"""The what-if table: recipes side by side per tensor group and over all tensors, best marked.

A group pools its tensors' counts. The reference is the same step analysed as one tensor made of
the group's tensors stacked: under scalings that do not depend on the tensor (no scale, 1-D blocks
that the stacking keeps whole) its summary must equal the group's pooled numbers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli import analyze
from altgrad_cli.cli.app import app
from altgrad_cli.report.render.whatif import (
    BEST,
    WHAT_IF_ROWS,
    _marked,
    tensor_group,
    what_if_cells,
    what_if_groups,
)

RECIPES = ["bf16", "mxfp4", "e4m3fn@none"]


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.layers.0.mlp.up_proj.weight", "model.layers.*.mlp.up_proj.weight"),
        ("model.layers.31.mlp.up_proj.weight", "model.layers.*.mlp.up_proj.weight"),
        ("h.12.attn.c_attn.weight", "h.*.attn.c_attn.weight"),
        ("blocks.3.7.weight", "blocks.*.*.weight"),
        ("0.weight", "*.weight"),
        ("encoder.layer.10", "encoder.layer.*"),
        ("layer0.weight", "layer0.weight"),  # digits inside a part are part of the name
        ("fc1.weight", "fc1.weight"),
        ("embed.2x.bias", "embed.2x.bias"),
    ],
)
def test_tensor_group_replaces_numeric_parts(name, group):
    assert tensor_group(name) == group


def _step():
    g = torch.Generator().manual_seed(11)
    before = {
        "layers.0.w": torch.randn(8, 64, generator=g) * 0.02,
        "layers.1.w": torch.randn(24, 64, generator=g) * 0.5,  # another magnitude: pooled ≠ mean
        "head.w": torch.randn(4, 64, generator=g),
        "frozen.b": torch.randn(32, generator=g),
    }
    before["layers.1.w"][0, :32] = 1e-9  # a block deep in the dead zone
    after = {k: v + torch.randn(v.shape, generator=g) * 2e-3 for k, v in before.items()}
    after["frozen.b"] = before["frozen.b"].clone()
    grads = {k: torch.randn(v.shape, generator=g) for k, v in before.items()}
    grads["frozen.b"].zero_()  # no update: its stall ratio is not defined
    return before, after, grads


def test_group_numbers_are_the_stacked_tensors_numbers():
    before, after, grads = _step()
    report = analyze(before, after, grads=grads, formats=RECIPES)
    groups = what_if_groups(report)
    assert [(g.name, g.tensors) for g in groups] == [
        ("frozen.b", 1),
        ("head.w", 1),
        ("layers.*.w", 2),
    ]
    layers = groups[2]
    stack = lambda d: {"w": torch.cat([d["layers.0.w"], d["layers.1.w"]])}  # noqa: E731
    reference = analyze(stack(before), stack(after), grads=stack(grads), formats=RECIPES)
    for i, (label, get, _) in enumerate(WHAT_IF_ROWS):
        for j, summary in enumerate(reference.summary):
            expected, got = get(summary.metrics), layers.values[i][j]
            if expected is None:
                assert got is None, (label, summary.format)
            else:
                assert got == pytest.approx(expected, rel=1e-12, abs=0), (label, summary.format)
    clipped = WHAT_IF_ROWS.index(next(r for r in WHAT_IF_ROWS if r[0] == "clipped blocks"))
    assert layers.values[clipped][0] is None and layers.values[clipped][1] is not None
    dead = WHAT_IF_ROWS.index(next(r for r in WHAT_IF_ROWS if r[0] == "dead zone"))
    assert layers.values[dead][1] > 0  # the 1e-9 block rounds to 0 under MX scales


def test_a_group_without_updates_has_no_stall_ratio_and_no_mark():
    before, after, grads = _step()
    report = analyze(before, after, grads=grads, formats=RECIPES)
    frozen = what_if_groups(report)[0]
    assert frozen.values[0] == [None, None, None]
    assert frozen.cells()[0] == ["–", "–", "–"]
    assert frozen.values[1] == [0.0, 0.0, 0.0]  # flip rate: defined, all tie, so no mark
    assert not any(BEST in cell for cell in frozen.cells()[1])


def test_marks_go_to_the_best_value_in_the_direction_of_the_row():
    assert _marked([0.5, 0.25, None], lower_is_better=True) == ["0.5000", f"{BEST} 0.2500", "–"]
    assert _marked([0.5, 0.25], lower_is_better=False) == [f"{BEST} 0.5000", "0.2500"]
    assert _marked([0.1, 0.1, 0.2], lower_is_better=True) == [
        f"{BEST} 0.1000",
        f"{BEST} 0.1000",
        "0.2000",
    ]
    assert not any(BEST in c for c in _marked([0.3, 0.3], lower_is_better=True))
    assert _marked([None, None], lower_is_better=True) == ["–", "–"]
    cells = _marked([2e-5, 0.5], lower_is_better=True)  # one style across the row
    assert cells == [f"{BEST} 2.000e-05", "5.000e-01"]


def test_summary_what_if_uses_the_summary_records():
    before, after, grads = _step()
    report = analyze(before, after, grads=grads, formats=RECIPES)
    labels, recipes, cells = what_if_cells(report)
    assert recipes == ["bf16", "e2m1fn@block:32:floor", "e4m3fn@none"]
    assert [label[0] for label in labels] == [row[0] for row in WHAT_IF_ROWS]
    stall = [s.metrics.stall_ratio for s in report.summary]
    assert cells[0] == _marked(stall, lower_is_better=True)


def test_the_table_shows_the_groups_at_80_columns(tmp_path):
    before, after, grads = _step()
    paths = []
    for role, state in (("b", before), ("a", after), ("g", grads)):
        paths.append(tmp_path / f"{role}.safetensors")
        save_file(state, str(paths[-1]))
    args = ["analyze", *map(str, paths[:2]), "--grads", str(paths[2])]
    for recipe in RECIPES:
        args += ["-f", recipe]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "per tensor group" in text and "all tensors" in text
    assert "layers.*.w" in text and "(2 tensors)" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    single = CliRunner().invoke(app, [*args[:5], "-f", "e4m3fn", "-f", "mxfp4"], env={})
    assert "per tensor group" in single.stdout  # two recipes: the table is there
    one = CliRunner().invoke(app, [*args[:5], "-f", "e4m3fn"], env={})
    assert "What if" not in one.stdout  # one recipe: nothing to compare


def test_recipes_that_do_not_fit_go_on_in_another_table_never_dropped(tmp_path):
    """A ★ must never point at a comparison the reader cannot see: at 80 columns the recipe
    columns that do not fit continue in further tables, each recipe shown once per table kind."""
    before, after, grads = _step()
    paths = []
    for role, state in (("b", before), ("a", after), ("g", grads)):
        paths.append(tmp_path / f"{role}.safetensors")
        save_file(state, str(paths[-1]))
    recipes = ["mxfp8", "mxfp4", "nvfp4", "e2m1fn@block:32:rceil"]
    args = ["analyze", *map(str, paths[:2]), "--grads", str(paths[2])]
    for recipe in recipes:
        args += ["-f", recipe]
    text = CliRunner().invoke(app, args, env={"COLUMNS": "80"}).stdout
    assert max(len(line) for line in text.splitlines()) <= 80
    names = ["e4m3fn@block:32:floor", "e2m1fn@block:32:floor", "e2m1fn@nvfp4"]
    names.append("e2m1fn@block:32:rceil")
    overall = text[text.index("What if: recipes side by side, all tensors") :]
    for name in names:
        assert f"┃ {name}" in overall or f" {name} ┃" in overall, name
    assert "of 4" in overall  # the split is said in the title
    wide = CliRunner().invoke(app, args, env={"COLUMNS": "250"}).stdout
    assert "of 4" not in wide  # everything fits: one table each
