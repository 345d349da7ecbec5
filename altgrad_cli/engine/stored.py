"""The stored-weights counterfactual (SPEC §Metrics `stored`): what this step would have done to
weights kept in the format itself, with no higher-precision master copy.

w = Q(before) = s · R(before / s) is the stored weight, Δ = after − before the step (exact in
float64), and w' = Q(w + Δ) under BEFORE's scale what the stored weight becomes. Round-to-nearest
(RNE) keeps w' = w whenever |Δ| stays within half a grid step: that update is lost. Stochastic
rounding (SR) rounds y = (w + Δ) / s up to the grid value above, hi, with probability
(y − lo) / (hi − lo), so it moves the weight with probability P and keeps the update in
expectation.

Exactness. z = w + Δ is one float64 rounding (w = s · g and Δ are both exact float64 values). The
quotient y = z / s is taken in float64 and rounded to the grid from there. For a float32 scale
(every checkpoint but F64) that second rounding cannot change the result: a grid value or a
midpoint m has at most 25 significant bits and s at most 24, so m · s is a float64 with its last
bit above z's last bit; z ≠ m · s then means |z/s − m| > half an ULP of z/s, and the float64
quotient lands on the same side of m (and on m exactly when z/s = m). So R(fl(z / s)) = R(z / s),
ties and grid hits included. For F64 checkpoints under a non-power-of-two scale, s has 53 bits
and z / s carries one float64 rounding, as the quotient x / s of Q itself does for F64 inputs.
P is a probability computed in float64 from the same y (relative error about 1e-16).

Every number is a mergeable sum (counts, float64 sums), so chunks, tensors and shards combine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.rounding import decode_magnitude64, encode_scaled_bits
from altgrad_cli.report.records import Stored


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
    All are finite; elements outside `updated` are left out.
    """
    code = code_before.reshape(-1)
    d = delta.reshape(-1)
    s = None if scale is None else scale.to(torch.float64)
    if s is not None and s.dim() != 0:
        s = s.expand(code_before.shape).reshape(-1) if s.numel() != 1 else s.reshape(())
    if updated is not None:
        keep = updated.reshape(-1)
        n_keep = int(torch.count_nonzero(keep))
        if n_keep < code.numel():
            code, d = code[keep], d[keep]
            s = s[keep] if s is not None and s.dim() != 0 else s
    n = code.numel()
    acc.updates += n
    if n == 0:
        return
    code = code.to(torch.int64)
    sign = torch.sign(code).to(torch.float64)
    g = decode_magnitude64(code.abs(), fmt).mul_(sign)  # R(before / s), signed, exact
    z = g * s if s is not None else g.clone()  # w = s · g, exact (at most 24 + 24 bits)
    z.add_(d)  # w + Δ: one float64 rounding
    y = z.div_(s) if s is not None else z  # see the module docstring: R(y) is exact
    new_code = encode_scaled_bits(y, fmt).to(torch.int64)  # saturates at ±max
    moved = new_code != code
    abs_d = d.abs()
    mass = float(abs_d.sum())
    acc.rne_moved += int(torch.count_nonzero(moved))
    acc.mass += mass
    acc.lost_mass += float(abs_d.masked_fill_(moved, 0.0).sum())

    # SR: P = |y − g| / (the gap from g to its neighbour on y's side), capped at 1 (y at or past
    # that neighbour); 0 on the grid, and 0 where the neighbour does not exist (saturated at ±max)
    offset = y.sub_(g)
    step = torch.sign(offset).to(torch.int64)
    neighbour = (code + step).clamp_(-fmt.max_code, fmt.max_code)
    gap = decode_magnitude64(neighbour.abs(), fmt).mul_(torch.sign(neighbour)).sub_(g).abs_()
    p = offset.abs_().div_(gap).clamp_(max=1.0).nan_to_num_(nan=0.0, posinf=0.0)
    p.masked_fill_(gap == 0, 0.0)
    total = float(p.sum())
    acc.sr_expected += total
    acc.sr_variance += max(total - float(torch.dot(p, p)), 0.0)
