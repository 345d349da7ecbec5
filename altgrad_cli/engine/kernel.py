"""One chunk of one tensor in, the partial statistics of every metric out: the hot loop of analyze.

Every choice here removes a pass over the chunk, because the cost of a metric is the number of
times its chunk travels through memory (and, at a few microseconds per torch call, the number of
calls):

* Work that does not depend on the format (finite check, update mask, 2|Δ|, |grad| and its
  moments, storage ULPs) is done once per chunk by `prepare_chunk` and shared by every format.
* The stiffness is S = s · P with P = 2^(k − M) a power of two, built from the exponent bits of
  before/s. S is exact (in float32 on the common path, else float64), so r = |Δ|/S ≥ 1/2 is the
  exact comparison 2|Δ| ≥ S and |g| < S is compared as it stands; dividing by S is multiplying by
  W = 1/P, also exact, and dividing the sum by s once. With one scale per tensor, S's mean, min,
  max and histogram come from the histogram of the exponents, not from a float array.
* On the common path (one scale, float32, no zero weight) every per-element class (grid steps,
  exponent, updated, predicted flip) goes into one joint histogram, and all the counts are its
  marginals: one serial pass instead of one comparison and one count each.
* With one scale per element (blocks, tiles, NVFP4, channels) and float32, S is
  built the same way, y's exponent field plus s's bits, and the same joint histogram, keyed by
  S's exponent, gives the counts. Power-of-two scales (MX) are known from the recipe: 1/s and
  1/S are exact, x·(1/s) replaces x/s, and S's moments come from the histogram too.
* Counts use count_nonzero; weighted sums are float64 dot products; M2 comes from the sum of
  squares, with a two-pass fallback where that would cancel, and is exactly 0 for equal values.

Scales arrive as None (s = 1), a 0-d tensor (one scale for the chunk) or one value per element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

from altgrad_cli.engine.stats import BinnedCounts, CoMoments, Counters, Mean, Moments, UlpHistogram
from altgrad_cli.engine.stored import (
    TABLE_LIMIT,
    StoredAccumulator,
    add_stored,
    stored_table,
    update_stored,
)
from altgrad_cli.numerics.bits import F64, INT_OF_WIDTH, count_compared, floor_log2, working_dtype
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.rounding import (
    decode_magnitude64,
    decode_magnitude64_parts,
    divide_as,
    encode_scaled,
    overflow_count,
    overflows,
)


@dataclass(frozen=True, slots=True)
class GroupedScale:
    """One scale per run of `width` consecutive elements of the flat chunk, element i's being
    `values[i // width]`: a block-scaled chunk of whole blocks, kept as its blocks' scales, so
    the kernel broadcasts them instead of writing (and converting) one scale per element."""

    values: Tensor
    width: int

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def to(self, dtype: torch.dtype) -> GroupedScale:
        return GroupedScale(self.values.to(dtype), self.width)

    def expand(self) -> Tensor:
        """One value per element."""
        return self.values.repeat_interleave(self.width)


Scales = Tensor | GroupedScale
ScalePair = tuple[Scales | None, Scales | None]
"""Per format, the scales BEFORE and AFTER are divided by."""


def _per_element(s: Scales) -> Tensor:
    return s.expand() if isinstance(s, GroupedScale) else s


def _times(x: Tensor, s: Scales) -> Tensor:
    """x · s elementwise (a new tensor), broadcasting grouped scales."""
    if isinstance(s, GroupedScale):
        return (x.view(-1, s.width) * s.values.view(-1, 1)).view(-1)
    return x * s


def _plus_times(x: Tensor, y: Tensor, s: Scales, value: float = 1.0) -> Tensor:
    """x + value · y · s elementwise (a new tensor, one rounding where value · y · s is exact),
    broadcasting grouped scales."""
    if isinstance(s, GroupedScale):
        width = s.width
        grouped_s = s.values.view(-1, 1)
        return torch.addcmul(x.view(-1, width), y.view(-1, width), grouped_s, value=value).view(-1)
    return torch.addcmul(x, y, s, value=value)


def _divided(x: Tensor, s: Scales, *, inplace: bool = False) -> Tensor:
    """x / s elementwise (in place when asked), broadcasting grouped scales."""
    if isinstance(s, GroupedScale):
        grouped = x.view(-1, s.width)
        out = grouped.div_(s.values.view(-1, 1)) if inplace else grouped / s.values.view(-1, 1)
        return out.view(-1)
    return x.div_(s) if inplace else x / s


def _gathered(s: Scales, index: Tensor) -> Tensor:
    """s at the given element positions."""
    if isinstance(s, GroupedScale):
        return s.values.index_select(0, torch.div(index, s.width, rounding_mode="floor"))
    return s.index_select(0, index)


EXP_LOW, EXP_HIGH = -1100, 1100  # floor(log2 S) of any float64 stiffness lies in here


@dataclass(slots=True)
class TensorCounts(Counters):
    """The format-independent counts of one tensor (or chunk)."""

    numel: int = 0
    n: int = 0  # elements finite on every side: the ones every statistic is over
    nonfinite: int = 0
    updates: int = 0


@dataclass(slots=True)
class FormatCounts(Counters):
    """The counts of one (tensor, format)."""

    flips: int = 0
    flips_on_updates: int = 0
    steps_sum: int = 0
    on_grid: int = 0
    overflow: int = 0
    underflow: int = 0
    stiffness_zero: int = 0  # before = 0: S undefined
    pred_flip_flipped: int = 0
    pred_flip_stalled: int = 0
    pred_stall_flipped: int = 0
    pred_stall_stalled: int = 0
    grad_below: int = 0


@dataclass
class FormatAccumulator:
    """Everything one (tensor, format) record needs, mergeable."""

    counts: FormatCounts = field(default_factory=FormatCounts)
    grid_steps: BinnedCounts = field(default_factory=lambda: BinnedCounts.empty(0, 16))
    stiffness: Mean = field(default_factory=Mean)
    stiffness_hist: BinnedCounts = field(
        default_factory=lambda: BinnedCounts.empty(EXP_LOW, EXP_HIGH)
    )
    grid_error: Moments = field(default_factory=Moments)
    grid_rel: Mean = field(default_factory=Mean)
    grad: CoMoments = field(default_factory=CoMoments)
    grad_ratio: Mean = field(default_factory=Mean)
    update_ratio: Mean = field(default_factory=Mean)
    stored: StoredAccumulator = field(default_factory=StoredAccumulator)
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
        self.stored.merge(other.stored)
        self.steps_max = max(self.steps_max, other.steps_max)


@dataclass
class Chunk:
    """The format-independent part of one chunk, finite elements only, flattened."""

    before: Tensor  # working dtype (float32, or float64 for float64 storage)
    after: Tensor
    n: int
    updated: Tensor  # bool
    n_nonzero: int
    nonzero: Tensor | None  # bool mask of before != 0; None when no element is zero
    before64: Tensor  # float64 before, exact
    inputs: RatioInputs  # for the stiffness statistics, every element (see `over_nonzero`)
    grad_moments: CoMoments | None  # the y side (|grad|) of the correlation, over before != 0
    grad_centered_sum: float  # sum of |grad| - its mean over before != 0 (≈ 0)
    absmax_before: float
    absmax_after: float
    delta: Tensor  # float64 after - before, exact
    n_updated: int
    updated_index: Tensor | None  # positions of the updated elements; None when all are
    delta_updated: Tensor  # `delta` at those positions (shared by every format's `stored`)
    abs_delta_updated: Tensor  # |delta| there
    mass_updated: float  # its sum

    def over_nonzero(self) -> RatioInputs:
        """The inputs compressed to before != 0, where the stiffness is defined."""
        if self.nonzero is None:
            return self.inputs
        keep, x = self.nonzero, self.inputs
        return RatioInputs(
            x.twice_delta[keep],
            None if x.grad is None else x.grad[keep],
            None if x.grad32 is None else x.grad32[keep],
            None if x.grad_centered is None else x.grad_centered[keep],
        )


@dataclass
class RatioInputs:
    """Per-element inputs of the update/stiffness and grad/stiffness statistics."""

    twice_delta: Tensor  # float64 2·|after - before|, exact
    grad: Tensor | None  # float64 |grad|
    grad32: Tensor | None  # the same in the working dtype
    grad_centered: Tensor | None  # |grad| minus its mean over before != 0; None when constant


def prepare_chunk(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    scales: Sequence[ScalePair],
    grad_eps: float,
    counts: TensorCounts,
    ulp: UlpHistogram,
) -> tuple[Chunk, list[ScalePair]] | None:
    """The shared part of one chunk, and the scales flattened to match it (None when no element
    is finite). `counts` and `ulp` receive the format-independent counts and distances."""
    numel = before.numel()
    counts.numel += numel
    if numel == 0:
        return None
    dtype = working_dtype(before.dtype)
    raw_b, raw_a = before.reshape(-1), after.reshape(-1)
    b, a = raw_b.to(dtype), raw_a.to(dtype)
    g = grad.reshape(-1).to(dtype) if grad is not None else None
    ranges = _ranges(b, a, g)
    flat = [_flatten(s, before.shape, None) for pair in scales for s in pair]
    if not all(map(math.isfinite, ranges)):  # rare: keep the finite elements, once, for all
        finite = torch.isfinite(b) & torch.isfinite(a)
        if g is not None:
            finite &= torch.isfinite(g)
        b, a, raw_b, raw_a = b[finite], a[finite], raw_b[finite], raw_a[finite]
        g = g[finite] if g is not None else None
        flat = [_flatten(s, before.shape, finite) for pair in scales for s in pair]
        ranges = _ranges(b, a, None) if b.numel() else [0.0] * 4
    n = b.numel()
    counts.nonfinite += numel - n
    counts.n += n
    if n == 0:
        return None
    absmax_before, absmax_after = max(-ranges[0], ranges[1]), max(-ranges[2], ranges[3])
    ulp.update(*ulp_distances(raw_b, raw_a, max(absmax_before, absmax_after)))

    abs_g = g.abs() if g is not None else None
    updated = abs_g > grad_eps if abs_g is not None else a != b
    n_updated = int(torch.count_nonzero(updated))
    counts.updates += n_updated
    updated_index = None if n_updated == n else updated.nonzero().squeeze(1)
    n_nonzero = int(torch.count_nonzero(b))
    nonzero = b != 0 if n_nonzero < n else None

    b64 = b.to(torch.float64)
    delta = a.to(torch.float64).sub(b64)
    abs_delta = delta.abs()
    twice_delta = abs_delta * 2.0
    grad64 = abs_g.to(torch.float64) if abs_g is not None else None
    grad_moments = grad_centered = None
    grad_centered_sum = 0.0
    if grad64 is not None and n_nonzero:  # moments over before != 0
        centered, mean, m2 = _centered(grad64 if nonzero is None else grad64[nonzero])
        grad_moments = CoMoments(n_nonzero, 0.0, mean, 0.0, m2, 0.0)
        if centered is not None:
            grad_centered = centered if nonzero is None else grad64 - mean
            grad_centered_sum = float(centered.sum())
    if updated_index is None:
        delta_updated, abs_delta_updated = delta, abs_delta
    else:
        delta_updated = delta.index_select(0, updated_index)
        abs_delta_updated = abs_delta.index_select(0, updated_index)
    chunk = Chunk(
        b,
        a,
        n,
        updated,
        n_nonzero,
        nonzero,
        b64,
        RatioInputs(twice_delta, grad64, abs_g, grad_centered),
        grad_moments,
        grad_centered_sum,
        absmax_before,
        absmax_after,
        delta,
        n_updated,
        updated_index,
        delta_updated,
        abs_delta_updated,
        float(abs_delta_updated.sum()),
    )
    return chunk, [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def _ranges(*xs: Tensor | None) -> list[float]:
    """min, max of each given tensor, flattened into one list (NaN propagates), in one sync."""
    return torch.stack([v for x in xs if x is not None for v in torch.aminmax(x)]).tolist()


def _flatten(s: Scales | None, shape: torch.Size, keep: Tensor | None) -> Scales | None:
    """A scale as None, a 0-d tensor, grouped scales, or one value per (kept) element."""
    if isinstance(s, GroupedScale):
        return s if keep is None else s.expand()[keep]
    if s is None or s.numel() == 1:
        return None if s is None else s.reshape(())
    per_element = s.expand(shape).reshape(-1)
    return per_element if keep is None else per_element[keep]


def _centered(x: Tensor) -> tuple[Tensor | None, float, float]:
    """(x - mean or None when x is constant, mean, M2): two-pass, so equal values give M2 = 0."""
    low, high = (float(v) for v in torch.aminmax(x))
    if low == high:
        return None, low, 0.0
    mean = float(x.sum()) / x.numel()
    centered = x - mean
    return centered, mean, float(torch.dot(centered, centered))


def ulp_distances(before: Tensor, after: Tensor, absmax: float) -> tuple[Tensor, Tensor | None]:
    """|ord(after) - ord(before)| in the storage dtype's own ordinals (±0 both 0), and the mask of
    sign changes (both sides non-zero, opposite signs; None when there is none).

    Storage floats are sign-magnitude: where both signs agree the distance is the difference of
    the raw patterns (the sign bits cancel), and where they differ it is the sum of the two
    magnitudes. Both need one more bit than the storage: int32 serves narrow dtypes and float32
    values below 2 in magnitude (patterns below 2^30), int64 the rest. Float64 values of
    opposite signs beyond ±2 can be more than 2^63 - 1 apart; such distances count as 2^63 - 1.
    """
    width = before.element_size()
    small = absmax < 2.0
    wide = torch.int32 if width < 4 or (width == 4 and small) else torch.int64
    bits_b = before.view(INT_OF_WIDTH[width]).to(wide)  # sign-extends; no copy when same
    bits_a = after.view(INT_OF_WIDTH[width]).to(wide)
    distance = (bits_a - bits_b).abs_()
    signs = bits_a ^ bits_b  # negative where the signs differ
    if int(signs.min()) >= 0:
        return distance, None
    crossed = signs < 0
    mask = (1 << (8 * width - 1)) - 1
    mag_a, mag_b = bits_a & mask, bits_b & mask
    across = mag_a + mag_b
    if width == 8 and not small:  # wrapped past 2^63 - 1
        across.masked_fill_(across < 0, 2**63 - 1)
    distance = torch.where(crossed, across, distance)
    crossed &= (mag_a != 0) & (mag_b != 0)  # from or to ±0 is no change of sign
    return distance, crossed


def grid_alignment_errors(
    abs_x: Tensor, code: Tensor, fmt: Format, s: Tensor | None, s64: Tensor | None = None
) -> Tensor:
    """e = | |x| - s·|R(x/s)| | per element, in float64 and exact: a grid value has at most 24
    significant bits and a float32 scale 24, so s·grid is exact in float64, and so is the
    difference. `abs_x` is |x| in float64, `code` the codes of x/s, `s` None (1), 0-d or one
    value per element (`s64`: the same in float64, when the caller has it). Public so the seed's
    per-element `grid_alignment_error` is this code."""
    if s is None or s.dim() == 0:  # |x| - raw·factor in one pass (the product is exact)
        raw, factor = decode_magnitude64_parts(code.abs(), fmt, 1.0 if s is None else float(s))
        return torch.add(abs_x, raw, alpha=-factor).abs_()
    return _grid_error(abs_x, decode_magnitude64(code.abs(), fmt), s, s64)


def stiffness_powers(y: Tensor, fmt: Format) -> Tensor:
    """P = 2^(clamp(floor(log2 |y|), emin, emax) - M) per element of y = x / s, as float64 (exact;
    2^-M for fixed point), so the stiffness is S = s·P; meaningless where y is 0 or not finite.
    The kernel's own exponent helpers, public so the seed's `compute_stiffness_field` is them."""
    low_exp = fmt.emin - fmt.mantissa_bits  # log2 P in bin 0 (emin is 0 for fixed point)
    if fmt.is_fixed_point:
        return torch.full(y.shape, 2.0**low_exp, dtype=torch.float64, device=y.device)
    return _power_of_two(_exponent_index(y, fmt), low_exp)


def update_format(
    acc: FormatAccumulator,
    fmt: Format,
    chunk: Chunk,
    s_before: Scales | None,
    s_after: Scales | None,
    *,
    power_of_two: bool = False,
    overflow_free: bool = False,
) -> None:
    """Add one prepared chunk to one format's partial statistics. `power_of_two`: every scale is
    a power of two (E8M0 block scales), so 1/s is exact. `overflow_free`: the scales are known
    to keep every element within ±max (`Scale.overflow_free`), so the overflow count is 0."""
    counts = acc.counts
    b, a, n = chunk.before, chunk.after, chunk.n
    if isinstance(s_before, GroupedScale) and not _grouped_path(fmt, chunk):
        # the paths this chunk takes need one scale per element
        same = s_after is s_before
        s_before = _per_element(s_before)
        s_after = s_before if same else (None if s_after is None else _per_element(s_after))
    per_element = s_before is not None and (
        isinstance(s_before, GroupedScale) or s_before.dim() != 0
    )
    inverse32 = None
    if per_element and power_of_two and s_before.dtype == torch.float32:
        # exact, 2^-127 and 2^127 included
        if isinstance(s_before, GroupedScale):
            inverse32 = GroupedScale(torch.reciprocal(s_before.values), s_before.width)
        else:
            inverse32 = torch.reciprocal(s_before)
    if inverse32 is not None:  # x·(1/s) is x/s, both correctly rounded, when 1/s is exact
        yb = _times(b, inverse32)
        ya = _times(a, inverse32) if s_after is s_before else _divided(a, s_after)
    else:
        yb = b if s_before is None else _divided(b, s_before)
        ya = a if s_after is None else _divided(a, s_after)
    top_b = _scaled_absmax(chunk.absmax_before, s_before, yb.dtype)
    top_a = _scaled_absmax(chunk.absmax_after, s_after, ya.dtype)
    code_b = encode_scaled(yb, fmt, saturate=top_b is None or top_b > fmt.max)
    code_a = encode_scaled(ya, fmt, saturate=top_a is None or top_a > fmt.max)
    wide = torch.int16 if code_b.dtype == torch.int8 else torch.int32
    steps = (code_a.to(wide) - code_b).abs_()
    s64 = s_before.to(torch.float64) if per_element else None
    inverse = inverse32.to(torch.float64) if inverse32 is not None else None
    if not overflow_free:
        counts.overflow += int(_overflow_count(yb, fmt, top_b))
    counts.underflow += chunk.n_nonzero - int(torch.count_nonzero(code_b))
    counts.stiffness_zero += n - chunk.n_nonzero
    s_value = 1.0 if s_before is None else (None if per_element else float(s_before))
    plan = _one_scale_plan(fmt, s_value, yb.dtype)

    if fmt.max_code > TABLE_LIMIT:  # no per-code table: `stored` by the float64 encoder
        update_stored(acc.stored, fmt, code_b, chunk.delta, s_before, chunk.updated)
        error = grid_alignment_errors(chunk.before64.abs(), code_b, fmt, s_before, s64)
    else:  # code_b is spent here
        error = _grid_error_and_stored(
            acc.stored, fmt, chunk, code_b, s_before, s_value, s64, inverse
        )
    error_moments = Moments.of(error)
    acc.grid_error.merge(error_moments)
    if error_moments.min == 0.0:  # error ≥ 0: its signs count the non-zero ones
        counts.on_grid += n - int(torch.sign(error).sum())

    if plan is not None:
        _update_one_scale(acc, fmt, chunk, yb, steps, error, plan, s_value)
        return
    if per_element:
        stiffness_bits = _many_scales_plan(fmt, yb, s_before, chunk)
        if stiffness_bits is not None:
            _update_many_scales(
                acc, chunk, steps, error, stiffness_bits, power_of_two=inverse32 is not None
            )
            return
        s_before, s64 = _per_element(s_before), _per_element(s64)  # the general path
        inverse = _per_element(inverse) if inverse is not None else None
    flips = int(torch.count_nonzero(steps))
    flipped = steps != 0 if flips else None
    counts.flips += flips
    if flipped is not None:
        counts.flips_on_updates += int(torch.count_nonzero(flipped & chunk.updated))
    _add_grid_steps(acc, steps, flips)
    if chunk.n_nonzero == 0:
        return
    if chunk.nonzero is not None:  # stiffness is over before != 0
        keep = chunk.nonzero
        yb, error = yb[keep], error[keep]
        flipped = flipped[keep] if flipped is not None else None
        if s_value is None:
            s_before, s64 = s_before[keep], s64[keep]
            inverse = inverse[keep] if inverse is not None else None
        flips = int(torch.count_nonzero(flipped)) if flipped is not None else 0
    stiff, mean_s, m2_s = _stiffness(acc, fmt, yb, s_before, s_value, s64, inverse)
    inputs = chunk.over_nonzero()
    big = inputs.twice_delta >= stiff.values
    n_big = int(torch.count_nonzero(big))
    big_flipped = int(torch.count_nonzero(big & flipped)) if flipped is not None else 0
    _add_stiffness_ratios(
        acc, chunk, inputs, stiff, (mean_s, m2_s), error, flips, n_big, big_flipped
    )


def _grouped_path(fmt: Format, chunk: Chunk) -> bool:
    """Whether grouped scales can stay grouped: float32, a per-code table for `stored`, and a
    format `_many_scales_plan` takes (the other paths work on one scale per element)."""
    return (
        chunk.before.dtype == torch.float32
        and fmt.max_code <= TABLE_LIMIT
        and _many_scales_format(fmt, chunk)
    )


def _many_scales_format(fmt: Format, chunk: Chunk) -> bool:
    """The format and chunk `_update_many_scales` can take: floating point, emin within float32's
    normal range, and some non-zero weight."""
    return not fmt.is_fixed_point and fmt.emin >= -126 and chunk.n_nonzero > 0


def _update_one_scale(
    acc: FormatAccumulator,
    fmt: Format,
    chunk: Chunk,
    yb: Tensor,
    steps: Tensor,
    error: Tensor,
    plan: tuple[int, int],
    s: float,
) -> None:
    """The common case, one scale and float32: S and W are integer adds on y's exponent field,
    and every per-element class (grid steps, exponent, updated, predicted flip) goes into one
    joint histogram whose marginals give all the counts: one serial pass. Zero weights, where S
    is undefined, stay in the arrays with S = W = 0 (so they drop out of every sum and of
    |g| < S) and their share of the histogram (exponent bin 0, predicted flip) is taken out."""
    c_s, c_w = plan
    field = _exponent_field(yb, fmt)
    values32 = (field + c_s).view(torch.float32)
    weight32 = (c_w - field).view(torch.float32)
    zero = None if chunk.nonzero is None else ~chunk.nonzero
    if zero is not None:
        values32.masked_fill_(zero, 0.0)
        weight32.masked_fill_(zero, 0.0)
    stiff = _Stiffness(values32.to(torch.float64), weight32.to(torch.float64), s, values32)
    inputs = chunk.inputs
    big = inputs.twice_delta >= stiff.values  # |Δ|/S ≥ 1/2, exactly (always, for zero weights)

    n = chunk.n
    low = (fmt.emin + 127) << 7
    flips, n_big, big_flipped, exponent_bins = _joint_counts(
        acc, chunk, steps, field >> 16, big, low, fmt.emax - fmt.emin + 1
    )
    if zero is not None:  # zero weights: all in exponent bin 0 and predicted to flip
        zero_flips = int(torch.count_nonzero((steps != 0) & zero)) if flips else 0
        n_zero = n - chunk.n_nonzero
        exponent_bins[0] -= n_zero
        n_big, big_flipped, flips = n_big - n_zero, big_flipped - zero_flips, flips - zero_flips
    if chunk.n_nonzero == 0:
        return
    moments = _one_scale_moments(acc, fmt, exponent_bins, s)
    _add_stiffness_ratios(acc, chunk, inputs, stiff, moments, error, flips, n_big, big_flipped)


def _update_many_scales(
    acc: FormatAccumulator,
    chunk: Chunk,
    steps: Tensor,
    error: Tensor,
    stiffness_bits: Tensor,
    power_of_two: bool,
) -> None:
    """One scale per element (blocks, tiles, NVFP4), float32: S = s · 2^(k − M) is a normal
    float32, its bits y's exponent field plus s's bits (exact: a power of two times s), and the
    counts come from one joint histogram keyed by S's exponent, as in `_update_one_scale`. With
    power-of-two scales (MX) S is a power of two: 1/S is exact too and S's moments come from
    that histogram; otherwise from the values. `stiffness_bits` holds S's bits (see
    `_many_scales_plan`). Zero weights, where S is undefined, get S = W = 0 (out of every sum
    and of |g| < S) and exponent bin 0, which no normal S has; their share of the predicted
    flips is taken out, as in `_update_one_scale`."""
    zero = None if chunk.nonzero is None else ~chunk.nonzero
    if zero is not None:
        stiffness_bits.masked_fill_(zero, 0)
    values32 = stiffness_bits.view(torch.float32)
    values = values32.to(torch.float64)
    if power_of_two:
        weight32 = ((254 << 23) - stiffness_bits).view(torch.float32)  # exact
        if zero is not None:
            weight32.masked_fill_(zero, 0.0)
        weight = weight32.to(torch.float64)
        exponent_code = stiffness_bits >> 16  # no mantissa bits below the exponent
    else:
        weight = torch.reciprocal(values)
        if zero is not None:
            weight.masked_fill_(zero, 0.0)
        exponent_code = (stiffness_bits & 0x7F800000) >> 16
    stiff = _Stiffness(values, weight, 1.0, values32)
    # always, for zero weights; int32 1 or 0, as the joint histogram's index adds it
    big = torch.ge(chunk.inputs.twice_delta, values, out=torch.empty_like(stiffness_bits))
    flips, n_big, big_flipped, bins = _joint_counts(acc, chunk, steps, exponent_code, big, 0, 256)
    n = chunk.n_nonzero
    if zero is not None:  # zero weights: all in exponent bin 0 and predicted to flip
        zero_flips = int(torch.count_nonzero((steps != 0) & zero)) if flips else 0
        bins[0] -= chunk.n - n
        n_big, big_flipped, flips = (
            n_big - (chunk.n - n),
            big_flipped - zero_flips,
            flips - zero_flips,
        )
    if power_of_two:
        moments = _binned_moments(acc, bins, -127, 1.0)  # bin b holds S = 2^(b − 127)
    else:
        acc.stiffness_hist.add_counts(-127, bins)  # bin b: floor(log2 S) = b − 127
        if zero is None:  # on the float32 values: the same numbers, half the bytes
            low, high = (float(v) for v in torch.aminmax(values32))
        else:
            high = float(values32.max())
            low = float(values.masked_fill(zero, math.inf).min())
        mean = float(values.sum()) / n
        m2 = 0.0
        if low != high:
            centered = values - mean
            if zero is not None:
                centered.masked_fill_(zero, 0.0)
            m2 = float(torch.dot(centered, centered))
        acc.stiffness.merge(Mean(n, mean * n, low, high))
        moments = (mean, m2)
    _add_stiffness_ratios(
        acc, chunk, chunk.inputs, stiff, moments, error, flips, n_big, big_flipped
    )


def _many_scales_plan(fmt: Format, yb: Tensor, s: Scales, chunk: Chunk) -> Tensor | None:
    """S's float32 bits for `_update_many_scales`, or None where that path does not apply: y or
    s not float32, fixed point, an emin below float32's normal range, no non-zero weight, or
    scales for which S or 1/S would leave float32's normal range."""
    if yb.dtype != torch.float32 or s.dtype != torch.float32 or not _many_scales_format(fmt, chunk):
        return None
    group = s.values if isinstance(s, GroupedScale) else s
    low, high = (int(v) >> 23 for v in torch.aminmax(group.view(torch.int32)))  # s > 0: in order
    mantissa = fmt.mantissa_bits
    e_low, e_high = low - 127, high - 127
    if not (
        low >= 1
        and e_low + fmt.emin - mantissa - 1 >= -126
        and e_high + 1 + fmt.emax - mantissa <= 126
    ):
        return None
    field = _exponent_field(yb, fmt)
    bias = (127 + mantissa) << 23
    if isinstance(s, GroupedScale):  # the bias taken off each group's bits, not each element
        field.view(-1, s.width).add_((s.values.view(torch.int32) - bias).view(-1, 1))
        return field
    return field.add_(s.view(torch.int32)).sub_(bias)


