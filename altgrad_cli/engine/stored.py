"""The stored-weights counterfactual (SPEC §Metrics `stored`): what this step would have done to
weights kept in the format itself, with no higher-precision master copy.

w = Q(before) = s · R(before / s) is the stored weight, Δ = after − before the step (exact in
float64), and w' = Q(w + Δ) under BEFORE's scale what the stored weight becomes. Round-to-nearest
(RNE) keeps w' = w whenever |Δ| stays within half a grid step: that update is lost. Stochastic
rounding (SR) rounds y = (w + Δ) / s up to the grid value above, hi, with probability
(y − lo) / (hi − lo), so it moves the weight with probability P and keeps the update in
expectation.

Exactness. z = w + Δ is one float64 rounding (w = s · g and Δ are both exact float64 values);
after that the grid rounding is the only one. Whether R(z / s) leaves g is decided without
dividing: it does when z passes the midpoint (g ± gap/2) · s, and that product is exact in
float64 (a midpoint has at most 25 significant bits, a float32 scale 24). At the midpoint itself
the tie goes to the even code. With one scale per element, y = z / s is divided in float64 and
compared with the midpoints: for a float32 scale that rounding cannot cross one either (m · s is
a float64 whose last bit lies above z's, so z ≠ m · s puts z / s more than half an ULP from m).
For F64 checkpoints under a non-power-of-two scale (53-bit s) the midpoint products, or the
quotient, carry one float64 rounding, as Q's own x / s does for F64 inputs. P is a probability,
|z − w| / (gap · s) in float64 (relative error about 1e-16).

Per code, g, the gaps to both neighbours and the half gaps come from a table built once per
format (and per scale, for one scale a chunk), so a chunk costs a few gathers and compares.

Every number is a mergeable sum (counts, float64 sums), so chunks, tensors and shards combine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.rounding import decode_magnitude64, encode_scaled_bits
from altgrad_cli.report.records import Stored

TABLE_LIMIT = 1 << 16
"""Formats with at most this many positive codes (every registry format) use the per-code table."""


@dataclass
class StoredAccumulator:
    """Partial sums of the `stored` group over updated elements."""

    updates: int = 0  # updated elements (the denominator of rne_lost_frac)
    rne_moved: int = 0  # #(w' ≠ w) under round-to-nearest
    mass: float = 0.0  # Σ |Δ|
    lost_mass: float = 0.0  # Σ |Δ| where w' = w under round-to-nearest
    sr_expected: float = 0.0  # Σ P(w' ≠ w) under stochastic rounding
    sr_variance: float = 0.0  # Σ P (1 − P)

    def merge(self, other: StoredAccumulator) -> None:
        self.updates += other.updates
        self.rne_moved += other.rne_moved
        self.mass += other.mass
        self.lost_mass += other.lost_mass
        self.sr_expected += other.sr_expected
        self.sr_variance += other.sr_variance

    def result(self) -> Stored:
        """The record's `stored` group; ratios are 0 when their denominator is 0."""
        return Stored(
            rne_moved=self.rne_moved,
            rne_lost_frac=1.0 - self.rne_moved / self.updates if self.updates else 0.0,
            lost_mass_frac=min(1.0, self.lost_mass / self.mass) if self.mass > 0 else 0.0,
            sr_expected_moved=self.sr_expected,
            sr_moved_std=math.sqrt(max(self.sr_variance, 0.0)),
        )


def update_stored(
    acc: StoredAccumulator,
    fmt: Format,
    code_before: Tensor,
    delta: Tensor,
    scale: Tensor | None,
    updated: Tensor | None = None,
) -> None:
    """Add one chunk to `acc`.

    `code_before` holds the signed codes of R(before / s) (any integer dtype), `delta` the exact
    float64 steps after − before, `scale` BEFORE's scale (None for s = 1, a 0-d tensor, or a
    tensor broadcastable to the chunk), `updated` the mask of updated elements (None: all).
    All are finite; elements outside `updated` are left out. The kernel, which already holds
    the gathered grid values, calls `add_stored` instead.
    """
    code = code_before.reshape(-1)
    d = delta.reshape(-1)
    s = None if scale is None else scale
    if s is not None and s.dim() != 0:
        s = s.reshape(()) if s.numel() == 1 else s.expand(code_before.shape).reshape(-1)
    if updated is not None:
        keep = updated.reshape(-1)
        if int(torch.count_nonzero(keep)) < code.numel():
            code, d = code[keep], d[keep]
            s = s[keep] if s is not None and s.dim() != 0 else s
    if fmt.max_code > TABLE_LIMIT:
        acc.updates += code.numel()
        if code.numel():
            moved, p = _by_rounding(fmt, code, d, s)
            _add_outcomes(acc, (~moved).to(torch.float64), p, d.abs())
        return
    one_scale = s is None or s.dim() == 0
    table = stored_table(fmt, 1.0 if s is None else float(s) if one_scale else 1.0)
    index = code.to(torch.int32, copy=True).add_(fmt.max_code)  # index_select takes int32
    w = torch.index_select(table.value, 0, index)  # s·g with one scale, else g in grid units
    if one_scale:
        position = w + d  # z: one float64 rounding
    else:  # one scale per element: y = z / s, which crosses no midpoint (module docstring)
        s64 = s.to(torch.float64)
        position = (w * s64).add_(d).div_(s64)
    add_stored(acc, table, index, w, position, d.abs())


