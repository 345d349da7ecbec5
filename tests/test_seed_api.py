"""Every test case named in the two seed plans, against our import path."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from altgrad_cli import (
    E0M7,
    E4M3,
    E5M2,
    WeightFlipTracker,
    compute_stall_ratio,
    compute_stiffness_field,
    compute_ulp_distance,
    gradient_stiffness_correlation,
    grid_alignment_error,
    grid_alignment_statistics,
    ulp_statistics,
)
from altgrad_cli.training import seed as diagnostics

ONE = torch.tensor(1.0)

# --------------------------------------------------------------- seed 000: stall ratio and updates


def test_compute_stall_ratio_basic():
    assert compute_stall_ratio(10, 100) == 0.9
    assert compute_stall_ratio(100, 100) == 0.0
    assert compute_stall_ratio(0, 100) == 1.0
    assert compute_stall_ratio(0, 0) == 0.0


def test_tracker_update_counts():
    tracker = WeightFlipTracker()
    grad = torch.zeros(100)
    grad[:50] = 0.5
    tracker.snapshot_pre_step("layer1", torch.randn(100), E5M2, ONE, grad=grad)
    assert tracker.get_update_counts() == {"layer1": 50}


def test_tracker_stall_ratios():
    tracker = WeightFlipTracker()
    weight = torch.ones(100)
    grad = torch.zeros(100)
    grad[:40] = 1.0  # 40 attempted updates
    tracker.snapshot_pre_step("layer1", weight, E5M2, ONE, grad=grad)
    new = weight.clone()
    new[:10] = 2.0  # 10 of them move a whole grid step: flips
    new[10:40] = 1.01  # 30 move less than half a step (E5M2 step at 1 is 0.25): stalls
    assert tracker.compute_flips_post_step("layer1", new, E5M2, ONE) == 10
    assert tracker.get_stall_ratios() == {"layer1": pytest.approx(0.75)}
    assert tracker.get_flip_counts() == {"layer1": 10}
    assert tracker.get_flip_rates() == {"layer1": 0.1}


def test_tracker_stall_ratio_no_updates():
    tracker = WeightFlipTracker()
    tracker.snapshot_pre_step("layer1", torch.randn(10), E4M3, ONE, grad=torch.zeros(10))
    tracker.compute_flips_post_step("layer1", torch.randn(10), E4M3, ONE)
    ratio = tracker.get_stall_ratios()["layer1"]
    assert ratio == 0.0 and not math.isnan(ratio)


def test_tracker_reset_clears_updates():
    tracker = WeightFlipTracker()
    tracker.snapshot_pre_step("layer1", torch.randn(10), E4M3, ONE, grad=torch.ones(10))
    assert tracker.update_counts
    tracker.reset()
    assert tracker.update_counts == {} and tracker.get_flip_counts() == {}


def test_tracker_counts_accumulate_and_need_a_snapshot():
    tracker = WeightFlipTracker()
    for _ in range(2):
        tracker.snapshot_pre_step("w", torch.ones(4), "e4m3fn", grad=torch.ones(4))
        tracker.compute_flips_post_step("w", torch.full((4,), 2.0), "e4m3fn")
    assert tracker.get_update_counts() == {"w": 8} and tracker.get_flip_counts() == {"w": 8}
    with pytest.raises(KeyError):
        tracker.compute_flips_post_step("other", torch.ones(1), "e4m3fn")


def test_seed_000_verify_command():
    code = (
        "from altgrad_cli import WeightFlipTracker, compute_stall_ratio; t = WeightFlipTracker(); "
        "print('Has update_counts:', hasattr(t, 'update_counts')); "
        "print('Has get_stall_ratios:', hasattr(t, 'get_stall_ratios')); "
        "print('stall(10, 100):', compute_stall_ratio(10, 100))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "Has update_counts: True" in out
        and "Has get_stall_ratios: True" in out
        and "stall(10, 100): 0.9" in out
    )


# --------------------------------------------------------------- seed 004: DIAG-01 stiffness


def test_stiffness_formula_basic():
    assert compute_stiffness_field(torch.tensor([1.0]), mantissa_bits=2).item() == 0.25


def test_stiffness_scales_with_magnitude():
    s = compute_stiffness_field(torch.tensor([0.1, 1.0, 10.0, 100.0]), mantissa_bits=3)
    assert torch.all(s[1:] > s[:-1])


def test_stiffness_zero_weight_is_nan():
    s = compute_stiffness_field(torch.tensor([0.0, 1.0]), mantissa_bits=2)
    assert math.isnan(s[0].item()) and s[1].item() == 0.25


def test_stiffness_e0m7_constant():
    w = torch.tensor([0.001, 0.5, 0.9, -0.3])
    assert torch.all(compute_stiffness_field(w, mantissa_bits=7) == 1 / 128)
    assert torch.all(compute_stiffness_field(w, E0M7) == 1 / 128)


def test_stiffness_bf16_is_not_e0m7_when_given_the_format():
    w = torch.tensor([1.0, 4.0])
    assert compute_stiffness_field(w, "bf16").tolist() == [2.0**-7, 2.0**-5]


def test_stiffness_format_clamps_to_subnormal_and_top_binade():
    # e4m3fn: emin -6, emax 8: tiny weights share the subnormal step 2^-9, huge ones the top step 2^5
    s = compute_stiffness_field(torch.tensor([1e-4, 1e6]), E4M3)
    assert s.tolist() == [2.0**-9, 2.0**5]


def test_stiffness_negative_weights():
    w = torch.tensor([0.7, 3.0])
    assert torch.equal(compute_stiffness_field(-w, 2), compute_stiffness_field(w, 2))


def test_stiffness_tensor_batch():
    w = torch.randn(4, 5, 6)
    assert compute_stiffness_field(w, 3).shape == w.shape


# --------------------------------------------------------------- DIAG-02 grid alignment


def test_grid_alignment_on_grid_zero():
    w = torch.tensor([1.0, 1.25, 0.5, -2.0])
    assert torch.all(grid_alignment_error(w, E5M2, ONE) == 0)


def test_grid_alignment_between_grid_points():
    assert grid_alignment_error(torch.tensor([1.125]), E5M2, ONE).item() == 0.125


def test_grid_alignment_statistics_returns_dict():
    stats = grid_alignment_statistics(torch.tensor([1.0, 1.125, 1.3, 2.0]), E5M2, ONE)
    assert set(stats) == {"grid_error_mean", "grid_error_max", "grid_error_std", "on_grid_frac"}
    assert stats["on_grid_frac"] == 0.5
    assert stats["grid_error_max"] == pytest.approx(0.125)


def test_grid_alignment_clamped_values():
    assert (
        grid_alignment_error(torch.tensor([500.0]), E4M3, ONE).item() == 52.0
    )  # 500 saturates to 448


# --------------------------------------------------------------- DIAG-03 correlation


def test_correlation_returns_pearson():
    torch.manual_seed(0)
    w, g = torch.randn(1000), torch.randn(1000)
    r = gradient_stiffness_correlation(w, g, 2)["grad_stiff_correlation"]
    assert -1.0 <= r <= 1.0


def test_correlation_positive_when_aligned():
    w = torch.tensor([0.1, 0.2, 1.0, 2.0, 8.0, 16.0])
    g = compute_stiffness_field(w, 2) * 3
    assert gradient_stiffness_correlation(w, g, 2)["grad_stiff_correlation"] == pytest.approx(1.0)


def test_correlation_handles_zero_weights():
    w = torch.tensor([0.0, 1.0, 2.0, 4.0])
    g = torch.tensor([100.0, 1.0, 2.0, 4.0])
    out = gradient_stiffness_correlation(w, g, 2)
    assert out["grad_stiff_correlation"] == pytest.approx(1.0)  # the zero weight is left out
    assert out["grad_stiff_ratio_mean"] == pytest.approx(4.0)


def test_correlation_ratio_below_one_means_stall():
    w = torch.ones(10)
    out = gradient_stiffness_correlation(w, torch.full((10,), 0.01), 2)
    assert out["grad_stiff_ratio_mean"] < 1 and out["grad_below_stiffness_frac"] == 1.0


def test_grad_below_stiffness_frac_computed():
    w = torch.ones(4)  # S = 0.25 for M = 2
    g = torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert gradient_stiffness_correlation(w, g, 2)["grad_below_stiffness_frac"] == 0.5


def test_correlation_undefined_is_zero():
    out = gradient_stiffness_correlation(torch.ones(5), torch.ones(5), 2)
    assert out["grad_stiff_correlation"] == 0.0


# --------------------------------------------------------------- DIAG-04 ULP


def test_ulp_distance_identical_weights():
    w = torch.randn(100)
    assert torch.all(compute_ulp_distance(w, w) == 0)


def test_ulp_distance_one_ulp_move():
    w = torch.tensor([1.0, 3.0, 1e-3])
    after = torch.nextafter(w, torch.full_like(w, float("inf")))
    assert compute_ulp_distance(w, after).tolist() == [1.0, 1.0, 1.0]


def test_ulp_distance_finite_at_zero():
    # SPEC: exact by ordinals, finite at 0: the float32 values in (0, 1], not 1 / 2^-149
    d = compute_ulp_distance(torch.tensor([0.0]), torch.tensor([1.0]))
    assert math.isfinite(d.item()) and d.item() == 0x3F800000


def test_ulp_statistics_returns_dict():
    stats = ulp_statistics(
        torch.tensor([1.0, 1.0, 1.0]), torch.tensor([1.0, 1.0 + 2**-23, 1.0 + 2**-21])
    )
    assert set(stats) == {"ulp_mean", "ulp_median", "ulp_max", "ulp_zero_frac"}
    assert stats["ulp_median"] == 1.0 and stats["ulp_max"] == 4.0


def test_ulp_zero_frac_matches_stall():
    b = torch.ones(4)
    a = torch.tensor([1.0, 1.0, 1.0, 2.0])
    assert ulp_statistics(b, a)["ulp_zero_frac"] == 0.75


def test_ulp_uses_nextafter():
    """The seed's truth, checked by behaviour rather than by reading the source: inside a binade
    the exact ordinal distance is the torch.nextafter ratio |after − before| / ULP(before)."""
    g = torch.Generator().manual_seed(4)
    before = 1.0 + torch.rand(10_000, generator=g) * 0.5  # all in [1, 2)
    after = (before + torch.randn(10_000, generator=g) * 1e-5).clamp(1.0, 1.999)
    ulp = torch.nextafter(before, torch.full_like(before, float("inf"))) - before
    ratio = ((after - before).abs() / ulp).to(torch.float64)
    assert torch.equal(diagnostics.compute_ulp_distance(before, after), ratio)


def test_seed_004_verify_command():
    code = """
import torch
from altgrad_cli import (compute_stiffness_field, grid_alignment_statistics, compute_ulp_distance,
    gradient_stiffness_correlation, E5M2)
w = torch.tensor([1.0, 0.5, 0.25, 0.0])
S = compute_stiffness_field(w, mantissa_bits=2)
print(f'Stiffness for w=1.0 with M=2: {S[0].item():.4f} (expected 0.25)')
print(f'Stiffness for w=0.0: {S[3].item()} (expected nan)')
stats = grid_alignment_statistics(w[:3], E5M2, torch.tensor(1.0))
print(f'Grid alignment mean error: {stats["grid_error_mean"]:.6f}')
d = compute_ulp_distance(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
print(f'ULP distance for unchanged: {d[0].item():.0f} (expected 0)')
corr = gradient_stiffness_correlation(torch.randn(100), torch.randn(100) * 0.01, mantissa_bits=2)
print(f'Grad-stiffness correlation: {corr["grad_stiff_correlation"]:.4f}')
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "w=1.0 with M=2: 0.2500" in out and "w=0.0: nan" in out
    assert "mean error: 0.000000" in out and "unchanged: 0 (expected 0)" in out