def _joint_counts(
    acc: FormatAccumulator,
    chunk: Chunk,
    steps: Tensor,
    exponent_code: Tensor,
    big: Tensor,
    low: int,
    span: int,
) -> tuple[int, int, int, Tensor]:
    """(flips, n_big, big_flipped, count per exponent bin) from one joint histogram of exponent
    bin × predicted flip × updated × min(steps, 16); adds the grid steps and flip counts to
    `acc`. `exponent_code` is the biased exponent · 128 (an exponent field >> 16), `low` the
    code of bin 0 and `span` the number of bins."""
    n = chunk.n
    steps_max = int(steps.max())
    acc.steps_max = max(acc.steps_max, steps_max)
    if steps_max >= 16:  # the histogram clamps at 16; else the sum comes from it
        wide_enough = steps_max * n < 2**31
        acc.counts.steps_sum += int(steps.sum(dtype=torch.int32 if wide_enough else torch.int64))
    # index = biased exponent · 128 + predicted flip · 64 + updated · 32 + min(steps, 16)
    index = exponent_code.add_(steps.clamp_(max=16))
    index.add_(chunk.updated, alpha=32).add_(big, alpha=64)
    joint = torch.bincount(index, minlength=low + (span << 7))[low:].view(span, 2, 2, 32)
    by_class = joint.sum(dim=0).tolist()  # [big][updated][steps]
    grid_steps = [sum(by_class[x][u][k] for x in (0, 1) for u in (0, 1)) for k in range(17)]
    acc.grid_steps.counts += torch.tensor(grid_steps)
    if steps_max < 16:
        acc.counts.steps_sum += sum(k * c for k, c in enumerate(grid_steps))
    flips = n - grid_steps[0]
    n_big = sum(map(sum, by_class[1]))
    big_flipped = n_big - by_class[1][0][0] - by_class[1][1][0]
    acc.counts.flips += flips
    acc.counts.flips_on_updates += sum(by_class[0][1][1:]) + sum(by_class[1][1][1:])
    return flips, n_big, big_flipped, joint.sum(dim=(1, 2, 3))


