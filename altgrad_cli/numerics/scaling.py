"""Scaling modes and the scales they give: one value object per `--scaling` text, parsed once.

A scale s maps a tensor onto a format's range (Q(x; s) = s · R(x / s)); it is computed from
per-group amax values, so several formats share one amax pass over a tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from altgrad_cli.errors import UsageError
from altgrad_cli.numerics.bits import carrier_of, exp2_int, floor_log2, working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.layout import AMAX_CHUNK, iter_chunks

_BLOCK_RULES = ("floor", "rceil", "ceil", "even")
MAX_BLOCK = 1 << 16
"""Recipes use blocks of 16 to 128 elements; a block of more than 65,536 is a typo."""
_SCALING = re.compile(r"(tensor|pow2|channel|none)|block:(\d+)(?::([a-z]+))?")


@dataclass(frozen=True)
class Scaling:
    """A scaling mode: `tensor`, `pow2`, `channel`, `block` (with size and rule) or `none`."""

    mode: str
    block: int = 0
    rule: str = "floor"

    def __str__(self) -> str:
        return f"block:{self.block}:{self.rule}" if self.mode == "block" else self.mode


def parse_scaling(text: str | Scaling) -> Scaling:
    """Parse `tensor`, `pow2`, `channel`, `none` or `block:N[:floor|rceil|ceil|even]`."""
    if isinstance(text, Scaling):
        return text
    match = _SCALING.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"unknown scaling {text!r}; choose tensor, pow2, channel, none or block:N[:floor|rceil|ceil|even]"
        )
    if match[1]:
        return Scaling(match[1])
    digits, rule = match[2], match[3] or "floor"
    size = int(digits) if len(digits) <= 12 else MAX_BLOCK + 1  # never int() 5000 digits
    if size < 1:
        raise UsageError(f"scaling {text!r}: the block size must be at least 1")
    if size > MAX_BLOCK:
        raise UsageError(f"scaling {text[:40]!r}: the block size must be at most {MAX_BLOCK}")
    if rule not in _BLOCK_RULES:
        raise UsageError(
            f"scaling {text!r}: unknown block rule {rule!r}; choose {', '.join(_BLOCK_RULES)}"
        )
    return Scaling("block", size, rule)


def _pow2_ceil(q: Tensor) -> Tensor:
    """Smallest power of two >= q (q > 0, finite), exactly."""
    mant, expo = torch.frexp(q)
    expo = torch.where(mant == 0.5, expo - 1, expo)
    return exp2_int(expo, q.dtype)


def _round_mantissa(q: Tensor, m: int) -> Tensor:
    """q with its mantissa rounded half-even to m bits, range unbounded (MX's `even` rule)."""
    carrier = carrier_of(q.dtype)
    shift = carrier.mantissa - m
    if shift == 0:
        return q
    bits = q.view(carrier.int_dtype)
    bits = (bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1)) >> shift << shift
    return bits.view(carrier.float_dtype)


def _amax_scale(amax: Tensor, fmt: Format, scaling: Scaling) -> Tensor:
    """Scales from per-group amax values; zero or non-finite amax gives 1."""
    good = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(good, amax, torch.ones_like(amax))
    fmax = torch.tensor(fmt.max, dtype=amax.dtype)
    if scaling.mode in ("tensor", "channel"):
        scale = safe / fmax
    elif scaling.mode == "pow2":
        scale = _pow2_ceil(safe / fmax)
    else:
        emax = math.floor(math.log2(fmt.max))
        if scaling.rule == "rceil":
            expo = floor_log2(_pow2_ceil(safe / fmax))
        elif scaling.rule == "floor":
            expo = floor_log2(safe) - emax
        elif scaling.rule == "ceil":
            expo = floor_log2(_pow2_ceil(safe)) - emax
        else:
            expo = floor_log2(_round_mantissa(safe, fmt.mantissa_bits)) - emax
        expo = expo.clamp(-127, 127)  # E8M0's range
        scale = exp2_int(expo, safe.dtype)
    good &= torch.isfinite(scale) & (scale > 0)
    return torch.where(good, scale, torch.ones_like(scale))


