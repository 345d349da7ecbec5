"""The seed's formulas as the seed plans wrote them: whole tensors, float math, no chunking.

This is the baseline altgrad is measured against (case (e) of bench.py), so it is kept literal:
the diagnostics are the seed plan's code with only the package paths changed, and the flip
tracker and `quantize` are written the way that code expects them (simulated quantization with
log2/floor/round on whole tensors). Nothing here is used by altgrad itself.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SeedFormat:
    def __init__(self, exponent_bits: int, mantissa_bits: int, bias: int, max_value: float):
        self.exponent_bits = exponent_bits
        self.mantissa_bits = mantissa_bits
        self.bias = bias
        self.max_value = max_value


E4M3 = SeedFormat(4, 3, 7, 448.0)


def quantize(x: Tensor, format: SeedFormat, scale: Tensor) -> Tensor:
    """Simulated quantization: scale, clamp, round the mantissa at each value's own exponent."""
    y = (x / scale).clamp(-format.max_value, format.max_value)
    abs_y = y.abs()
    exponent = torch.floor(torch.log2(abs_y.clamp(min=1e-45)))
    exponent = exponent.clamp(min=1 - format.bias)  # subnormals share the smallest binade's step
    step = torch.pow(2.0, exponent - format.mantissa_bits)
    q = torch.round(abs_y / step) * step
    return torch.sign(y) * q.clamp(max=format.max_value) * scale


class WeightFlipTracker:
    def __init__(self) -> None:
        self.previous: dict[str, Tensor] = {}
        self.flip_counts: dict[str, int] = {}
        self.update_counts: dict[str, int] = {}

    def snapshot_pre_step(self, name, weight, format, scale, grad=None) -> None:
        self.previous[name] = quantize(weight.detach(), format, scale).clone()
        self.update_counts.setdefault(name, 0)
        if grad is not None:
            self.update_counts[name] += (grad.abs() > 1e-10).sum().item()

    def compute_flips_post_step(self, name, weight, format, scale) -> int:
        flips = (quantize(weight.detach(), format, scale) != self.previous[name]).sum().item()
        self.flip_counts[name] = self.flip_counts.get(name, 0) + flips
        return flips

    def get_stall_ratios(self) -> dict[str, float]:
        return {
            name: 0.0 if updates == 0 else 1.0 - self.flip_counts.get(name, 0) / updates
            for name, updates in self.update_counts.items()
        }


def compute_stiffness_field(weights: Tensor, mantissa_bits: int) -> Tensor:
    if mantissa_bits == 7:
        stiffness = torch.full_like(weights, 1.0 / 128.0)
        stiffness = torch.where(weights == 0, torch.tensor(float("nan")), stiffness)
        return stiffness
    abs_w = weights.abs()
    safe_abs_w = abs_w.clamp(min=1e-45)
    log2_w = torch.floor(torch.log2(safe_abs_w))
    stiffness = torch.pow(2.0, log2_w - mantissa_bits)
    stiffness = torch.where(weights == 0, torch.tensor(float("nan")), stiffness)
    return stiffness


def grid_alignment_error(weights: Tensor, format: SeedFormat, scale: Tensor) -> Tensor:
    quantized = quantize(weights, format, scale)
    return torch.abs(weights - quantized)


def grid_alignment_statistics(weights: Tensor, format: SeedFormat, scale: Tensor) -> dict:
    error = grid_alignment_error(weights, format, scale)
    return {
        "grid_error_mean": error.mean().item(),
        "grid_error_max": error.max().item(),
        "grid_error_std": error.std().item(),
        "on_grid_frac": (error < 1e-10).float().mean().item(),
    }


def compute_ulp_distance(before: Tensor, after: Tensor) -> Tensor:
    inf_tensor = torch.full_like(before, float("inf"))
    ulp = torch.abs(torch.nextafter(before, inf_tensor) - before)
    safe_ulp = ulp.clamp(min=1e-45)
    distance = torch.abs(after - before) / safe_ulp
    return distance


def ulp_statistics(before: Tensor, after: Tensor) -> dict:
    ulp_dist = compute_ulp_distance(before, after)
    return {
        "ulp_mean": ulp_dist.mean().item(),
        "ulp_median": ulp_dist.median().item(),
        "ulp_max": ulp_dist.max().item(),
        "ulp_zero_frac": (ulp_dist == 0).float().mean().item(),
    }


def gradient_stiffness_correlation(weights: Tensor, gradients: Tensor, mantissa_bits: int) -> dict:
    stiffness = compute_stiffness_field(weights, mantissa_bits)
    grad_mag = gradients.abs()
    valid_mask = ~torch.isnan(stiffness)
    s_flat = stiffness[valid_mask].flatten()
    g_flat = grad_mag[valid_mask].flatten()
    if len(s_flat) == 0:
        return {
            "grad_stiff_correlation": 0.0,
            "grad_stiff_ratio_mean": 0.0,
            "grad_below_stiffness_frac": 0.0,
        }
    s_centered = s_flat - s_flat.mean()
    g_centered = g_flat - g_flat.mean()
    numerator = (s_centered * g_centered).sum()
    denominator = s_centered.norm() * g_centered.norm() + 1e-10
    correlation = numerator / denominator
    ratio = g_flat / s_flat.clamp(min=1e-10)
    return {
        "grad_stiff_correlation": correlation.item(),
        "grad_stiff_ratio_mean": ratio.mean().item(),
        "grad_below_stiffness_frac": (g_flat < s_flat).float().mean().item(),
    }