def _grid_error_and_stored(
    stored: StoredAccumulator,
    fmt: Format,
    chunk: Chunk,
    code: Tensor,
    s: Scales | None,
    s_value: float | None,
    s64: Scales | None,
    inverse: Scales | None,
) -> Tensor:
    """The grid alignment errors of BEFORE, and the chunk's `stored` sums: both start from the
    grid value of each code, gathered once from the stored table (s·g with one scale, g with one
    per element; `code` becomes its row index). With float32 scales s·g is exact in float64, so
    the error |b − s·g| is too; float64 scales (float64 storage) take `grid_alignment_errors`."""
    exact = chunk.before.dtype == torch.float32
    # before `code` becomes the table index (in place)
    error = None if exact else grid_alignment_errors(chunk.before64.abs(), code, fmt, s, s64)
    one_scale = s_value is not None
    table = stored_table(fmt, s_value if one_scale else 1.0)
    index = code.to(torch.int32).add_(fmt.max_code)  # in place for int32 codes
    w = torch.index_select(table.value, 0, index)
    # s·g is exact for float32 s, so b − s·g and s·g + Δ are each one rounding, as one pass
    if one_scale and exact:
        error = chunk.before64.sub(w).abs_()
    elif exact:
        error = _plus_times(chunk.before64, w, s64, value=-1.0).abs_()
    keep = chunk.updated_index
    if keep is not None:  # the updated elements only: one shared index, gathers
        index, w = index.index_select(0, keep), w.index_select(0, keep)
        if not one_scale:
            s64 = _gathered(s64, keep)
            inverse = _gathered(inverse, keep) if inverse is not None else None
    delta = chunk.delta_updated
    if one_scale:
        position = w + delta  # z = s·g + Δ: one float64 rounding
    elif inverse is not None:  # power-of-two s: g + Δ·(1/s) is (s·g + Δ)/s, in one pass
        position = _plus_times(w, delta, inverse)
    else:  # y = z / s, which crosses no midpoint (engine/stored.py)
        # z = s·g + Δ; a float64 s (float64 storage) rounds s·g first, as Q does
        z = _plus_times(delta, w, s64) if exact else _times(w, s64).add_(delta)
        position = _divided(z, s64, inplace=True)
    add_stored(stored, table, index, w, position, chunk.abs_delta_updated, chunk.mass_updated)
    return error


