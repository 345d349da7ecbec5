"""The stored-weights counterfactual (SPEC §Metrics `stored`): hand-computed cases, every e4m3fn
grid value against an exact brute-force reference, a Monte-Carlo check of stochastic rounding,
and the micro-benchmarks quoted in the bug reports that motivated it."""

from __future__ import annotations

import json
import math

import ml_dtypes
import numpy as np
import pytest
import torch
from reference import enumerate_grid, stored_reference
from safetensors.torch import load_file, save_file

from altgrad_cli import get_format, stored_weights, tensor_metrics
from altgrad_cli.engine.stored import StoredAccumulator, update_stored
from altgrad_cli.numerics.rounding import encode_scaled

STEP = 2.0**-7  # bf16's grid step on [1, 2)
HALF = 2.0**-8  # ... and on [1/2, 1)


def _one(before: float, after: float, fmt: str = "bf16", scale=None):
    b = torch.tensor([before], dtype=torch.float32)
    a = torch.tensor([after], dtype=torch.float32)
    return stored_weights(b, a, fmt, scale=scale, updated=torch.tensor([True]))


# ----------------------------------------------------------------------------- hand-computed


def test_below_half_a_step_is_lost_and_sr_moves_with_probability_delta_over_gap():
    up = _one(1.0, 1.0 + 2.0**-10)  # a quarter... an eighth of the step above 1.0
    assert (up.rne_moved, up.rne_lost_frac, up.lost_mass_frac) == (0, 1.0, 1.0)
    assert up.sr_expected_moved == 2.0**-10 / STEP == 0.125
    assert up.sr_moved_std == math.sqrt(0.125 * 0.875)
    down = _one(1.0, 1.0 - 2.0**-10)  # the step below 1.0 is half as wide
    assert down.rne_moved == 0
    assert down.sr_expected_moved == 2.0**-10 / HALF == 0.25


def test_exactly_half_a_step_ties_to_the_even_code():
    assert torch.tensor(1.0).to(torch.bfloat16).view(torch.int16).item() % 2 == 0
    even = _one(1.0, 1.0 + STEP / 2)  # 1.0 has an even code: the tie stays
    assert (even.rne_moved, even.lost_mass_frac, even.sr_expected_moved) == (0, 1.0, 0.5)
    odd = _one(1.0 + STEP, 1.0 + STEP + STEP / 2)  # 1 + 2^-7 has an odd code: the tie moves
    assert (odd.rne_moved, odd.lost_mass_frac, odd.sr_expected_moved) == (1, 0.0, 0.5)
    assert odd.sr_moved_std == 0.5


def test_more_than_one_step_always_moves():
    r = _one(1.0, 1.0 + 2.25 * STEP)
    assert (r.rne_moved, r.rne_lost_frac, r.lost_mass_frac) == (1, 0.0, 0.0)
    assert (r.sr_expected_moved, r.sr_moved_std) == (1.0, 0.0)
    # exactly onto the neighbour: on the grid, moved for sure
    r = _one(1.0, 1.0 + STEP)
    assert (r.rne_moved, r.sr_expected_moved, r.sr_moved_std) == (1, 1.0, 0.0)


def test_saturation_at_plus_and_minus_max():
    for sign in (1.0, -1.0):
        stuck = _one(sign * 448.0, sign * 458.0, "e4m3fn", scale=1.0)  # beyond max: stays at max
        assert (stuck.rne_moved, stuck.lost_mass_frac, stuck.sr_expected_moved) == (0, 1.0, 0.0)
        back = _one(sign * 448.0, sign * 438.0, "e4m3fn", scale=1.0)  # 10 of the 32 below max
        assert back.rne_moved == 0
        assert back.sr_expected_moved == 10 / 32
        onto = _one(sign * 416.0, sign * 456.0, "e4m3fn", scale=1.0)  # past max: saturates there
        assert (onto.rne_moved, onto.sr_expected_moved) == (1, 1.0)


