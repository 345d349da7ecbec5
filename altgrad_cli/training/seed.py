"""The seed's whole-tensor diagnostics (DIAG-01 to DIAG-04), with its names and return keys.

These are the in-training-loop API: one call on one tensor. The CLI's chunked, mergeable
versions live in metrics.py; both share the rounding engine, so they agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

from altgrad_cli.numerics.bits import exp2_int, floor_log2, working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.quantize import quantize


def compute_stiffness_field(weights: Tensor, mantissa_bits: int | Format | str) -> Tensor:
    """Per-weight stiffness: the smallest update that can move the weight to another grid value.

    With an int M (the seed's behaviour): S = 2^(floor(log2|w|) - M), and M == 7 is taken to mean
    the E0M7 fixed-point grid, constant 1/128. That shortcut also catches bf16 (M = 7), so pass a
    format object (or name) to be exact for every format: S = 2^(clamp(floor(log2|w|), emin,
    emax) - M), and 2^-M for fixed point. Zero weights give NaN (undefined stiffness).
    """
    dtype = working_dtype(weights.dtype)
    w = weights.detach().to(dtype)
    zero = w == 0
    safe = torch.where(zero | ~torch.isfinite(w), torch.ones_like(w), w)
    if isinstance(mantissa_bits, int):
        if mantissa_bits == 7:
            stiffness = torch.full_like(w, 1.0 / 128.0)
        else:
            stiffness = exp2_int(floor_log2(safe) - mantissa_bits, dtype)
    else:
        fmt = get_format(mantissa_bits)
        if fmt.is_fixed_point:
            stiffness = torch.full_like(w, 2.0**-fmt.mantissa_bits)
        else:
            expo = floor_log2(safe).clamp(fmt.emin, fmt.emax) - fmt.mantissa_bits
            stiffness = exp2_int(expo, dtype)
    return torch.where(zero, torch.full_like(w, float("nan")), stiffness)


def grid_alignment_error(
    weights: Tensor, format: Format | str, scale: Tensor | float | None = None
) -> Tensor:
    """|w - Q(w)|: how far each weight sits from its nearest grid value (0 = on the grid)."""
    dtype = working_dtype(weights.dtype)
    return (weights.detach().to(dtype) - quantize(weights, format, scale)).abs()


def grid_alignment_statistics(
    weights: Tensor, format: Format | str, scale: Tensor | float | None = None
) -> dict[str, float]:
    """grid_error_mean / _max / _std (n - 1) and on_grid_frac (error exactly 0) of the weights."""
    error = grid_alignment_error(weights, format, scale).reshape(-1).to(torch.float64)
    error = error[torch.isfinite(error)]
    if error.numel() == 0:
        return {
            "grid_error_mean": 0.0,
            "grid_error_max": 0.0,
            "grid_error_std": 0.0,
            "on_grid_frac": 0.0,
        }
    return {
        "grid_error_mean": error.mean().item(),
        "grid_error_max": error.max().item(),
        "grid_error_std": error.std().item() if error.numel() > 1 else 0.0,
        "on_grid_frac": (error == 0).double().mean().item(),
    }


def compute_ulp_distance(before: Tensor, after: Tensor) -> Tensor:
    """|after - before| in units of before's ULP, |nextafter(before, +inf) - before| (seed DIAG-04).

    The ULP comes from torch.nextafter in the weights' own dtype; the division is done in
    float64, so a move away from before = 0 (ULP = the smallest subnormal) stays finite.
    """
    b = before.detach()
    ulp = (torch.nextafter(b, torch.full_like(b, float("inf"))) - b).abs().to(torch.float64)
    return (after.detach().to(torch.float64) - b.to(torch.float64)).abs() / ulp


def ulp_statistics(before: Tensor, after: Tensor) -> dict[str, float]:
    """ulp_mean, ulp_median (lower median), ulp_max and ulp_zero_frac (bit-stalled share)."""
    distance = compute_ulp_distance(before, after).reshape(-1)
    distance = distance[torch.isfinite(distance)]
    if distance.numel() == 0:
        return {"ulp_mean": 0.0, "ulp_median": 0.0, "ulp_max": 0.0, "ulp_zero_frac": 0.0}
    return {
        "ulp_mean": distance.mean().item(),
        "ulp_median": distance.median().item(),
        "ulp_max": distance.max().item(),
        "ulp_zero_frac": (distance == 0).double().mean().item(),
    }


def gradient_stiffness_correlation(
    weights: Tensor, gradients: Tensor, mantissa_bits: int | Format | str
) -> dict[str, float]:
    """Pearson(S, |grad|) over non-zero weights, mean |grad| / S, and the share with |grad| < S.

    A positive correlation means large gradients land where the grid is coarse; |grad| < S
    marks updates likely to stall. The correlation is 0.0 when undefined (constant S or grad).
    """
    stiffness = compute_stiffness_field(weights, mantissa_bits).reshape(-1).to(torch.float64)
    grad = gradients.detach().reshape(-1).to(torch.float64).abs()
    valid = ~torch.isnan(stiffness) & torch.isfinite(grad)
    s, g = stiffness[valid], grad[valid]
    if s.numel() == 0:
        return {
            "grad_stiff_correlation": 0.0,
            "grad_stiff_ratio_mean": 0.0,
            "grad_below_stiffness_frac": 0.0,
        }
    sc, gc = s - s.mean(), g - g.mean()
    denominator = (sc.norm() * gc.norm()).item()
    correlation = (sc * gc).sum().item() / denominator if denominator > 0 else 0.0
    return {
        "grad_stiff_correlation": max(-1.0, min(1.0, correlation)),
        "grad_stiff_ratio_mean": (g / s).mean().item(),
        "grad_below_stiffness_frac": (g < s).double().mean().item(),
    }