def _grid_error(abs_before: Tensor, grid: Tensor, s: Tensor, s64: Tensor | None = None) -> Tensor:
    """| |b| - s·q | per element in float64, zero exactly when |b| = s·q. A float32 s times a
    grid value (at most 24 bits each) is exact in float64; a float64 s (float64 storage) is not,
    so there the product's rounding error is carried (Dekker's two-product) and subtracted."""
    if s.dtype != torch.float64:
        return abs_before.sub(grid.mul_(s.to(torch.float64) if s64 is None else s64)).abs_()
    product = grid * s
    g_hi, g_lo = _split(grid)
    s_hi, s_lo = _split(s)
    rounding = ((g_hi * s_hi - product) + g_hi * s_lo + g_lo * s_hi) + g_lo * s_lo  # exact
    return abs_before.sub(product).sub_(rounding).abs_()


def _split(x: Tensor) -> tuple[Tensor, Tensor]:
    """Veltkamp's split of float64 x into a 26-bit high part and the rest (x = hi + lo)."""
    c = x * 134217729.0  # 2^27 + 1
    hi = c - (c - x)
    return hi, x - hi


def _add_grid_steps(acc: FormatAccumulator, steps: Tensor, flips: int) -> None:
    """Grid-step counts and the sum and max of the steps."""
    n = steps.numel()
    if flips == 0:
        acc.grid_steps.counts[0] += n
        return
    steps_max = int(steps.max())
    acc.steps_max = max(acc.steps_max, steps_max)
    acc.counts.steps_sum += int(steps.sum(dtype=torch.int64))
    if steps_max == 1:
        acc.grid_steps.counts[:2] += torch.tensor([n - flips, flips])
    else:
        acc.grid_steps.counts += torch.bincount(steps.clamp_(max=16).to(torch.uint8), minlength=17)


