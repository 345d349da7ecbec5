"""`stored_weights`: the stored-weights counterfactual on tensors, for use inside a training loop.

Call it around an optimizer step with the fp32 (master) weights before and after the step: it
says how much of the step a copy of the weights stored in FORMAT, with no master copy, would keep
under round-to-nearest, and how much stochastic rounding would keep. The numbers are those of the
`stored` group of `altgrad analyze` (SPEC §Metrics), computed by the same engine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from altgrad_cli.engine.stored import StoredAccumulator, update_stored
from altgrad_cli.numerics.bits import working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.rounding import encode_scaled
from altgrad_cli.numerics.scaling import Scale, Scaling, compute_scale, parse_scaling


@dataclass(frozen=True)
class StoredWeights:
    """What keeping the weights in a format, without a master copy, does to one step.

    Counts are over updated elements; `lost_mass_frac` is the share of Σ|Δ| that round-to-nearest
    throws away; under stochastic rounding the number of weights that move has mean
    `sr_expected_moved` and standard deviation `sr_moved_std`.
    """

    updates: int
    rne_moved: int
    rne_lost_frac: float
    lost_mass_frac: float
    sr_expected_moved: float
    sr_moved_std: float

    @classmethod
    def from_accumulator(cls, acc: StoredAccumulator) -> StoredWeights:
        return cls(updates=acc.updates, **asdict(acc.result()))


def stored_weights(
    before: Tensor,
    after: Tensor,
    format: Format | str,
    scale: Scale | Scaling | Tensor | float | str | None = None,
    updated: Tensor | None = None,
) -> StoredWeights:
    """The `stored` metrics of one step from `before` to `after` in `format`.

    `scale` is None (s = 1, how bf16 and fp16 weights are stored), a number, a tensor
    broadcastable to `before`, a `Scale`, or a scaling such as "tensor" or "block:32", computed
    from `before` (BEFORE's scale applies to both sides, as in `analyze`). `updated` is a boolean
    mask of the elements the step meant to update (e.g. `grad.abs() > 1e-10`); None counts every
    element whose value changed. Elements where before or after is not finite are left out.
    """
    fmt = get_format(format)
    if before.shape != after.shape:
        raise ValueError(f"before and after differ in shape: {before.shape} vs {after.shape}")
    dtype = working_dtype(before.dtype)
    b = before.detach().to(dtype)
    a = after.detach().to(dtype)
    s = _scale_tensor(before, fmt, scale, dtype)
    finite = torch.isfinite(b) & torch.isfinite(a)
    changed = a != b
    if updated is not None:
        changed = updated.detach().to(torch.bool).expand(b.shape)
    mask = finite & changed
    y = b if s is None else b / s
    code = encode_scaled(torch.where(finite, y, torch.zeros((), dtype=dtype)), fmt)
    delta = a.to(torch.float64) - b.to(torch.float64)
    acc = StoredAccumulator()
    update_stored(acc, fmt, code, delta, s, mask)
    return StoredWeights.from_accumulator(acc)


def _scale_tensor(
    before: Tensor,
    fmt: Format,
    scale: Scale | Scaling | Tensor | float | str | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """BEFORE's scale as None, a 0-d tensor or a broadcastable tensor in the working dtype."""
    if isinstance(scale, (str, Scaling)):
        scale = compute_scale(before, fmt, parse_scaling(scale))
    if scale is None or (isinstance(scale, Scale) and scale.is_unit):
        return None
    if isinstance(scale, Scale):
        return scale.broadcast().to(dtype)
    return torch.as_tensor(scale, dtype=dtype)