def test_zero_weights():
    # e4m3fn's smallest subnormal is 2^-9: 2^-11 is a quarter of the way, either side of zero
    for delta in (2.0**-11, -(2.0**-11)):
        r = _one(0.0, delta, "e4m3fn", scale=1.0)
        assert (r.rne_moved, r.lost_mass_frac, r.sr_expected_moved) == (0, 1.0, 0.25)
    # bf16 has subnormals down to 2^-133: a 1e-3 step always moves a zero weight
    r = _one(0.0, 1e-3)
    assert (r.rne_moved, r.sr_expected_moved) == (1, 1.0)


def test_no_change_and_not_updated():
    b = torch.tensor([1.0, 1.0, 1.0])
    a = torch.tensor([1.0, 1.0 + 2 * STEP, 1.0 + 2 * STEP])
    r = stored_weights(b, a, "bf16", updated=torch.tensor([True, True, False]))
    # the unchanged updated element counts as an update that did not move; the third is left out
    assert (r.updates, r.rne_moved, r.rne_lost_frac, r.lost_mass_frac) == (2, 1, 0.5, 0.0)
    assert r.sr_expected_moved == 1.0
    default = stored_weights(b, a, "bf16")  # without a mask: the elements that changed
    assert (default.updates, default.rne_moved) == (2, 2)


def test_nan_and_inf_are_left_out_of_the_record():
    b = torch.tensor([1.0, float("nan"), 2.0, 1.0, 0.5])
    a = torch.tensor([1.0 + 2.0**-10, 1.0, float("inf"), 1.0 + 3 * STEP, 0.5 + 2.0**-11])
    g = torch.tensor([1.0, 1.0, 1.0, 1.0, float("nan")])
    record = tensor_metrics(b, a, g, [get_format("bf16")], "none")[0]["bf16"]
    assert record["updates"] == 2 and record["nonfinite"] == 3
    assert record["stored"] == {
        "rne_moved": 1,
        "rne_lost_frac": 0.5,
        "lost_mass_frac": 2.0**-10 / (2.0**-10 + 3 * STEP),
        "sr_expected_moved": 1.125,
        "sr_moved_std": math.sqrt(0.125 * 0.875),
    }


def test_nothing_updated_gives_zero_ratios():
    b = torch.ones(4)
    record = tensor_metrics(b, b.clone(), torch.zeros(4), [get_format("bf16")], "none")[0]["bf16"]
    assert record["stored"] == {
        "rne_moved": 0,
        "rne_lost_frac": 0.0,
        "lost_mass_frac": 0.0,
        "sr_expected_moved": 0.0,
        "sr_moved_std": 0.0,
    }


# ----------------------------------------------------------------------------- exhaustive

E4M3FN = get_format("e4m3fn")
E4M3FN_GRID = enumerate_grid(4, 3, 7, "fn")


def _assert_sums(acc: StoredAccumulator, ref: dict) -> None:
    assert acc.updates == ref["updates"]
    assert acc.rne_moved == ref["rne_moved"]
    assert acc.mass == pytest.approx(ref["mass"], rel=1e-12)
    assert acc.lost_mass == pytest.approx(ref["lost_mass"], rel=1e-12, abs=1e-300)
    assert acc.sr_expected == pytest.approx(ref["sr_expected"], rel=1e-9)
    assert acc.sr_variance == pytest.approx(ref["sr_variance"], rel=1e-9, abs=1e-9)


