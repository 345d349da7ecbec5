"""The seed functions and the CLI give the same numbers on the same tensors, and both equal
independent references (numpy ordinals, ml_dtypes rounding, numpy frexp and corrcoef).

The tensors are shaped and moved like a real step: a 4096 × 1024 float32 projection after one
AdamW step (lr 1e-3, so every weight below 1e-3 in magnitude crosses zero), a tensor whose
updates cross binade edges, one whose weights all cross zero, and a bf16-stored weight.
"""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from altgrad_cli import (
    analyze,
    compute_scale,
    compute_stiffness_field,
    compute_ulp_distance,
    get_format,
    gradient_stiffness_correlation,
    grid_alignment_error,
    grid_alignment_statistics,
    ulp_statistics,
)
from altgrad_cli.training import seed

LR, WD, EPS = 1e-3, 0.01, 1e-8
NAMES = ["proj.weight", "edge.weight", "zero.weight", "bf16.weight"]
CASES = [
    ("proj.weight", "e4m3fn"),
    ("edge.weight", "e5m2"),
    ("edge.weight", "bf16"),
    ("zero.weight", "e4m3fn"),
    ("bf16.weight", "bf16"),
    ("bf16.weight", "e5m2"),
]


def _adamw_step(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The first AdamW step: m̂ = g, v̂ = g², so the update is lr·(g/(|g| + eps) + wd·w)."""
    return w - LR * (g / (g.abs() + EPS) + WD * w)


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """before/after/grads tensors and the safetensors files holding them."""
    gen = torch.Generator().manual_seed(12)
    before, after, grads = {}, {}, {}

    w = torch.randn(4096, 1024, generator=gen) * 0.02
    w[0, :16] = 0.0  # zero weights: stiffness undefined there
    g = torch.randn(4096, 1024, generator=gen) * 1e-3
    before["proj.weight"], after["proj.weight"], grads["proj.weight"] = w, _adamw_step(w, g), g

    # every update crosses a binade edge: 2^e (1 - j 2^-24) -> 2^e (1 + k 2^-23)
    edge = torch.exp2(torch.randint(-12, 4, (256, 256), generator=gen).float())
    edge *= torch.where(torch.rand(256, 256, generator=gen) < 0.5, -1.0, 1.0)
    j = torch.randint(1, 300, (256, 256), generator=gen).float()
    k = torch.randint(0, 300, (256, 256), generator=gen).float()
    before["edge.weight"] = edge * (1 - j * 2.0**-24)
    after["edge.weight"] = edge * (1 + k * 2.0**-23)
    grads["edge.weight"] = after["edge.weight"] - before["edge.weight"]

    # every weight crosses zero (a few stay at 0)
    z = (torch.rand(512, 512, generator=gen) * 2 - 1) * 1e-3
    z[:2] = 0.0
    before["zero.weight"], after["zero.weight"] = z, -z * 0.5
    grads["zero.weight"] = z

    # bf16 storage, as mixed-precision checkpoints keep it
    wb = (torch.randn(1024, 1024, generator=gen) * 0.02).to(torch.bfloat16)
    gb = (torch.randn(1024, 1024, generator=gen) * 1e-3).to(torch.bfloat16)
    before["bf16.weight"], grads["bf16.weight"] = wb, gb
    after["bf16.weight"] = _adamw_step(wb.float(), gb.float()).to(torch.bfloat16)

    root = tmp_path_factory.mktemp("step")
    paths = {}
    for side, tensors in (("before", before), ("after", after), ("grads", grads)):
        paths[side] = str(root / f"{side}.safetensors")
        save_file({n: t.contiguous() for n, t in tensors.items()}, paths[side])
    return before, after, grads, paths


def _layers(report_dict: dict) -> dict[tuple[str, str], dict]:
    return {(r["name"], r["format"]): r for r in report_dict["layers"]}


@pytest.fixture(scope="module")
def unscaled(step):
    """`analyze` at s = 1 (`--scaling none`), the seed's default scale."""
    _, _, _, paths = step
    layers = {}
    for name in NAMES:  # only the formats each tensor's cases need: the 4096 × 1024 one is costly
        report = analyze(
            paths["before"],
            paths["after"],
            grads=paths["grads"],
            formats=sorted({fmt for n, fmt in CASES if n == name} | {"e4m3fn"}),
            scaling="none",
            include=f"^{name}$",
        )
        # recorded as FORMAT@none (a recipe's canonical name): keyed here by the format
        unscaled = _layers(report.to_dict()).items()
        layers.update({(n, fmt.removesuffix("@none")): r for (n, fmt), r in unscaled})
    return layers


@pytest.fixture(scope="module")
def cli_tensor_scaled(step):
    """The CLI's JSON under tensor scaling, through the console entry point."""
    _, _, _, paths = step
    cmd = [sys.executable, "-m", "altgrad_cli", "analyze", paths["before"], paths["after"]]
    cmd += ["--grads", paths["grads"], "-f", "e4m3fn", "--scaling", "tensor", "--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return _layers(json.loads(out))


# ----------------------------------------------------------------------------- library == CLI


@pytest.mark.parametrize("name", NAMES)
def test_ulp_statistics_equal_the_cli(step, unscaled, cli_tensor_scaled, name):
    before, after, _, _ = step
    got = ulp_statistics(before[name], after[name])
    for record in (unscaled[(name, "e4m3fn")], cli_tensor_scaled[(name, "e4m3fn")]):
        seed_keys = ("mean", "median", "max", "zero_frac")  # the seed's four statistics
        assert got == {f"ulp_{key}": record["ulp"][key] for key in seed_keys}


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_unscaled_grid_stiffness_and_correlation_equal_the_cli(step, unscaled, name, fmt):
    before, _, grads, _ = step
    record = unscaled[(name, fmt)]
    grid = record["grid_alignment"]
    assert grid_alignment_statistics(before[name], fmt) == {
        "grid_error_mean": grid["mean"],
        "grid_error_max": grid["max"],
        "grid_error_std": grid["std"],
        "on_grid_frac": grid["on_grid_frac"],
    }
    gs = record["grad_stiffness"]
    assert gradient_stiffness_correlation(before[name], grads[name], fmt) == {
        "grad_stiff_correlation": gs["correlation"],
        "grad_stiff_ratio_mean": gs["ratio_mean"],
        "grad_below_stiffness_frac": gs["below_frac"],
    }
    field = compute_stiffness_field(before[name], fmt)
    _assert_stiffness_matches(field, record["stiffness"])


@pytest.mark.parametrize("name", NAMES)
def test_tensor_scaled_grid_and_stiffness_equal_the_cli_json(step, cli_tensor_scaled, name):
    before, _, _, _ = step
    record = cli_tensor_scaled[(name, "e4m3fn")]
    scale = compute_scale(before[name], "e4m3fn", "tensor")
    assert float(scale.values) == record["scale"]["value"]
    grid = record["grid_alignment"]
    assert grid_alignment_statistics(before[name], "e4m3fn", scale) == {
        "grid_error_mean": grid["mean"],
        "grid_error_max": grid["max"],
        "grid_error_std": grid["std"],
        "on_grid_frac": grid["on_grid_frac"],
    }
    if name != "proj.weight":  # the same scale as a plain number gives the same numbers
        as_number = grid_alignment_statistics(before[name], "e4m3fn", float(scale.values))
        assert as_number == grid_alignment_statistics(before[name], "e4m3fn", scale)
    # S = s · P(w / s): the seed's field of the scaled weights, times s
    y = before[name].float() / scale.values
    _assert_stiffness_matches(
        compute_stiffness_field(y, "e4m3fn") * float(scale.values), record["stiffness"]
    )


@pytest.mark.parametrize("scaling", ["block:32", "channel"])
def test_grouped_scales_equal_the_cli(step, scaling):
    before, _, _, paths = step
    name = "edge.weight"
    report = analyze(
        paths["before"], paths["after"], formats=["e4m3fn"], scaling=scaling, include=name
    )
    grid = report.to_dict()["layers"][0]["grid_alignment"]
    scale = compute_scale(before[name], "e4m3fn", scaling)
    assert grid_alignment_statistics(before[name], "e4m3fn", scale) == {
        "grid_error_mean": grid["mean"],
        "grid_error_max": grid["max"],
        "grid_error_std": grid["std"],
        "on_grid_frac": grid["on_grid_frac"],
    }
    per_element = grid_alignment_error(before[name], "e4m3fn", scale)
    assert float(per_element.max()) == grid["max"]
    assert float((per_element == 0).double().mean()) == grid["on_grid_frac"]


def _assert_stiffness_matches(field: torch.Tensor, stiffness: dict) -> None:
    """The per-element field against the CLI's stiffness record: min, max and the histogram of
    floor(log2 S) exactly (S is a power of two times s), the mean to float rounding."""
    defined = field[~torch.isnan(field)].to(torch.float64)
    assert stiffness["min"] == float(defined.min()) and stiffness["max"] == float(defined.max())
    assert stiffness["mean"] == pytest.approx(float(defined.mean()), rel=1e-12)
    exponents = torch.frexp(defined)[1].to(torch.int64) - 1
    low = int(exponents.min())
    counts = torch.bincount(exponents - low).tolist()
    want = {str(low + i): c for i, c in enumerate(counts) if c}
    zeros = int(torch.isnan(field).sum())
    if zeros:
        want["zero"] = zeros
    assert stiffness["histogram"] == want


# ----------------------------------------------------------------------------- independent references


def _ordinals(x: torch.Tensor) -> np.ndarray:
    """Signed ordinals of float32 or bf16 values, from their bit patterns in numpy."""
    if x.dtype == torch.bfloat16:
        bits = x.view(torch.int16).numpy().astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)
    bits = x.numpy().view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


@pytest.mark.parametrize("name", NAMES)
def test_ulp_against_numpy_ordinals(step, name):
    before, after, _, _ = step
    want = np.abs(_ordinals(after[name]) - _ordinals(before[name])).reshape(-1)
    got = compute_ulp_distance(before[name], after[name])
    assert got.dtype == torch.float64 and got.shape == before[name].shape
    assert np.array_equal(got.numpy().reshape(-1), want.astype(np.float64))
    stats = ulp_statistics(before[name], after[name])
    assert stats["ulp_max"] == int(want.max())
    assert stats["ulp_mean"] == pytest.approx(want.mean(), rel=1e-15)
    assert stats["ulp_zero_frac"] == (want == 0).mean()
    rank = (want.size + 1) // 2 - 1  # the lower median
    median = int(np.partition(want, rank)[rank])
    if median <= 255:  # SPEC: exact there, within 1 % above
        assert stats["ulp_median"] == median
    else:
        assert stats["ulp_median"] == pytest.approx(median, rel=0.01)


def test_ordinals_equal_the_nextafter_ratio_inside_a_binade(step):
    before, after, _, _ = step
    b, a = before["proj.weight"].numpy(), after["proj.weight"].numpy()
    _, eb = np.frexp(b)
    _, ea = np.frexp(a)
    same = (eb == ea) & (np.sign(a) == np.sign(b)) & (b != 0)
    assert same.mean() > 0.5  # most of a real step stays in its binade
    ulp = np.abs(np.nextafter(b, np.float32(np.inf)) - b).astype(np.float64)
    ratio = np.abs(a.astype(np.float64) - b) / ulp
    d = compute_ulp_distance(before["proj.weight"], after["proj.weight"]).numpy()
    assert np.array_equal(d[same], ratio[same])
    assert not np.array_equal(d[~same], ratio[~same])  # across binades and zero it must not be


def test_the_issue_cases_across_a_binade_and_across_zero():
    below_one, above_one = torch.full((3,), 1 - 2**-24), torch.full((3,), 1 + 2**-23)
    assert ulp_statistics(below_one, above_one)["ulp_median"] == 2  # was 3, the ratio
    stats = ulp_statistics(torch.tensor([-1e-30]), torch.tensor([1e-30]))
    assert stats["ulp_max"] == 2 * 228737632 == 457475264  # was 21,267,648
    assert compute_ulp_distance(torch.tensor([-1e-30]), torch.tensor([1e-30])).item() == 457475264


def test_the_docstring_examples_run():
    result = doctest.testmod(seed)
    assert result.attempted >= 3 and result.failed == 0


@pytest.mark.parametrize("name", ["proj.weight", "edge.weight", "bf16.weight"])
def test_grid_alignment_against_ml_dtypes(step, name):
    w = step[0][name].float()
    scale = compute_scale(w, "e4m3fn", "tensor")
    s = np.float32(scale.values)
    y = w.numpy() / s  # a true float32 division, as the SPEC says
    q = np.clip(y, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    want = np.abs(np.abs(w.numpy().astype(np.float64)) - np.abs(q) * np.float64(s))
    got = grid_alignment_error(w, "e4m3fn", scale)
    assert got.dtype == torch.float64 and np.array_equal(got.numpy(), want)
    stats = grid_alignment_statistics(w, "e4m3fn", scale)
    assert stats["grid_error_max"] == want.max()
    assert stats["on_grid_frac"] == (want == 0).mean()
    assert stats["grid_error_mean"] == pytest.approx(want.mean(), rel=1e-12)
    assert stats["grid_error_std"] == pytest.approx(want.std(ddof=1), rel=1e-9)


@pytest.mark.parametrize(("name", "fmt_name"), [("proj.weight", "e4m3fn"), ("bf16.weight", "e5m2")])
def test_stiffness_and_correlation_against_numpy(step, name, fmt_name):
    fmt = get_format(fmt_name)
    w = step[0][name].float().numpy().reshape(-1).astype(np.float64)
    g = np.abs(step[2][name].float().numpy().reshape(-1).astype(np.float64))
    nz = w != 0
    e = np.frexp(np.abs(w[nz]))[1] - 1
    stiff = np.exp2(np.clip(e, fmt.emin, fmt.emax) - fmt.mantissa_bits)
    field = compute_stiffness_field(step[0][name], fmt).numpy().reshape(-1)
    assert np.isnan(field[~nz]).all() and np.array_equal(field[nz], stiff)
    got = gradient_stiffness_correlation(step[0][name], step[2][name], fmt)
    assert got["grad_stiff_correlation"] == pytest.approx(
        np.corrcoef(stiff, g[nz])[0, 1], abs=1e-12
    )
    assert got["grad_stiff_ratio_mean"] == pytest.approx((g[nz] / stiff).mean(), rel=1e-12)
    assert got["grad_below_stiffness_frac"] == (g[nz] < stiff).mean()


# ----------------------------------------------------------------------------- edges


def test_scaled_grid_error_is_exact_where_float32_is_not():
    # s·R(w/s) needs more than 24 bits for a scale that is not a power of two
    w, s = torch.tensor([0.3, 1000.0]), 0.7
    q = np.clip(np.float32(w.numpy() / np.float32(s)), -448, 448)
    grid = q.astype(ml_dtypes.float8_e4m3fn).astype(np.float64) * np.float64(np.float32(s))
    want = np.abs(w.numpy().astype(np.float64) - grid)
    assert np.array_equal(grid_alignment_error(w, "e4m3fn", s).numpy(), want)


def test_per_channel_and_per_element_scales():
    torch.manual_seed(1)
    w = torch.randn(8, 16)
    channel = compute_scale(w, "e4m3fn", "channel")
    as_column = channel.values.reshape(8, 1)
    assert grid_alignment_statistics(w, "e4m3fn", as_column) == grid_alignment_statistics(
        w, "e4m3fn", channel
    )
    per_element = as_column.expand(8, 16) * torch.linspace(1, 2, 16)
    want = (w.numpy() / per_element.numpy()).clip(-448, 448).astype(ml_dtypes.float8_e4m3fn)
    want = np.abs(
        np.abs(w.numpy().astype(np.float64))
        - np.abs(want.astype(np.float64)) * per_element.numpy().astype(np.float64)
    )
    assert np.array_equal(grid_alignment_error(w, "e4m3fn", per_element).numpy(), want)
    stats = grid_alignment_statistics(w, "e4m3fn", per_element)
    assert stats["grid_error_max"] == want.max() and stats["on_grid_frac"] == (want == 0).mean()


def test_non_finite_and_bad_inputs_fail_closed():
    w = torch.tensor([1.0, math.inf, math.nan, 0.0])
    assert torch.isnan(compute_stiffness_field(w, "e4m3fn")[1:]).all()
    assert torch.isnan(grid_alignment_error(w, "e4m3fn")[1:3]).all()
    d = compute_ulp_distance(w, torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert d[0] == 0 and torch.isnan(d[1:3]).all() and d[3] == 0x3F800000
    assert ulp_statistics(w, w)["ulp_zero_frac"] == 1.0  # the finite two, both unmoved
    with pytest.raises(ValueError, match="finite and positive"):
        grid_alignment_statistics(w, "e4m3fn", 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        ulp_statistics(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="floating"):
        compute_ulp_distance(torch.ones(3, dtype=torch.int32), torch.ones(3, dtype=torch.int32))


def test_mixed_storage_dtypes_compare_in_the_wider_one():
    b = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    a = torch.tensor([1.0 + 2**-23, 2.0])
    assert compute_ulp_distance(b, a).tolist() == [1.0, 0.0]  # float32 ULPs


def test_the_seeds_int_m_is_the_engines_s_where_no_clamp_bites(step):
    # e8m3:ieee covers every normal float32 exponent, so its clamp never bites on these weights: the
    # seed's unclamped int-M path and the engine's format path must agree
    w, g = step[0]["bf16.weight"].float(), step[2]["bf16.weight"].float()
    assert torch.equal(compute_stiffness_field(w, 3), compute_stiffness_field(w, "e8m3:ieee"))
    by_int = gradient_stiffness_correlation(w, g, 3)
    by_format = gradient_stiffness_correlation(w, g, "e8m3:ieee")
    assert by_int["grad_below_stiffness_frac"] == by_format["grad_below_stiffness_frac"]
    for key in ("grad_stiff_correlation", "grad_stiff_ratio_mean"):
        assert by_int[key] == pytest.approx(by_format[key], rel=1e-9)