def _scaled_absmax(absmax: float, s: Scales | None, dtype: torch.dtype) -> float | None:
    """max |x / s| over the chunk, from max |x|, rounded as the elementwise division rounds (so
    exactly the largest |y|: division by a positive number is monotone); None with one scale
    per element."""
    if s is None:
        return absmax
    if isinstance(s, GroupedScale) or s.dim() != 0:
        return None
    return divide_as(absmax, float(s), dtype)


def _overflow_count(y: Tensor, fmt: Format, top: float | None) -> int:
    """Elements beyond ±max before saturation; no pass when even the largest |y| is not."""
    if top is not None and not overflows(top, fmt, y.dtype):
        return 0
    return overflow_count(y, fmt)


def _exponent_index(y: Tensor, fmt: Format) -> Tensor:
    """clamp(floor(log2 |y|), emin, emax) - emin for y != 0, straight from the exponent bits
    (a float32 subnormal or zero y has field 0, which the clamp sends to emin)."""
    if y.dtype == torch.float32 and fmt.emin >= -126:
        field, bias = (y.view(torch.int32) >> 23) & 0xFF, 127
    elif y.dtype == torch.float64:
        field, bias = (y.view(torch.int64) >> 52) & 0x7FF, F64.bias
    else:  # a custom format whose emin lies below float32's normal range
        field, bias = floor_log2(y), 0
    return field.clamp_(fmt.emin + bias, fmt.emax + bias).sub_(fmt.emin + bias)