@dataclass(frozen=True)
class Scale:
    """Scales for one tensor, in their natural shape, ready to be applied to it or to another tensor.

    `values` is 0-d for tensor/pow2/none, (dim0,) for channel and (rows, blocks) for block, where
    rows are the tensor's elements grouped by its last dim. Computed from one tensor (BEFORE) and
    applicable to another of the same shape (AFTER), so flips measure weight motion, not scale jitter.
    """

    scaling: Scaling
    values: Tensor
    shape: tuple[int, ...]
    amax: Tensor | None = field(default=None, compare=False)  # per-group amax the scales came from

    @property
    def is_unit(self) -> bool:
        return self.scaling.mode == "none"

    def view_shape(self) -> tuple[int, int]:
        """The 2-D view of the tensor in which every scale covers whole rows or aligned column runs."""
        numel = math.prod(self.shape)
        if self.scaling.mode == "channel":
            rows = self.shape[0] if self.shape else 1
            return rows, (numel // rows if rows else 0)
        if self.scaling.mode == "block":
            cols = self.shape[-1] if self.shape else 1
            return (numel // cols if cols else 0), cols
        return 1, numel

    def for_chunk(self, row0: int, row1: int, col0: int, col1: int) -> Tensor:
        """Scales broadcastable to the chunk [row0:row1, col0:col1] of `view_shape()`."""
        if self.scaling.mode == "channel":
            return self.values[row0:row1, None]
        if self.scaling.mode == "block":
            n = min(self.scaling.block, max(self.view_shape()[1], 1))  # a block ends with its row
            blocks = self.values[row0:row1, col0 // n : (col1 + n - 1) // n]
            expanded = blocks.repeat_interleave(n, dim=1)
            return expanded[:, : col1 - col0]
        return self.values

    def broadcast(self) -> Tensor:
        """Scales broadcastable to the whole tensor."""
        if not self.shape:
            return self.values.reshape(())
        if self.scaling.mode == "channel":
            return self.values.reshape(-1, *([1] * (len(self.shape) - 1)))
        if self.scaling.mode == "block":
            rows, cols = self.view_shape()
            return self.for_chunk(0, rows, 0, cols).reshape(self.shape)
        return self.values

    def to(self, dtype: torch.dtype) -> Scale:
        return Scale(self.scaling, self.values.to(dtype), self.shape, self.amax)


def group_amax(x: Tensor, scaling: Scaling, chunk: int = AMAX_CHUNK) -> Tensor:
    """amax(|x|) per scale group (0-d, (dim0,) or (rows, blocks)), read in chunks: no |x| copy of the
    whole tensor is ever made. NaN propagates, so a group holding NaN gets a non-finite amax."""
    dtype = working_dtype(x.dtype)
    rows, cols = Scale(scaling, torch.ones(()), tuple(x.shape)).view_shape()
    view = x.detach().reshape(rows, cols)
    # a block never spans rows: one longer than a row is the row (and needs no padding to n)
    n = min(scaling.block, max(cols, 1)) if scaling.mode == "block" else 1
    if scaling.mode == "channel":
        amax = torch.zeros(rows, dtype=dtype)
    elif scaling.mode == "block":
        amax = torch.zeros(rows, (cols + n - 1) // n, dtype=dtype)
    else:
        amax = torch.zeros((), dtype=dtype)
    for r0, r1, c0, c1 in iter_chunks(rows, cols, chunk, n):
        if scaling.mode not in ("channel", "block"):  # no |x| copy: max(-min, max)
            low, high = torch.aminmax(view[r0:r1, c0:c1].to(dtype))
            amax = torch.maximum(amax, torch.maximum(-low, high))
            continue
        part = view[r0:r1, c0:c1].to(dtype).abs()
        if scaling.mode == "channel":
            amax[r0:r1] = torch.maximum(amax[r0:r1], part.amax(dim=1))
        elif scaling.mode == "block":
            width = c1 - c0
            nb = (width + n - 1) // n
            padded = torch.nn.functional.pad(part, (0, nb * n - width))
            amax[r0:r1, c0 // n : c0 // n + nb] = padded.reshape(r1 - r0, nb, n).amax(dim=2)
    return amax


def compute_scale(x: Tensor, format: Format | str, scaling: Scaling | str = "tensor") -> Scale:
    """The scales of `scaling` for `x` (float32 arithmetic, float64 for float64 `x`)."""
    scaling = parse_scaling(scaling)
    amax = None if scaling.mode == "none" else group_amax(x, scaling)
    return scale_from_amax(amax, format, scaling, tuple(x.shape), working_dtype(x.dtype))


def scale_from_amax(
    amax: Tensor | None,
    format: Format | str,
    scaling: Scaling | str,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Scale:
    """The Scale for one format from `group_amax` of a tensor, so several formats share one pass."""
    scaling = parse_scaling(scaling)
    if amax is None:  # scaling "none"
        return Scale(scaling, torch.ones((), dtype=dtype), shape)
    return Scale(scaling, _amax_scale(amax, get_format(format), scaling), shape, amax)