def _every_grid_value_with_steps(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Every signed e4m3fn grid value (times the scale) stepped by fractions of the local gaps:
    inside, at and past half a step, onto and past the neighbours, and beyond ±max."""
    g = np.concatenate([-E4M3FN_GRID[::-1], E4M3FN_GRID])
    gaps_up = np.diff(g, append=g[-1] + 32.0)
    gaps_down = np.diff(g, prepend=g[0] - 32.0)
    fractions = [0.0, 0.1, 0.25, 0.49, 0.5, 0.51, 0.75, 1.0, 1.5, 2.5, 40.0]
    before, after = [], []
    for f in fractions:
        for gap, sign in ((gaps_up, 1.0), (gaps_down, -1.0)):
            before.append(g * scale)
            after.append((g + sign * f * gap) * scale)
    b = np.concatenate(before).astype(np.float32)
    a = np.concatenate(after).astype(np.float32)
    return b, a


@pytest.mark.parametrize("scale", [1.0, 0.0123, 3.0], ids=["s=1", "s=0.0123", "s=3"])
def test_every_e4m3fn_grid_value_against_exact_reference(scale):
    b, a = _every_grid_value_with_steps(scale)
    s = torch.tensor(scale, dtype=torch.float32)
    bt, at = torch.from_numpy(b), torch.from_numpy(a)
    code = encode_scaled(bt / s, E4M3FN)
    acc = StoredAccumulator()
    update_stored(acc, E4M3FN, code, at.double() - bt.double(), s)
    _assert_sums(acc, stored_reference(b, a, np.float32(scale), E4M3FN_GRID))


def test_per_element_scales_and_masks_against_exact_reference():
    rng = np.random.default_rng(5)
    b = (rng.standard_normal(3000) * 0.02).astype(np.float32)
    a = (b + rng.standard_normal(3000) * 3e-4).astype(np.float32)
    s = np.exp2(rng.uniform(-12, -6, size=3000)).astype(np.float32) * np.float32(1.37)
    updated = rng.random(3000) < 0.8
    bt, at, st = (torch.from_numpy(x) for x in (b, a, s))
    acc = StoredAccumulator()
    update_stored(
        acc,
        E4M3FN,
        encode_scaled(bt / st, E4M3FN),
        at.double() - bt.double(),
        st,
        torch.from_numpy(updated),
    )
    _assert_sums(acc, stored_reference(b, a, s, E4M3FN_GRID, updated))


@pytest.mark.parametrize("scaling", ["none", "tensor", "channel", "block:8", "block:5:rceil"])
@pytest.mark.parametrize("fmt", ["e4m3fn", "e2m1fn", "E0M7", "bf16"])
def test_records_match_the_reference_for_every_scaling(fmt, scaling):
    from altgrad_cli import compute_scale

    rng = np.random.default_rng(11)
    b = (rng.standard_normal((12, 40)) * 0.05).astype(np.float32)
    b[0, :3] = 0.0
    a = (b + rng.standard_normal((12, 40)) * 2e-3 * (rng.random((12, 40)) < 0.7)).astype(np.float32)
    grad = (a != b).astype(np.float32)
    f = get_format(fmt)
    grid = enumerate_grid(f.exponent_bits, f.mantissa_bits, f.bias, f.specials)
    s = compute_scale(torch.from_numpy(b), f, scaling).broadcast().numpy()
    ref = stored_reference(b, a, s, grid, grad != 0)
    records, _ = tensor_metrics(
        torch.from_numpy(b), torch.from_numpy(a), torch.from_numpy(grad), [f], scaling, chunk=97
    )
    (record,) = (r["stored"] for r in records.values())  # keyed by the recipe's canonical name
    assert record["rne_moved"] == ref["rne_moved"]
    assert record["rne_lost_frac"] == pytest.approx(1 - ref["rne_moved"] / ref["updates"])
    assert record["lost_mass_frac"] == pytest.approx(ref["lost_mass"] / ref["mass"], rel=1e-12)
    assert record["sr_expected_moved"] == pytest.approx(ref["sr_expected"], rel=1e-9)
    assert record["sr_moved_std"] == pytest.approx(math.sqrt(ref["sr_variance"]), rel=1e-9)


def test_chunks_merge_to_the_whole():
    rng = np.random.default_rng(2)
    b = torch.from_numpy((rng.standard_normal(5000) * 0.02).astype(np.float32))
    a = b + torch.from_numpy((rng.standard_normal(5000) * 1e-4).astype(np.float32))
    g = torch.ones(5000)
    f = [get_format("bf16")]
    whole = tensor_metrics(b, a, g, f, "none", chunk=1 << 20)[0]["bf16"]["stored"]
    parts = tensor_metrics(b, a, g, f, "none", chunk=333)[0]["bf16"]["stored"]
    assert whole["rne_moved"] == parts["rne_moved"]
    for key in ("lost_mass_frac", "sr_expected_moved", "sr_moved_std"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)


# ----------------------------------------------------------------------------- Monte Carlo


def test_stochastic_rounding_simulated_on_a_million_elements():
    """Round y = (w + Δ)/s stochastically with a seeded generator, element by element in numpy
    over the enumerated grid, and count the weights that moved: within 4 σ of the expectation."""
    n = 1_000_000
    rng = np.random.default_rng(1234)
    b = (rng.standard_normal(n) * 0.02).astype(np.float32)
    a = (b + rng.standard_normal(n) * 3e-4).astype(np.float32)
    s = np.float32(np.abs(b).max() / np.float32(448.0))
    bt, at = torch.from_numpy(b), torch.from_numpy(a)
    r = stored_weights(bt, at, "e4m3fn", scale="tensor", updated=torch.ones(n, dtype=torch.bool))

    grid = np.concatenate([-E4M3FN_GRID[::-1], E4M3FN_GRID[1:]])
    yb = b / s
    w = ml_dtypes_round(yb)
    y = (w.astype(np.float64) * np.float64(s) + (a.astype(np.float64) - b)) / np.float64(s)
    y = np.clip(y, grid[0], grid[-1])
    hi_index = np.clip(np.searchsorted(grid, y, side="left"), 1, len(grid) - 1)
    lo, hi = grid[hi_index - 1], grid[hi_index]
    on_grid = hi == y
    up = rng.random(n) < (y - lo) / (hi - lo)
    stored_after = np.where(on_grid, y, np.where(up, hi, lo))
    moved = int(np.count_nonzero(stored_after != w))
    assert r.sr_moved_std > 10  # the check below has teeth
    assert abs(moved - r.sr_expected_moved) < 4 * r.sr_moved_std
    assert r.rne_moved < moved  # round-to-nearest moves fewer weights than SR here


def ml_dtypes_round(y: np.ndarray) -> np.ndarray:
    """R(y) on e4m3fn with saturation, by ml_dtypes' cast (round half to even)."""
    clipped = np.clip(y, -448.0, 448.0)
    return clipped.astype(ml_dtypes.float8_e4m3fn).astype(np.float64)


# ----------------------------------------------------------------------------- bug reports


def test_automodel_bf16_weight_one_never_moves_under_round_to_nearest():
    """NVIDIA-NeMo/Automodel#3875: a bf16 weight of 1.0, stored without a master copy, takes a
    constant update of 0.01 · lr with lr = 0.1, i.e. 1e-3 a step. bf16's grid step above 1.0 is
    2^-7 ≈ 0.0078, so 1e-3 is below half a step: round-to-nearest gives 1.0 back every time and
    100 steps leave it at 1.0, where fp32 would reach 1.1. Stochastic rounding moves it up one
    step with probability 1e-3 / 2^-7 = 0.128 a step: 0.1 in expectation after 100 steps."""
    update = np.float32(0.01 * 0.1)
    weight = torch.tensor([1.0], dtype=torch.bfloat16)
    sr_expected_gain = 0.0
    for _ in range(100):
        before = weight.float()
        after = before + torch.tensor([update])
        r = stored_weights(before, after, "bf16")
        assert (r.rne_moved, r.lost_mass_frac) == (0, 1.0)
        sr_expected_gain += r.sr_expected_moved * STEP
        weight = after.to(torch.bfloat16)  # what storing it in bf16 does: round to nearest
    assert weight.item() == 1.0
    delta = float((after - before).double())  # 1e-3 as float32 arithmetic gives it
    assert r.sr_expected_moved == delta / STEP == pytest.approx(0.128, rel=1e-4)
    assert sr_expected_gain == pytest.approx(100 * delta) == pytest.approx(0.1, rel=1e-4)  # kept


def test_ml_by_hand_768_weights_all_lost_in_bf16_all_kept_by_sr():
    """workofart/ml-by-hand#85: 768 weights of 1.0 (a LayerNorm gain), Adam with lr = 6e-4, so
    each step moves a weight by 6e-4 down to 0.9994 in fp32. In bf16 the neighbour below 1.0 is
    1 - 2^-8 = 0.99609375 and the midpoint 0.998046875, so 0.9994 rounds back to 1.0: 0 of 768
    weights move, every step, and after 100 steps still 0 of 768. Stochastic rounding moves each
    down with probability 6e-4 / 2^-8 = 0.1536 a step, so the whole update is kept in
    expectation (768 · 0.1536 · 2^-8 = 768 · 6e-4), and after 100 steps a weight has stayed put
    with probability (1 - 0.1536)^100 ≈ 5.5e-8: all 768 move in expectation."""
    before = torch.ones(768)
    after = before - torch.tensor(6e-4)
    assert after[0].item() == pytest.approx(0.9994)
    r = stored_weights(before, after, "bf16")
    assert (r.updates, r.rne_moved, r.rne_lost_frac, r.lost_mass_frac) == (768, 0, 1.0, 1.0)
    p = float(np.float64(np.float32(1.0) - np.float32(0.9994)) / 2.0**-8)  # Δ over the gap
    assert p == pytest.approx(0.1536, rel=1e-3)
    assert r.sr_expected_moved == pytest.approx(768 * p, rel=1e-12)
    assert r.sr_expected_moved * 2.0**-8 == pytest.approx(768 * 6e-4, rel=1e-3)  # mass kept
    never_moved = 768 * (1 - r.sr_expected_moved / 768) ** 100
    assert never_moved < 1e-4  # all 768 weights move in expectation over the 100 steps


# ----------------------------------------------------------------------------- the two engines


@pytest.mark.parametrize("fmt", ["bf16", "e4m3fn", "e2m1fn", "E0M7", "E7M0", "e5m2fnuz"])
@pytest.mark.parametrize("per_element", [False, True], ids=["one-scale", "per-element"])
def test_table_and_rounding_engines_agree(monkeypatch, fmt, per_element):
    """Formats beyond 2^16 codes round y by the float64 encoder instead of the per-code table:
    both paths, forced on the same data, give the same counts and (to float rounding) sums."""
    import altgrad_cli.engine.stored as stored

    f = get_format(fmt)
    rng = np.random.default_rng(3)
    b = torch.from_numpy((rng.standard_normal(20000) * 0.3).astype(np.float32))
    b[:50] = 0.0
    step = rng.standard_normal(20000) * np.exp2(rng.uniform(-14, 2, 20000))
    a = b + torch.from_numpy(step.astype(np.float32))
    s = (b.abs().max() / f.max) * (torch.rand(20000) + 0.5 if per_element else 1.0)
    code = encode_scaled(b / s, f)
    d = a.double() - b.double()
    table, rounding = StoredAccumulator(), StoredAccumulator()
    update_stored(table, f, code, d, s)
    monkeypatch.setattr(stored, "TABLE_LIMIT", 0)
    update_stored(rounding, f, code, d, s)
    assert 0 < table.rne_moved < table.updates
    assert (table.updates, table.rne_moved) == (rounding.updates, rounding.rne_moved)
    assert table.lost_mass == rounding.lost_mass
    assert table.sr_expected == pytest.approx(rounding.sr_expected, rel=1e-12)
    assert table.sr_variance == pytest.approx(rounding.sr_variance, rel=1e-12)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def norm_and_linear(tmp_path):
    """A LayerNorm gain at 1.0 taking 6e-4 steps (lost in bf16) and a linear weight whose
    1e-2 steps always move: before/after/grads files."""
    g = torch.Generator().manual_seed(0)
    before = {
        "norm.weight": torch.ones(768),
        "linear.weight": torch.randn(32, 24, generator=g) * 0.1,
    }
    grads = {k: torch.ones_like(v) for k, v in before.items()}
    after = {"norm.weight": before["norm.weight"] - 6e-4}
    after["linear.weight"] = before["linear.weight"] + 0.01 * before["linear.weight"].sign()
    paths = []
    for label, tensors in (("before", before), ("after", after), ("grads", grads)):
        path = tmp_path / f"{label}.safetensors"
        save_file(tensors, str(path))
        paths.append(path)
    return paths


def _analyze(*args):
    from typer.testing import CliRunner

    from altgrad_cli.cli.app import app

    return CliRunner().invoke(app, ["analyze", *map(str, args)], env={"COLUMNS": "200"})


def test_cli_json_summary_recomputes_ratios_and_validates(norm_and_linear):
    import jsonschema

    from altgrad_cli.report.schema import report_schema

    b, a, g = norm_and_linear
    result = _analyze(b, a, "--grads", g, "-f", "bf16", "--scaling", "none", "-o", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    jsonschema.validate(report, report_schema())
    layers = {layer["name"]: layer["stored"] for layer in report["layers"]}
    assert layers["norm.weight"]["rne_moved"] == 0
    assert layers["norm.weight"]["lost_mass_frac"] == 1.0
    assert layers["linear.weight"]["rne_moved"] == 32 * 24
    assert layers["linear.weight"]["lost_mass_frac"] == 0.0
    summary = report["summary"][0]["stored"]
    assert summary["rne_moved"] == 768
    assert summary["rne_lost_frac"] == 0.5  # 768 of 1536 updates: the sums, not a mean of ratios
    before, after = load_file(str(b)), load_file(str(a))
    mass = {k: float((after[k].double() - before[k].double()).abs().sum()) for k in before}
    assert summary["lost_mass_frac"] == pytest.approx(
        mass["norm.weight"] / (mass["norm.weight"] + mass["linear.weight"]), rel=1e-12
    )
    assert summary["lost_mass_frac"] == pytest.approx(0.0566, abs=1e-4)
    delta = float(np.float32(1.0) - np.float32(1.0 - 6e-4))
    assert summary["sr_expected_moved"] == pytest.approx(768 * delta / 2.0**-8 + 768, rel=1e-9)


def test_cli_fail_if_on_the_stored_group(norm_and_linear):
    b, a, g = norm_and_linear
    result = _analyze(
        b,
        a,
        "--grads",
        g,
        "-f",
        "bf16",
        "--scaling",
        "none",
        "--fail-if",
        "stored.lost_mass_frac > 0.5",
        "-o",
        "json",
    )
    assert result.exit_code == 1
    failed = [c for c in json.loads(result.stdout)["checks"]["results"] if c["status"] == "fail"]
    assert [c["target"] for c in failed] == ["norm.weight"]
    ok = _analyze(
        b,
        a,
        "--grads",
        g,
        "-f",
        "bf16",
        "--scaling",
        "none",
        "--fail-if",
        "summary.stored.rne_moved < 1",
    )
    assert ok.exit_code == 0, ok.output


def test_cli_table_shows_the_kept_table_and_the_verdict(norm_and_linear):
    b, a, g = norm_and_linear
    result = _analyze(b, a, "--grads", g, "-f", "bf16", "--scaling", "none")
    assert result.exit_code == 0, result.output
    assert "Kept in bf16 without a master copy" in result.stdout
    text = " ".join(result.stdout.split())  # rich wraps the line at the console width
    # 768 · 6e-4 of 768 · (6e-4 + 1e-2) is lost; SR moves the 768 linear weights and each gain
    # with P = 6e-4 / 2^-8 = 0.1536: 768 + 118 = 886, std sqrt(768 · 0.1536 · 0.8464) = 10.0
    assert (
        "bf16 without a master copy would lose 5.7 % of this step's update mass "
        "(round-to-nearest moves 768 of 1,536 updated weights); stochastic rounding would keep "
        "it in expectation (moving 886 ± 10.0 of them)" in text
    )


def test_every_kept_column_names_a_field():
    from altgrad_cli.report.records import LayerRecord
    from altgrad_cli.report.render.stored import STORED_COLUMNS
    from altgrad_cli.report.schema import field_paths

    paths = field_paths(LayerRecord)
    assert all(key in paths for _, key in STORED_COLUMNS)
    assert {f"stored.{k}" for k in ("rne_moved", "sr_expected_moved", "sr_moved_std")} <= paths