def _power_of_two(index: Tensor, offset: int) -> Tensor:
    """2^(index + offset) as float64, by placing the exponent (always in float64's normal range)."""
    return ((index.to(torch.int64) + (offset + F64.bias)) << 52).view(torch.float64)


@dataclass
class _Stiffness:
    """S of the chunk's non-zero elements: one float64 per element, or one number for all of them.

    With one scale s, S = s·P and P a power of two, so sums of x/S are dot(x, W)/s with W = 1/P
    exact; `weight` holds W then (None with one scale per element, where x/S is divided out)."""

    values: Tensor | float
    weight: Tensor | float | None
    scale: float | None
    values32: Tensor | None = None  # S as float32, when that is exact


@lru_cache(maxsize=1024)
def _one_scale_plan(fmt: Format, s: float | None, dtype: torch.dtype) -> tuple[int, int] | None:
    """(C_S, C_W) such that S and W are the float32 bit patterns `field + C_S` and `C_W - field`,
    field being y's exponent field in place ((k + 127) << 23, see `_exponent_field`); None unless
    there is one scale, y is float32 and S, S/2 and W are all normal float32 numbers, so exact."""
    if s is None or dtype != torch.float32 or fmt.is_fixed_point or fmt.emin < -126:
        return None
    mantissa, scale_exp = fmt.mantissa_bits, math.frexp(s)[1] - 1
    if not (
        s >= 2.0**-126
        and scale_exp + fmt.emin - mantissa - 1 >= -126
        and scale_exp + fmt.emax - mantissa <= 127
        and mantissa - fmt.emax >= -126
        and mantissa - fmt.emin <= 127
    ):
        return None
    s_bits = struct.unpack("<i", struct.pack("<f", s))[0]
    return s_bits - ((127 + mantissa) << 23), (254 + mantissa) << 23


