"""The seed's whole-tensor diagnostics (DIAG-01 to DIAG-04), with its names, signatures and keys,
computed by the engine that computes `altgrad analyze`.

The statistics (`ulp_statistics`, `grid_alignment_statistics`, `gradient_stiffness_correlation`)
stream the tensors through the CLI's own accumulator (`accumulate_scaled`: the same chunks, kernel
and merge order) and read their numbers out of its record, so the library and the CLI give the
same numbers on the same tensors, to the bit, with memory bounded by the chunk. The per-element
functions have no CLI counterpart, so they are the kernel's per-element primitives
(`stiffness_powers`, `grid_alignment_errors`, `ulp_distances`) applied to the whole tensor: a
second implementation that could drift from the CLI is what this module must not be.

The statistics run on the CPU, where the accumulators live (tensors elsewhere are copied there
first); the per-element functions run on their inputs' device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from altgrad_cli.engine.kernel import grid_alignment_errors, stiffness_powers, ulp_distances
from altgrad_cli.engine.stats import CoMoments
from altgrad_cli.engine.tensor import DEFAULT_CHUNK, accumulate_scaled
from altgrad_cli.numerics.bits import exp2_int, floor_log2, working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.rounding import encode_scaled
from altgrad_cli.numerics.scaling import Scale, Scaling
from altgrad_cli.report.records import Metrics

ScaleLike = Scale | Tensor | float | None
"""A `Scale` from `compute_scale` (the CLI's), a tensor broadcastable to the weights, a number, or
None (s = 1, the seed's behaviour)."""


# ----------------------------------------------------------------------------- DIAG-01 stiffness


def compute_stiffness_field(weights: Tensor, mantissa_bits: int | Format | str) -> Tensor:
    """Per-weight stiffness: the smallest update that can move the weight to another grid value.

    With a format (object or name), S = 2^(clamp(floor(log2|w|), emin, emax) - M) (2^-M for
    fixed point): SPEC §Metrics's S at s = 1, computed by the kernel's own `stiffness_powers`.
    With an int M (the seed's behaviour), S = 2^(floor(log2|w|) - M) without a clamp, and M == 7
    means the E0M7 fixed-point grid, constant 1/128; that shortcut also catches bf16 (M = 7),
    so pass the format to be exact for every format. Zero and non-finite weights give NaN
    (undefined stiffness). float64, the kernel's precision, in which every S is exact.
    """
    w = weights.detach().to(working_dtype(weights.dtype))
    spec = _stiffness_spec(mantissa_bits)
    defined = (w != 0) & torch.isfinite(w)
    if isinstance(spec, Format):
        powers = stiffness_powers(w, spec)
    else:  # the seed's unclamped S: it names no format, so the kernel has no S for it
        safe = torch.where(defined, w, torch.ones_like(w))
        powers = exp2_int(floor_log2(safe) - spec, torch.float64)
    return torch.where(defined, powers, torch.full_like(powers, math.nan))


def _stiffness_spec(mantissa_bits: int | Format | str) -> Format | int:
    """A format, or the seed's bare M; the seed's M == 7 is the E0M7 format."""
    if isinstance(mantissa_bits, int) and not isinstance(mantissa_bits, bool):
        return get_format("E0M7") if mantissa_bits == 7 else mantissa_bits
    return get_format(mantissa_bits)


# ----------------------------------------------------------------------------- DIAG-02 grid alignment


def grid_alignment_error(weights: Tensor, format: Format | str, scale: ScaleLike = None) -> Tensor:
    """|w - Q(w)| per weight: how far it sits from its nearest grid value (0 = on the grid).

    The kernel's `grid_alignment_errors`: float64 and exact, where the float32 difference of
    w and Q(w) is not (a weight far beyond ±max, or a scale that is not a power of two, needs
    more than 24 bits). NaN where w / s is not finite; same shape as the weights.
    """
    fmt = get_format(format)
    w = weights.detach().to(working_dtype(weights.dtype))
    s = _per_element(_as_scale(scale, weights), w)
    y = w if s is None else w / s
    code = encode_scaled(y.reshape(-1), fmt)
    s_flat = s if s is None or s.dim() == 0 else s.expand(w.shape).reshape(-1)
    error = grid_alignment_errors(w.reshape(-1).abs().to(torch.float64), code, fmt, s_flat)
    error = error.reshape(w.shape)
    return torch.where(torch.isfinite(y), error, torch.full_like(error, math.nan))


def grid_alignment_statistics(
    weights: Tensor, format: Format | str, scale: ScaleLike = None
) -> dict[str, float]:
    """grid_error_mean / _max / _std (n - 1) and on_grid_frac (error exactly 0) over the finite
    weights: the CLI's `grid_alignment` record of the same weights, format and scale.

    Pass `compute_scale(weights, format, "tensor")` (or any other scaling) to get the numbers
    `altgrad analyze --scaling tensor` reports; None is s = 1 (`--scaling none`).
    """
    fmt = get_format(format)
    w = _cpu(weights)
    scale_pair = (_as_scale(scale, w),) * 2
    grid = _record(w, w, None, fmt, scale_pair).grid_alignment
    return {
        "grid_error_mean": grid.mean,
        "grid_error_max": grid.max,
        "grid_error_std": grid.std,
        "on_grid_frac": grid.on_grid_frac,
    }


# ----------------------------------------------------------------------------- DIAG-04 ULP


def compute_ulp_distance(before: Tensor, after: Tensor) -> Tensor:
    """How many ULPs each weight moved: SPEC §Metrics's exact d = |ord(after) - ord(before)|.

    ord is the signed ordinal of a value among all values of the storage dtype (±0 both 0), so
    d counts the representable values the update stepped over; one step of `torch.nextafter` is
    one ULP, in every binade and across zero. Inside one binade d equals the seed's
    |after - before| / |nextafter(before, +inf) - before|; across a binade edge that ratio
    measures in the wrong binade's ULP, and at before = 0 in units of the smallest subnormal:

    >>> import torch
    >>> b = torch.tensor([1.0, 3.0, -(2.0**-149), 1.0 - 2.0**-24])
    >>> a = torch.nextafter(b, torch.full_like(b, float("inf")))
    >>> compute_ulp_distance(b, a).tolist()  # one nextafter step each: 1 ULP
    [1.0, 1.0, 1.0, 1.0]
    >>> compute_ulp_distance(b[3:], torch.tensor([1.0 + 2.0**-23])).item()  # ratio: 3
    2.0

    The kernel's `ulp_distances`, as float64 (exact below 2^53, so for every storage dtype up to
    32 bits), NaN where either side is not finite. Different dtypes compare in the wider one.
    """
    b, a = _storage_pair(before, after)
    if b.numel() == 0:
        return torch.zeros(b.shape, dtype=torch.float64, device=b.device)
    flat_b, flat_a = b.reshape(-1), a.reshape(-1)
    absmax = max(_absmax(flat_b), _absmax(flat_a))  # NaN or inf takes the widest integers
    distance = ulp_distances(flat_b, flat_a, absmax)[0].to(torch.float64).reshape(b.shape)
    finite = torch.isfinite(b) & torch.isfinite(a)
    return torch.where(finite, distance, torch.full_like(distance, math.nan))


def ulp_statistics(before: Tensor, after: Tensor) -> dict[str, float]:
    """ulp_mean, ulp_median (the lower median), ulp_max and ulp_zero_frac (bit-stalled share)
    of `compute_ulp_distance` over the elements finite on both sides: the CLI's `ulp` record.

    Mean, max and zero_frac are exact; the median is the CLI's, exact up to 255 and within 1 %
    relative above (SPEC: a histogram, so memory does not grow with the tensor). Median and max
    are integers, as in the CLI's JSON.
    """
    b, a = _storage_pair(_cpu(before), _cpu(after))
    ulp = accumulate_scaled(b, a, None, (), ()).ulp.result()
    return {
        "ulp_mean": ulp["mean"],
        "ulp_median": ulp["median"],
        "ulp_max": ulp["max"],
        "ulp_zero_frac": ulp["zero_frac"],
    }


# ----------------------------------------------------------------------------- DIAG-03 correlation


def gradient_stiffness_correlation(
    weights: Tensor, gradients: Tensor, mantissa_bits: int | Format | str
) -> dict[str, float]:
    """Pearson(S, |grad|) over non-zero weights, mean |grad| / S, and the share with |grad| < S.

    A positive correlation means large gradients land where the grid is coarse; |grad| < S
    marks updates likely to stall. The correlation is 0.0 when undefined (constant S or grad).
    Elements where the weight or the gradient is not finite are left out. With a format, these
    are the CLI's `grad_stiffness` numbers at s = 1 (`--scaling none`); with the seed's int M
    (S unclamped, no format) they come from the engine's accumulators over the seed's S.
    """
    if weights.shape != gradients.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} and gradients {tuple(gradients.shape)} differ in shape"
        )
    spec = _stiffness_spec(mantissa_bits)
    w, g = _cpu(weights), _cpu(gradients)
    if isinstance(spec, Format):
        unit = (_as_scale(None, w),) * 2
        record = _record(w, w, g, spec, unit).grad_stiffness
        assert record is not None  # there are grads
        correlation, ratio_mean, below = record.correlation, record.ratio_mean, record.below_frac
    else:
        correlation, ratio_mean, below = _seed_grad_stiffness(w, g, spec)
    return {
        "grad_stiff_correlation": correlation,
        "grad_stiff_ratio_mean": ratio_mean,
        "grad_below_stiffness_frac": below,
    }