def add_stored(
    acc: StoredAccumulator,
    table: StoredTable,
    index: Tensor,
    w: Tensor,
    position: Tensor,
    abs_delta: Tensor,
    mass: float | None = None,
) -> None:
    """Add updated elements given by their table rows: `index` (int32, code + max_code; reused
    as scratch), `w` the table's value there, `position` z = w + Δ (y = g + Δ/s with one scale
    per element, in grid units), `abs_delta` |Δ| and `mass` its sum (when the caller has it).
    `position` is consumed."""
    acc.updates += index.numel()
    if index.numel():
        stays, p = _by_table(table, index, w, position)
        _add_outcomes(acc, stays, p, abs_delta, mass)


def _add_outcomes(
    acc: StoredAccumulator, stays: Tensor, p: Tensor, abs_delta: Tensor, mass: float | None = None
) -> None:
    """The sums of one chunk's outcomes: `stays` is float64 1 where w' = w under RNE and 0
    elsewhere (a sum counts them exactly, a dot product sums |Δ| over them), `p` is P(w' ≠ w)."""
    n = stays.numel()
    n_stays = int(stays.sum())
    if mass is None:
        mass = float(abs_delta.sum())
    if n_stays == n:
        lost = mass
    elif n_stays == 0:
        lost = 0.0
    else:  # Σ|Δ| where w' = w, summed directly (never mass − moved: that would cancel)
        lost = float(torch.dot(abs_delta, stays))
    acc.rne_moved += n - n_stays
    acc.mass += mass
    acc.lost_mass += lost
    acc.sr_expected += float(p.sum())
    # Σ P(1 − P) term by term: ΣP − ΣP² cancels when most P are near 0 or 1 (1 − P is exact
    # for P ≥ ½), and the summary's std must not depend on how the tensor was chunked
    acc.sr_variance += float(torch.dot(p, 1.0 - p))


@dataclass(frozen=True)
class StoredTable:
    """Per signed code c (row c + max_code): the grid value g and, per side, the gap to the
    neighbour and the half gap R must pass to leave g.

    Row 2i of `gaps` and `halves` is the side below g, row 2i + 1 the side above. A half gap is
    moved one float64 ULP inwards where the tie goes to the neighbour (c odd), so one strict
    compare of |z − w| decides: z − w is exact wherever it is near a midpoint (Sterbenz: z and
    w are then within a factor of 2, or w is 0). Saturated ends have infinite gaps."""

    value: Tensor
    gaps: Tensor
    halves: Tensor
    inverse_gaps: Tensor | None  # 1 / gaps where every gap is a power of two (exact), else None


@lru_cache(maxsize=8)  # a bf16 table is 3.1 MB
def stored_table(fmt: Format, s: float = 1.0) -> StoredTable:
    """The table of `fmt`, every entry multiplied by the scale s (exact: see the module docstring)."""
    top = fmt.max_code
    codes = torch.arange(-top, top + 1, dtype=torch.int64)
    g = decode_magnitude64(codes.abs(), fmt).mul_(torch.sign(codes).to(torch.float64))
    inf = torch.tensor([math.inf], dtype=torch.float64)
    gap_up = torch.cat([g[1:] - g[:-1], inf])
    gap_down = torch.cat([inf, g[1:] - g[:-1]])
    gaps = torch.stack([gap_down, gap_up], dim=1).reshape(-1) * s
    odd = (codes % 2).bool().repeat_interleave(2)
    halves = gaps / 2
    halves = torch.where(odd, torch.nextafter(halves, torch.zeros(())), halves)
    finite = gaps[torch.isfinite(gaps)]
    powers_of_two = bool((torch.frexp(finite).mantissa == 0.5).all())
    return StoredTable(g * s, gaps, halves, torch.reciprocal(gaps) if powers_of_two else None)


def _by_table(
    table: StoredTable, index: Tensor, w: Tensor, position: Tensor
) -> tuple[Tensor, Tensor]:
    """(stays under RNE as float64 1 or 0, P(moved) under SR): the side of g that z lies on picks
    one gap and one half gap, so two gathers (index_select, several times faster than indexing)
    and no select."""
    offset = position.sub_(w)  # z − w (or y − g): where SR goes and how far
    # compares written into a numeric tensor: several times faster than into a bool one
    side = torch.gt(offset, 0, out=torch.empty_like(index)).add_(index, alpha=2)
    offset.abs_()
    half = torch.index_select(table.halves, 0, side)
    stays = torch.le(offset, half, out=half)
    if table.inverse_gaps is not None:  # |z − w| · (1/gap) is |z − w| / gap when 1/gap is exact
        p = offset.mul_(torch.index_select(table.inverse_gaps, 0, side))
    else:
        p = offset.div_(torch.index_select(table.gaps, 0, side))
    p.clamp_(max=1.0)
    return stays, p


def _by_rounding(fmt: Format, code: Tensor, d: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
    """The same without a table (formats with more than 2^16 codes): y = z / s rounded by the
    float64 encoder, the neighbour on y's side decoded for the gap."""
    code = code.to(torch.int64)
    g = decode_magnitude64(code.abs(), fmt).mul_(torch.sign(code).to(torch.float64))
    s64 = None if s is None else s.to(torch.float64)
    z = g * s64 if s64 is not None else g.clone()
    z.add_(d)
    y = z.div_(s64) if s64 is not None else z
    moved = encode_scaled_bits(y, fmt).to(torch.int64) != code
    offset = y.sub_(g)
    step = torch.sign(offset).to(torch.int64)
    neighbour = (code + step).clamp_(-fmt.max_code, fmt.max_code)
    gap = decode_magnitude64(neighbour.abs(), fmt).mul_(torch.sign(neighbour)).sub_(g).abs_()
    p = offset.abs_().div_(gap).clamp_(max=1.0).nan_to_num_(nan=0.0)
    p.masked_fill_(gap == 0, 0.0)  # saturated at ±max: stays
    return moved, p