def _exponent_field(y: Tensor, fmt: Format) -> Tensor:
    """float32 y's exponent field, left in place and clamped to [emin, emax] + 127 (zero and
    subnormal y have field 0, which the clamp sends to emin, as the SPEC's clamp does)."""
    return (y.view(torch.int32) & 0x7F800000).clamp_((fmt.emin + 127) << 23, (fmt.emax + 127) << 23)


def _one_scale_moments(
    acc: FormatAccumulator, fmt: Format, bins: Tensor, s: float
) -> tuple[float, float]:
    """S's mean and M2 from the exponent histogram (one S per bin); adds mean, min, max and the
    histogram of floor(log2 S) to `acc`."""
    return _binned_moments(acc, bins, fmt.emin - fmt.mantissa_bits, s)  # log2 P in bin 0


def _binned_moments(
    acc: FormatAccumulator, bins: Tensor, low_exp: int, s: float
) -> tuple[float, float]:
    """The same for bins i holding S = s · 2^(low_exp + i)."""
    occupied = [(math.ldexp(s, low_exp + i), c) for i, c in enumerate(bins.tolist()) if c]
    n = sum(c for _, c in occupied)
    mean = math.fsum(level * c for level, c in occupied) / n
    m2 = math.fsum(c * (level - mean) ** 2 for level, c in occupied) if len(occupied) > 1 else 0.0
    acc.stiffness.merge(Mean(n, mean * n, occupied[0][0], occupied[-1][0]))
    acc.stiffness_hist.add_counts(low_exp + math.frexp(s)[1] - 1, bins)
    return mean, m2