def _seed_grad_stiffness(w: Tensor, g: Tensor, m: int) -> tuple[float, float, float]:
    """The statistics over the seed's unclamped S = 2^(floor(log2|w|) - M), chunk by chunk, with
    the engine's CoMoments (Chan's merge) and exact counts."""
    moments, ratio_sum, below, n = CoMoments(), 0.0, 0, 0
    flat_w, flat_g = w.reshape(-1), g.reshape(-1)
    for start in range(0, flat_w.numel(), DEFAULT_CHUNK):
        stop = start + DEFAULT_CHUNK
        s = compute_stiffness_field(flat_w[start:stop], m)
        grad = flat_g[start:stop].to(torch.float64).abs()
        keep = ~torch.isnan(s) & torch.isfinite(grad)
        s, grad = s[keep], grad[keep]
        moments.update(s, grad)
        ratio_sum += float((grad / s).sum())
        below += int(torch.count_nonzero(grad < s))
        n += s.numel()
    if n == 0:
        return 0.0, 0.0, 0.0
    return moments.correlation(), ratio_sum / n, below / n


# ----------------------------------------------------------------------------- shared plumbing


def _record(
    before: Tensor, after: Tensor, grad: Tensor | None, fmt: Format, scales: tuple[Scale, Scale]
) -> Metrics:
    """The CLI's record of one tensor and one format under the given scales."""
    return accumulate_scaled(before, after, grad, (fmt,), (scales,)).results()[fmt.name]


