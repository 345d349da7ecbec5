"""The per-(tensor, format) metrics of SPEC §Metrics, driven chunk by chunk through stats.py.

Each chunk of BEFORE / AFTER / GRAD is read once. The format-independent work (finite mask,
update mask, storage ULPs) is done once per chunk; per format, the codes of both sides, the
stiffness and |Δ| are computed once and shared by every metric that needs them. Nothing is
materialised at full-tensor size, so memory is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from altgrad_cli.formats import Format
from altgrad_cli.quantize import (
    Scale,
    Scaling,
    decode_magnitude,
    encode_scaled,
    group_amax,
    iter_chunks,
    overflow_mask,
    parse_scaling,
    scale_from_amax,
    working_dtype,
)
from altgrad_cli.stats import (
    BinnedCounts,
    CoMoments,
    Counts,
    Mean,
    Moments,
    UlpHistogram,
    fold_grid_steps,
)

DEFAULT_GRAD_EPS = 1e-10
DEFAULT_CHUNK = 1 << 20
_EXP_LOW, _EXP_HIGH = -1100, 1100  # floor(log2 S) of any float64 stiffness lies in here

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def storage_ordinals(raw: Tensor) -> Tensor:
    """Signed ordinal of each value among all values of its own dtype (±0 both 0), as int64.

    For IEEE-style storage, the bit pattern without the sign is the ordinal of the magnitude.
    """
    bits = raw.view(_INT_VIEW[raw.element_size()]).to(torch.int64)
    width = 8 * raw.element_size()
    magnitude = bits & ((1 << (width - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude)


def floor_log2_abs(y: Tensor, floor_at: int | None = None) -> Tensor:
    """floor(log2 |y|) of non-zero finite values, exactly, as int64.

    With `floor_at` >= -126 and float32 input, results below it may be any value <= floor_at
    (the caller clamps): that lets the exponent come straight from the bit pattern.
    """
    if y.dtype == torch.float32 and floor_at is not None and floor_at >= -126:
        return ((y.view(torch.int32) >> 23) & 0xFF).to(torch.int64) - 127
    _, expo = torch.frexp(y)
    return expo.to(torch.int64) - 1


@dataclass
class FormatAccumulator:
    """Everything one (tensor, format) record needs, mergeable."""

    counts: Counts = field(default_factory=Counts)
    grid_steps: BinnedCounts = field(default_factory=lambda: BinnedCounts.empty(0, 16))
    stiffness: Mean = field(default_factory=lambda: Mean(track_range=True))
    stiffness_hist: BinnedCounts = field(
        default_factory=lambda: BinnedCounts.empty(_EXP_LOW, _EXP_HIGH)
    )
    grid_error: Moments = field(default_factory=Moments)
    grid_rel: Mean = field(default_factory=Mean)
    grad: CoMoments = field(default_factory=CoMoments)
    grad_ratio: Mean = field(default_factory=Mean)
    update_ratio: Mean = field(default_factory=Mean)
    steps_max: int = 0

    def merge(self, other: FormatAccumulator) -> None:
        self.counts.merge(other.counts)
        self.grid_steps.merge(other.grid_steps)
        self.stiffness.merge(other.stiffness)
        self.stiffness_hist.merge(other.stiffness_hist)
        self.grid_error.merge(other.grid_error)
        self.grid_rel.merge(other.grid_rel)
        self.grad.merge(other.grad)
        self.grad_ratio.merge(other.grad_ratio)
        self.update_ratio.merge(other.update_ratio)
        self.steps_max = max(self.steps_max, other.steps_max)


@dataclass
class TensorAccumulator:
    """The format-independent counts and ULPs of one tensor, plus one FormatAccumulator per format."""

    formats: tuple[Format, ...]
    has_grads: bool
    counts: Counts = field(default_factory=Counts)
    ulp: UlpHistogram = field(default_factory=UlpHistogram)
    per_format: dict[str, FormatAccumulator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for fmt in self.formats:
            self.per_format.setdefault(fmt.name, FormatAccumulator())

    def merge(self, other: TensorAccumulator) -> None:
        self.counts.merge(other.counts)
        self.ulp.merge(other.ulp)
        for name, acc in other.per_format.items():
            self.per_format.setdefault(name, FormatAccumulator()).merge(acc)

    def update(
        self,
        before: Tensor,
        after: Tensor,
        grad: Tensor | None,
        scales: Sequence[tuple[Tensor | None, Tensor | None]],
        grad_eps: float = DEFAULT_GRAD_EPS,
    ) -> None:
        """Add one chunk. `before`/`after`/`grad` are in their storage dtype; `scales` holds, per
        format, the scales (broadcastable to the chunk) to divide BEFORE and AFTER by, or None."""
        numel = before.numel()
        self.counts.add("numel", numel)
        if numel == 0:
            return
        dtype = working_dtype(before.dtype)
        b, a = before.to(dtype), after.to(dtype)
        g = grad.to(dtype) if grad is not None else None
        finite = torch.isfinite(b) & torch.isfinite(a)
        if g is not None:
            finite &= torch.isfinite(g)
        n_finite = int(finite.sum())
        all_finite = n_finite == numel
        self.counts.add("nonfinite", numel - n_finite)
        if not all_finite:  # rare: compress to the finite elements once, for every metric below
            b, a = b[finite], a[finite]
            g = g[finite] if g is not None else None
            before, after = before[finite], after[finite]
            scales = [
                tuple(None if s is None else s.expand(finite.shape)[finite] for s in pair)
                for pair in scales
            ]
        else:
            b, a = b.reshape(-1), a.reshape(-1)
            g = g.reshape(-1) if g is not None else None
            scales = [
                tuple(
                    None if s is None else s.expand(finite.shape).reshape(-1) if s.dim() else s
                    for s in pair
                )
                for pair in scales
            ]
        updated = (g.abs() > grad_eps) if g is not None else (a != b)
        self.counts.add("updates", updated.sum())
        self.counts.add("n", b.numel())
        if b.numel() == 0:
            return
        self.ulp.update(
            (storage_ordinals(after.reshape(-1)) - storage_ordinals(before.reshape(-1))).abs()
        )

        nonzero = b != 0
        n_nonzero = int(nonzero.sum())
        all_nonzero = n_nonzero == b.numel()
        abs_delta = (a - b).abs()
        abs_g = g.abs() if g is not None else None
        for fmt, (s_before, s_after) in zip(self.formats, scales, strict=True):
            acc = self.per_format[fmt.name]
            yb = b if s_before is None else b / s_before
            ya = a if s_after is None else a / s_after
            cb, ca = encode_scaled(yb, fmt), encode_scaled(ya, fmt)
            wide = (
                torch.int16 if cb.dtype == torch.int8 else torch.int32
            )  # a code difference needs one more bit
            steps = (ca.to(wide) - cb).abs_()
            flipped = steps != 0
            acc.counts.add("flips", flipped.sum())
            acc.counts.add("flips_on_updates", (flipped & updated).sum())
            acc.counts.add("steps_sum", steps.sum(dtype=torch.int64))
            acc.steps_max = max(acc.steps_max, int(steps.max()))
            acc.grid_steps.update(steps.clamp(max=16))
            acc.counts.add("overflow", overflow_mask(yb, fmt).sum())
            code_zero = cb == 0
            acc.counts.add("underflow", (code_zero & nonzero).sum())

            # |b - Q(b)| in float64: exact there, and s * q may exceed float32's range (pow2 scales)
            q_abs = decode_magnitude(cb.to(wide).abs_(), fmt, dtype).to(torch.float64)
            if s_before is not None:
                q_abs *= s_before
            error = (b.abs() - q_abs).abs_()
            acc.grid_error.update(error)
            acc.counts.add("on_grid", (error == 0).sum())

            # stiffness S = s * 2^(clamp(floor(log2 |b/s|), emin, emax) - M), over b != 0
            if all_nonzero:
                ybn, errn, dn, fl = yb, error, abs_delta, flipped
                gn = abs_g
                sbn = s_before
            else:
                ybn, errn, dn, fl = (
                    yb[nonzero],
                    error[nonzero],
                    abs_delta[nonzero],
                    flipped[nonzero],
                )
                gn = abs_g[nonzero] if abs_g is not None else None
                sbn = (
                    None
                    if s_before is None
                    else (s_before[nonzero] if s_before.dim() else s_before)
                )
            acc.counts.add("stiffness_zero", b.numel() - n_nonzero)
            if ybn.numel() == 0:
                continue
            # S in float64: s * 2^k is exact there and never underflows, so every ratio stays finite
            if fmt.is_fixed_point:
                expo = torch.full(ybn.shape, -fmt.mantissa_bits, dtype=torch.int64)
            else:
                expo = floor_log2_abs(ybn, fmt.emin).clamp_(fmt.emin, fmt.emax) - fmt.mantissa_bits
            stiff = ((expo + 1023) << 52).view(torch.float64)  # 2^k: always a normal float64 here
            if sbn is None:
                acc.stiffness_hist.update(expo)
            elif sbn.dim() == 0:
                stiff = stiff * sbn.to(torch.float64)
                acc.stiffness_hist.update(expo + int(floor_log2_abs(sbn.reshape(1))[0]))
            else:
                stiff = stiff * sbn.to(torch.float64)
                acc.stiffness_hist.update(expo + floor_log2_abs(sbn))
            acc.stiffness.update(stiff)
            acc.grid_rel.update(errn / stiff)
            ratio = dn / stiff
            acc.update_ratio.update(ratio)
            big = ratio >= 0.5
            acc.counts.add("pred_flip_flipped", (big & fl).sum())
            acc.counts.add("pred_flip_stalled", (big & ~fl).sum())
            acc.counts.add("pred_stall_flipped", (~big & fl).sum())
            acc.counts.add("pred_stall_stalled", (~big & ~fl).sum())
            if gn is not None:
                acc.grad.update(stiff, gn)
                acc.grad_ratio.update(gn / stiff)
                acc.counts.add("grad_below", (gn < stiff).sum())

    def results(self) -> dict[str, dict]:
        """One record per format, keyed by format name (SPEC §Metrics keys)."""
        return {fmt.name: self._record(fmt) for fmt in self.formats}

    def _record(self, fmt: Format) -> dict:
        c, acc = self.counts, self.per_format[fmt.name]
        fc = acc.counts
        numel, n = c["numel"], c["n"]
        n_nonzero = n - fc["stiffness_zero"]
        flips, on_updates, updates = fc["flips"], fc["flips_on_updates"], c["updates"]
        stiffness_hist = acc.stiffness_hist.result()
        if fc["stiffness_zero"]:
            stiffness_hist["zero"] = fc["stiffness_zero"]
        record = {
            "numel": numel,
            "nonfinite": c["nonfinite"],
            "updates": updates,
            "update_source": "grads" if self.has_grads else "delta",
            "flips": flips,
            "flips_on_updates": on_updates,
            "flips_without_update": flips - on_updates,
            "flip_rate": flips / numel if numel else 0.0,
            "stall_ratio": compute_stall_ratio(on_updates, updates),
            "grid_steps": {
                "mean": fc["steps_sum"] / n if n else 0.0,
                "max": acc.steps_max,
                "histogram": fold_grid_steps(acc.grid_steps.counts),
            },
            "ulp": self.ulp.result(),
            "stiffness": {
                "mean": acc.stiffness.result()["mean"],
                "min": acc.stiffness.result()["min"],
                "max": acc.stiffness.result()["max"],
                "histogram": stiffness_hist,
            },
            "grid_alignment": {
                "mean": acc.grid_error.result()["mean"],
                "max": acc.grid_error.result()["max"] if n else 0.0,
                "std": acc.grid_error.std,
                "on_grid_frac": fc["on_grid"] / n if n else 0.0,
                "rel_mean": acc.grid_rel.result()["mean"],
            },
            "grad_stiffness": None,
            "update_stiffness": {
                "ratio_mean": acc.update_ratio.result()["mean"],
                "below_half_frac": (fc["pred_stall_flipped"] + fc["pred_stall_stalled"]) / n_nonzero
                if n_nonzero
                else 0.0,
                "predicted_vs_actual": {
                    "predicted_flip": {
                        "flipped": fc["pred_flip_flipped"],
                        "not_flipped": fc["pred_flip_stalled"],
                    },
                    "predicted_stall": {
                        "flipped": fc["pred_stall_flipped"],
                        "not_flipped": fc["pred_stall_stalled"],
                    },
                },
            },
            "overflow_frac": fc["overflow"] / numel if numel else 0.0,
            "underflow_frac": fc["underflow"] / numel if numel else 0.0,
        }
        if self.has_grads:
            record["grad_stiffness"] = {
                "correlation": acc.grad.correlation(),
                "ratio_mean": acc.grad_ratio.result()["mean"],
                "below_frac": fc["grad_below"] / n_nonzero if n_nonzero else 0.0,
            }
        return record


def compute_stall_ratio(flips: int, updates: int) -> float:
    """1 − flips / updates: the share of attempted updates that did not change the code.

    0.0 when nothing was updated (no gradient, no stall); clamped to [0, 1] so flips counted
    outside the updated elements can never make it negative.
    """
    if updates == 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - flips / updates))


# ----------------------------------------------------------------------------- driving


def scale_summary(scale: Scale, fmt: Format) -> dict:
    """The scale(s) of one tensor for its record: the value, or count/min/max/log2 histogram
    and the fraction of groups whose largest element was clipped."""
    values = scale.values.reshape(-1).to(torch.float64)
    if scale.scaling.mode in ("tensor", "pow2", "none"):
        return {"mode": str(scale.scaling), "value": float(values[0]) if values.numel() else 1.0}
    amax = scale.amax.reshape(-1)
    ratio = (amax.to(torch.float64) / values).to(amax.dtype)
    clipped = int(overflow_mask(ratio, fmt).sum()) if values.numel() else 0
    hist = BinnedCounts.empty(_EXP_LOW, _EXP_HIGH)
    hist.update(floor_log2_abs(values))
    return {
        "mode": str(scale.scaling),
        "count": values.numel(),
        "min": float(values.min()) if values.numel() else None,
        "max": float(values.max()) if values.numel() else None,
        "log2_histogram": hist.result(),
        "clipped_frac": clipped / values.numel() if values.numel() else 0.0,
    }


def tensor_metrics(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format],
    scaling: Scaling | str = "tensor",
    *,
    rescale: bool = False,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """(records, scales) per format name for one tensor, streamed in chunks of about `chunk` elements."""
    acc, scales = accumulate_tensor(
        before, after, grad, formats, scaling, rescale=rescale, grad_eps=grad_eps, chunk=chunk
    )
    return acc.results(), scales


def accumulate_tensor(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format],
    scaling: Scaling | str = "tensor",
    *,
    rescale: bool = False,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[TensorAccumulator, dict[str, dict]]:
    """The mergeable accumulator of one tensor (for summaries across tensors) and its scales."""
    scaling = parse_scaling(scaling)
    formats = tuple(formats)
    dtype = working_dtype(before.dtype)
    shape = tuple(before.shape)
    # one amax pass per side, shared by every format
    amax_before = None if scaling.mode == "none" else group_amax(before, scaling)
    amax_after = group_amax(after, scaling) if rescale and amax_before is not None else amax_before
    scale_pairs: list[tuple[Scale, Scale]] = []
    for fmt in formats:
        s_before = scale_from_amax(amax_before, fmt, scaling, shape, dtype)
        s_after = scale_from_amax(amax_after, fmt, scaling, shape, dtype) if rescale else s_before
        scale_pairs.append((s_before, s_after))
    view = scale_pairs[0][0].view_shape() if formats else (1, before.numel())
    rows, cols = view
    b2, a2 = before.reshape(rows, cols), after.reshape(rows, cols)
    g2 = grad.reshape(rows, cols) if grad is not None else None
    acc = TensorAccumulator(formats, grad is not None)
    align = scaling.block if scaling.mode == "block" else 1
    for r0, r1, c0, c1 in iter_chunks(rows, cols, chunk, align):
        pairs = [
            tuple(None if s.is_unit else s.for_chunk(r0, r1, c0, c1).to(dtype) for s in pair)
            for pair in scale_pairs
        ]
        acc.update(
            b2[r0:r1, c0:c1],
            a2[r0:r1, c0:c1],
            None if g2 is None else g2[r0:r1, c0:c1],
            pairs,
            grad_eps,
        )
    scales = {
        fmt.name: scale_summary(pair[0], fmt)
        for fmt, pair in zip(formats, scale_pairs, strict=True)
    }
    return acc, scales