def _stiffness(
    acc: FormatAccumulator,
    fmt: Format,
    yb: Tensor,
    s: Tensor | None,
    s_value: float | None,
    s64: Tensor | None = None,
    inverse: Tensor | None = None,
) -> tuple[_Stiffness, float, float]:
    """(S, its mean, its M2) for the chunk's non-zero elements in float64, for any scale and
    storage; adds S's mean, min, max and histogram to `acc`. Sums of x/S are dot products with
    W = 1/S: exact when the scales are powers of two (`inverse` = 1/s, exact; S is one too), else
    within an ULP per term, as the float64 sum itself is."""
    n = yb.numel()
    low_exp = fmt.emin - fmt.mantissa_bits  # log2 P in bin 0 (emin is 0 for fixed point)
    index = None if fmt.is_fixed_point else _exponent_index(yb, fmt)
    if s_value is not None:
        if index is None:  # fixed point: S = s · 2^-M for every element
            bins = torch.tensor([n])
            values, weight = s_value * 2.0**low_exp, 2.0**-low_exp
        else:
            bins = torch.bincount(index, minlength=fmt.emax - fmt.emin + 1)
            values = _power_of_two(index, low_exp).mul_(s_value)
            weight = _power_of_two(-index.to(torch.int64), -low_exp)
        mean, m2 = _one_scale_moments(acc, fmt, bins, s_value)
        return _Stiffness(values, weight, s_value), mean, m2
    s64 = s.to(torch.float64) if s64 is None else s64
    weight = None
    if index is None:
        values, exponents = s64 * 2.0**low_exp, low_exp
        if inverse is not None:
            weight = inverse * 2.0**-low_exp
    else:
        values = _power_of_two(index, low_exp).mul_(s64)
        exponents = index.to(torch.int64) + low_exp
        if inverse is not None:
            weight = _power_of_two(-index.to(torch.int64), -low_exp).mul_(inverse)
    if s.dtype == torch.float32:  # S = P·s is a normal float64: floor(log2 S) is its exponent
        field = values.view(torch.int64) >> 52  # S > 0, so no sign bit
        acc.stiffness_hist.add_counts(-F64.bias, torch.bincount(field, minlength=2047))
    else:  # a float64 s may be subnormal, and S with it
        acc.stiffness_hist.update(floor_log2(s64).add_(exponents))  # floor(log2 S)
    low, high = torch.aminmax(values)
    _, mean, m2 = _centered(values)
    acc.stiffness.merge(Mean(n, mean * n, float(low), float(high)))
    if weight is None:  # one division for the three sums of x/S, each then a dot product
        weight = torch.reciprocal(values)
    return _Stiffness(values, weight, 1.0), mean, m2


def _add_stiffness_ratios(
    acc: FormatAccumulator,
    chunk: Chunk,
    inputs: RatioInputs,
    stiff: _Stiffness,
    moments: tuple[float, float],
    error: Tensor,
    flips: int,
    n_big: int,
    big_flipped: int,
) -> None:
    """update/stiffness and grad/stiffness statistics over the non-zero elements; `n_big` of
    them have r = |Δ|/S ≥ 1/2, `big_flipped` of those flipped, `flips` flipped in all. `inputs`,
    `stiff` and `error` are either compressed to before != 0 or hold S = W = 0 at zero weights;
    `moments` are S's mean and M2."""
    counts, n = acc.counts, chunk.n_nonzero
    mean_s, m2_s = moments
    counts.pred_flip_flipped += big_flipped
    counts.pred_flip_stalled += n_big - big_flipped
    counts.pred_stall_flipped += flips - big_flipped
    counts.pred_stall_stalled += n - n_big - (flips - big_flipped)
    acc.update_ratio.merge(Mean(n, _sum_over_stiffness(inputs.twice_delta, stiff) / 2))
    acc.grid_rel.merge(Mean(n, _sum_over_stiffness(error, stiff)))

    if inputs.grad is None:
        return
    acc.grad_ratio.merge(Mean(n, _sum_over_stiffness(inputs.grad, stiff)))
    if stiff.values32 is not None:  # the same comparison on half the bytes: both sides exact
        counts.grad_below += count_compared(torch.lt, inputs.grad32, stiff.values32)
    else:
        counts.grad_below += count_compared(torch.lt, inputs.grad, stiff.values)
    # co-moment against the centred |grad|: sum(S·gc) - mean(S)·sum(gc), as sum(gc) ≈ 0
    if inputs.grad_centered is None or isinstance(stiff.values, float) or m2_s == 0.0:
        c_xy = 0.0
    else:
        c_xy = (
            float(torch.dot(stiff.values, inputs.grad_centered)) - mean_s * chunk.grad_centered_sum
        )
    y = chunk.grad_moments
    acc.grad.merge(CoMoments(n, mean_s, y.mean_y, m2_s, y.m2_y, c_xy))


def _sum_over_stiffness(x: Tensor, stiff: _Stiffness) -> float:
    """sum(x / S)."""
    if isinstance(stiff.values, float):
        return float(x.sum()) / stiff.values
    if stiff.weight is not None:
        return float(torch.dot(x, stiff.weight)) / stiff.scale
    return float((x / stiff.values).sum())