def _cpu(x: Tensor) -> Tensor:
    """The engine's accumulators live on the CPU."""
    return x.detach().cpu()


def _absmax(x: Tensor) -> float:
    """max |x| (NaN when x holds one), in the working dtype: narrow floats have no aminmax."""
    low, high = torch.aminmax(x.to(working_dtype(x.dtype)))
    return max(-float(low), float(high))


def _storage_pair(before: Tensor, after: Tensor) -> tuple[Tensor, Tensor]:
    """BEFORE and AFTER in one floating storage dtype (the wider, an exact widening), same shape."""
    if before.shape != after.shape:
        raise ValueError(
            f"before {tuple(before.shape)} and after {tuple(after.shape)} differ in shape"
        )
    if not (before.is_floating_point() and after.is_floating_point()):
        raise ValueError(f"ULP distances need floating tensors, got {before.dtype}, {after.dtype}")
    dtype = torch.promote_types(before.dtype, after.dtype)
    return before.detach().to(dtype), after.detach().to(dtype)


def _as_scale(scale: ScaleLike, weights: Tensor) -> Scale:
    """The caller's scale as the engine's `Scale` for `weights`: None is s = 1 (no scaling), one
    number one tensor scale, (dim0, 1, ...) one per channel, anything else broadcastable one
    per element (held once, as blocks of one element). It must be finite and positive."""
    shape, dtype = tuple(weights.shape), working_dtype(weights.dtype)
    if scale is None:
        return Scale(Scaling("none"), torch.ones((), dtype=dtype), shape)
    if isinstance(scale, Scale):
        if tuple(scale.shape) != shape:
            raise ValueError(f"the scale was computed for shape {scale.shape}, not {shape}")
        result = scale.to(dtype)
    else:
        s = torch.as_tensor(scale, dtype=dtype).detach().cpu()
        if s.numel() == 1:
            result = Scale(Scaling("tensor"), s.reshape(()), shape)
        elif shape and tuple(s.shape) == (shape[0],) + (1,) * (len(shape) - 1):
            result = Scale(Scaling("channel"), s.reshape(-1), shape)
        else:
            cols = shape[-1] if shape else 1
            per_element = torch.broadcast_to(s, shape).reshape(-1, cols)
            result = Scale(Scaling("block", 1), per_element, shape)
    values = result.values
    if not bool(torch.all(torch.isfinite(values) & (values > 0))):
        raise ValueError("the scale must be finite and positive")
    return result


def _per_element(scale: Scale, w: Tensor) -> Tensor | None:
    """The scale broadcastable to `w` on its device, in its dtype; None for s = 1."""
    if scale.is_unit:
        return None
    return scale.broadcast().to(device=w.device, dtype=w.dtype)
