"""Scaling modes and the scales they give: one value object per `--scaling` text, parsed once.

A scale s maps a tensor onto a format's range (Q(x; s) = s · R(x / s)); it is computed from
per-group amax values, so several formats (and recipes with the same grouping) share one amax
pass over a tensor. Groups are the whole tensor, the indices of dim 0 (channels), or R × C tiles
over the last two dims (`block:N` is a 1 × N tile), with partial tiles at the edges.
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from altgrad_cli.numerics.bits import exp2_int, working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.layout import AMAX_CHUNK, iter_chunks, iter_tile_chunks
from altgrad_cli.numerics.rounding import overflow_mask
from altgrad_cli.numerics.scaling_modes import (  # noqa: E402  the value object, re-exported
    E4M3_MAX,
    E4M3_MIN,
    E8M0_EXP,
    ScaleMode,
    ScaleRule,
    Scaling,
    parse_scaling,
)


def _pow2_ceil(q: Tensor) -> Tensor:
    """Smallest power of two >= q (q > 0, finite), exactly."""
    mant, expo = torch.frexp(q)
    expo = torch.where(mant == 0.5, expo - 1, expo)
    return exp2_int(expo, q.dtype)


def pow2_exponent(amax: Tensor, fmt: Format, rule: ScaleRule) -> Tensor:
    """The E8M0 exponent of each positive finite amax under `rule`, exactly: from amax's own
    binade and mantissa, never from a float32 quotient that could underflow, then clamped to
    E8M0's [-127, 127]."""
    mant, expo = torch.frexp(amax)  # amax = mant · 2^expo, mant in [0.5, 1), subnormals exact
    log_floor = expo.to(torch.int64) - 1  # floor(log2 amax)
    emax = math.floor(math.log2(fmt.max))
    if rule is ScaleRule.FLOOR:
        out = log_floor - emax
    elif rule is ScaleRule.CEIL:
        out = log_floor + (mant != 0.5).to(torch.int64) - emax
    elif rule is ScaleRule.RCEIL:  # ceil(log2(amax / max_F)): compare the two mantissas
        max_mant, max_exp = math.frexp(fmt.max)
        out = expo.to(torch.int64) - max_exp + (mant > max_mant).to(torch.int64)
    else:  # EVEN: round amax's mantissa half-even to M bits; a carry moves it up a binade
        m = fmt.mantissa_bits
        threshold = 1.0 - 2.0 ** -(m + 2)  # mantissas from here round up to 2^(expo)
        up = mant > threshold
        if m > 0:
            up |= mant == threshold  # a tie goes to 2^expo, whose code is even
        else:  # no mantissa bits: a tie goes to the even exponent
            up |= (mant == threshold) & (log_floor % 2 != 0)
        out = log_floor + up.to(torch.int64) - emax
    return out.clamp(-E8M0_EXP, E8M0_EXP)


# groups per pass: the temporaries for the 8M NVFP4 blocks of a 32000×4096 tensor stay small
SCALE_SLICE = 1 << 18


def _amax_scale(amax: Tensor, fmt: Format, scaling: Scaling) -> Tensor:
    """Scales from per-group amax values; zero or non-finite amax gives 1, as does a float
    scale that rounds to 0 or overflows. Elementwise, so it runs over fixed slices of the groups:
    the int64 and float temporaries of the rules are bounded by the slice, not the tensor."""
    t = nvfp4_tensor_scale(amax, fmt) if scaling.mode is ScaleMode.NVFP4 else None
    if amax.numel() <= SCALE_SLICE:
        return _slice_scale(amax, fmt, scaling, t)
    flat = amax.reshape(-1)
    parts = [
        _slice_scale(flat[i : i + SCALE_SLICE], fmt, scaling, t)
        for i in range(0, flat.numel(), SCALE_SLICE)
    ]
    return torch.cat(parts).reshape(amax.shape)


def _slice_scale(amax: Tensor, fmt: Format, scaling: Scaling, t: Tensor | None) -> Tensor:
    if t is not None:
        return _nvfp4_block_scale(amax, fmt, t)
    good = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(good, amax, torch.ones_like(amax))
    fmax = torch.tensor(fmt.max, dtype=amax.dtype)
    mode, rule = scaling.mode, scaling.rule
    if mode in (ScaleMode.TENSOR, ScaleMode.CHANNEL) or rule is ScaleRule.FP32:
        scale = safe / fmax
    elif mode is ScaleMode.POW2:
        scale = _pow2_ceil(safe / fmax)
    else:
        scale = exp2_int(pow2_exponent(safe, fmt, rule), safe.dtype)
    good &= torch.isfinite(scale) & (scale > 0)
    return torch.where(good, scale, torch.ones_like(scale))


def nvfp4_tensor_scale(block_amax: Tensor, fmt: Format) -> Tensor:
    """NVFP4's float32 tensor scale t = amax / (448 · max_F) from the block amaxes (NaN
    propagates); 1 when that is zero, non-finite or underflows."""
    amax32 = block_amax.reshape(-1).to(torch.float32)
    tensor_amax = amax32.max() if amax32.numel() else torch.tensor(0.0)
    fmax = torch.tensor(fmt.max, dtype=torch.float32)
    t = tensor_amax / (torch.tensor(E4M3_MAX, dtype=torch.float32) * fmax)
    return t if bool(torch.isfinite(t) & (t > 0)) else torch.tensor(1.0, dtype=torch.float32)


def nvfp4_scale(block_amax: Tensor, fmt: Format) -> Tensor:
    """NVFP4's element scales s = t · e4m3fn(clamp(b / t, 2^-6, 448)), all in float32 (SPEC
    §Recipes, torchao's per_tensor_scale path): t = amax / (448 · max_F), b = amax_block / max_F.
    The tensor amax is the largest block amax (NaN propagates). A zero, non-finite or
    underflowing t is 1; a block with a non-finite amax gets s = 1."""
    return _nvfp4_block_scale(block_amax, fmt, nvfp4_tensor_scale(block_amax, fmt))


def _nvfp4_block_scale(block_amax: Tensor, fmt: Format, t: Tensor) -> Tensor:
    amax32 = block_amax.to(torch.float32)
    fmax = torch.tensor(fmt.max, dtype=torch.float32)
    ratio = (amax32 / fmax) / t
    e = ratio.clamp(E4M3_MIN, E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)
    scale = t * e
    good = torch.isfinite(amax32) & torch.isfinite(scale) & (scale > 0)
    return torch.where(good, scale, torch.ones_like(scale))


# ----------------------------------------------------------------------------- layout


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(P, cols, rows_per_matrix): the tensor as P × cols (cols = its last dim) made of stacked
    matrices over the last two dims (a 1-D tensor is one row, a 0-d one is 1 × 1)."""
    numel = math.prod(shape)
    cols = shape[-1] if shape else 1
    per_matrix = shape[-2] if len(shape) >= 2 else 1
    return (numel // cols if cols else 0), cols, per_matrix


def tile_rows_of(r0: int, r1: int, per_matrix: int, tile: int) -> Tensor:
    """The tile-row index of every view row in [r0, r1): tiles never cross a matrix."""
    rows = torch.arange(r0, r1)
    if tile == 1:
        return rows
    bands = -(-per_matrix // tile)
    return rows // per_matrix * bands + rows % per_matrix // tile


@dataclass(frozen=True)
class Scale:
    """Scales for one tensor, in their natural shape, ready to be applied to it or to another tensor.

    `values` is 0-d for tensor/pow2/none, (dim0,) for channel and (tile rows, tile cols) for block
    and nvfp4 scaling. Computed from one tensor (BEFORE) and applicable to another of the same
    shape (AFTER), so flips measure weight motion, not scale jitter.
    """

    scaling: Scaling
    values: Tensor
    shape: tuple[int, ...]
    amax: Tensor | None = field(default=None, compare=False)  # per-group amax the scales came from
    # every group amax is finite and amax / s stays within the format: no element can overflow
    overflow_free: bool = field(default=False, compare=False)

    @property
    def is_unit(self) -> bool:
        return self.scaling.mode is ScaleMode.NONE

    @property
    def is_single(self) -> bool:
        return self.scaling.mode in (ScaleMode.TENSOR, ScaleMode.POW2, ScaleMode.NONE)

    def view_shape(self) -> tuple[int, int]:
        """The 2-D view in which `for_chunk` addresses the tensor: P × last dim for grouped
        scales, 1 × numel for one scale."""
        if self.is_single:
            return 1, math.prod(self.shape)
        rows, cols, _ = matrix_view(self.shape)
        return rows, cols

    def for_chunk(self, row0: int, row1: int, col0: int, col1: int) -> Tensor:
        """Scales broadcastable to the chunk [row0:row1, col0:col1] of `view_shape()`."""
        mode = self.scaling.mode
        if self.is_single:
            return self.values
        if mode is ScaleMode.CHANNEL:
            if len(self.shape) <= 1:  # one channel per element
                return self.values[None, col0:col1]
            return self._channels_of_rows(row0, row1)[:, None]
        n = self.scaling.cols
        first = col0 // n
        blocks = self._blocks_of_rows(row0, row1, first, (col1 + n - 1) // n)
        if n <= col1 - col0:
            expanded = blocks.repeat_interleave(n, dim=1)
            start = col0 - first * n
            return expanded[:, start : start + col1 - col0]
        # blocks wider than the chunk: gather per column, never materialising a whole block
        return blocks[:, torch.arange(col0, col1) // n - first]

    def groups_for_chunk(
        self, row0: int, row1: int, col0: int, col1: int
    ) -> tuple[Tensor, int] | None:
        """(scales, width) of the chunk [row0:row1, col0:col1] when it is made of whole groups
        of `width` consecutive elements each (whole blocks, or whole rows of a channel): the
        flattened chunk's element i has scale `scales[i // width]`. None when a group is cut
        (a partial last block) or there is one scale per element anyway."""
        if self.is_single:
            return None
        if self.scaling.mode is ScaleMode.CHANNEL:
            if len(self.shape) <= 1 or col1 - col0 < 2:
                return None
            return self._channels_of_rows(row0, row1), col1 - col0
        n = self.scaling.cols
        if n < 2 or col0 % n or (col1 - col0) % n:
            return None
        return self._blocks_of_rows(row0, row1, col0 // n, col1 // n).reshape(-1), n

    def _channels_of_rows(self, row0: int, row1: int) -> Tensor:
        """The channel scale of each row row0..row1 of `view_shape()`."""
        rows, _, _ = matrix_view(self.shape)
        return self.values[torch.arange(row0, row1) // (rows // self.shape[0])]

    def _blocks_of_rows(self, row0: int, row1: int, first: int, last: int) -> Tensor:
        """Block (or tile) columns first..last of the scales, one row per row row0..row1."""
        _, _, per_matrix = matrix_view(self.shape)
        blocks = self.values[:, first:last]
        tile = self.scaling.rows
        if tile == 1:
            return blocks[row0:row1]
        return blocks[tile_rows_of(row0, row1, per_matrix, tile)]

    def broadcast(self) -> Tensor:
        """Scales broadcastable to the whole tensor."""
        if not self.shape:
            return self.values.reshape(())
        if self.scaling.mode is ScaleMode.CHANNEL:
            return self.values.reshape(-1, *([1] * (len(self.shape) - 1)))
        if self.is_single:
            return self.values
        rows, cols = self.view_shape()
        return self.for_chunk(0, rows, 0, cols).reshape(self.shape)

    def to(self, dtype: torch.dtype) -> Scale:
        return Scale(self.scaling, self.values.to(dtype), self.shape, self.amax, self.overflow_free)


def _group_shape(shape: tuple[int, ...], scaling: Scaling) -> tuple[int, ...]:
    if scaling.mode is ScaleMode.CHANNEL:
        return (shape[0] if shape else 1,)
    if not scaling.is_blocked:
        return ()
    rows, cols, per_matrix = matrix_view(shape)
    tile, n = scaling.rows, scaling.cols
    matrices = rows // per_matrix if per_matrix else 0
    tile_rows = rows if tile == 1 else matrices * -(-per_matrix // tile)
    return tile_rows, -(-cols // n)


def group_amax(
    x: Tensor, scaling: Scaling, chunk: int = AMAX_CHUNK, executor: Executor | None = None
) -> Tensor:
    """amax(|x|) per scale group (0-d, (dim0,) or (tile rows, tile cols)), read in chunks of
    whole tiles: no |x| copy of the whole tensor is ever made. NaN propagates, so a group
    holding NaN gets a non-finite amax. With an `executor`, block and tile chunks run on its
    threads (the same numbers: each chunk owns its groups)."""
    scaling = parse_scaling(scaling)
    dtype = working_dtype(x.dtype)
    shape = tuple(x.shape)
    amax = torch.zeros(_group_shape(shape, scaling), dtype=dtype)
    if not scaling.is_blocked and scaling.mode is not ScaleMode.CHANNEL:
        flat = x.detach().reshape(1, -1)
        for _, _, c0, c1 in iter_chunks(1, flat.shape[1], chunk):
            low, high = torch.aminmax(flat[:, c0:c1].to(dtype))  # no |x| copy: max(-min, max)
            amax = torch.maximum(amax, torch.maximum(-low, high))
        return amax
    rows, cols, per_matrix = matrix_view(shape)
    view = x.detach().reshape(rows, cols)
    if rows == 0 or cols == 0:
        return amax
    if scaling.mode is ScaleMode.CHANNEL:
        if len(shape) <= 1:
            return view[0].to(dtype).abs()
        per_channel = rows // shape[0]
        for r0, r1, c0, c1 in iter_chunks(rows, cols, chunk):
            part = view[r0:r1, c0:c1].to(dtype).abs().amax(dim=1)
            index = torch.arange(r0, r1) // per_channel
            amax.scatter_reduce_(0, index, part, "amax")
        return amax
    n, tile = scaling.cols, scaling.rows

    def one_chunk(bounds: tuple[int, int, int, int]) -> None:
        r0, r1, c0, c1 = bounds
        part = view[r0:r1, c0:c1].to(dtype).abs()
        width, nb = c1 - c0, -(-(c1 - c0) // n)
        full = width // n * n  # whole blocks, then the row's partial last block: no padding,
        pieces = []  # so a block longer than its row costs the row, not the block size
        if full:
            pieces.append(_last_dim_max(part[:, :full].reshape(r1 - r0, full // n, n)))
        if width > full:
            pieces.append(part[:, full:].amax(dim=1, keepdim=True))
        per_row = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        target = amax[:, c0 // n : c0 // n + nb]
        if tile == 1:
            target[r0:r1] = torch.maximum(target[r0:r1], per_row)
        else:
            index = tile_rows_of(r0, r1, per_matrix, tile)[:, None].expand(-1, nb)
            target.scatter_reduce_(0, index, per_row, "amax")

    # the chunks hold whole groups (tile rows or column runs of one), so each writes its own
    # groups of `amax` and they may run on an executor's threads in any order
    chunks = iter_tile_chunks(rows, cols, per_matrix, tile, n, chunk)
    for _ in map(one_chunk, chunks) if executor is None else executor.map(one_chunk, chunks):
        pass
    return amax


def _last_dim_max(x: Tensor) -> Tensor:
    """x.amax(dim=-1), by halving the last dimension with elementwise maxima while its length is
    even: for blocks of 16 or 32 about 1.7 times faster than torch's reduction over such a short
    dimension, and the same numbers (a max is exact; NaN propagates through both)."""
    while x.shape[-1] > 1 and x.shape[-1] % 2 == 0:
        half = x.shape[-1] // 2
        x = torch.maximum(x[..., :half], x[..., half:])
    return x.amax(dim=-1) if x.shape[-1] > 1 else x[..., 0]


def coarser_amax(fine: Tensor, fine_cols: int, scaling: Scaling, shape: tuple[int, ...]) -> Tensor:
    """`group_amax` of `scaling` (blocks or tiles whose width is a multiple of `fine_cols`) from
    the amax of `fine_cols`-element 1-D blocks of the same tensor, without reading it again: a
    coarse group is a union of fine ones, so its amax is theirs, to the bit (NaN included)."""
    scaling = parse_scaling(scaling)
    n, tile = scaling.cols, scaling.rows
    if not scaling.is_blocked or n % fine_cols:
        raise ValueError(f"{scaling} is not a union of {fine_cols}-element blocks")
    amax = torch.zeros(_group_shape(shape, scaling), dtype=fine.dtype)
    rows, cols, per_matrix = matrix_view(shape)
    if rows == 0 or cols == 0:
        return amax
    k, blocks = n // fine_cols, -(-cols // n)
    if fine.shape[1] < blocks * k:  # the partial last block: pad with 0, below any |x|
        fine = torch.nn.functional.pad(fine, (0, blocks * k - fine.shape[1]))
    per_row = fine.reshape(rows, blocks, k).amax(dim=2)
    if tile == 1:
        return per_row
    index = tile_rows_of(0, rows, per_matrix, tile)[:, None].expand(-1, blocks)
    return amax.scatter_reduce_(0, index, per_row, "amax")


def compute_scale(x: Tensor, format: Format | str, scaling: Scaling | str | None = None) -> Scale:
    """The scales of `scaling` for `x` (float32 arithmetic, float64 for float64 `x`).

    `format` may be a recipe (a `Recipe`, `mxfp8`, `e4m3fn@block:32`): its scaling is used
    unless `scaling` is given. A plain format defaults to `tensor`."""
    from altgrad_cli.numerics.recipes import as_recipe

    recipe = as_recipe(format, scaling if scaling is not None else "tensor")
    fmt, scaling = recipe.format, recipe.scaling
    amax = None if scaling.mode is ScaleMode.NONE else group_amax(x, scaling)
    return scale_from_amax(amax, fmt, scaling, tuple(x.shape), working_dtype(x.dtype))


def scale_from_amax(
    amax: Tensor | None,
    format: Format | str,
    scaling: Scaling | str,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Scale:
    """The Scale for one format from `group_amax` of a tensor, so several formats share one pass.

    NVFP4 scales are float32 values (exact in float64 too)."""
    scaling = parse_scaling(scaling)
    if amax is None:  # scaling "none"
        return Scale(scaling, torch.ones((), dtype=dtype), shape)
    fmt = get_format(format)
    values = _amax_scale(amax, fmt, scaling).to(dtype)
    return Scale(scaling, values, shape, amax, _overflow_free(amax, values, fmt))


def _overflow_free(amax: Tensor, values: Tensor, fmt: Format) -> bool:
    """Whether no element of the tensor can overflow under these scales: every group amax is
    finite and amax / s, divided as the kernel divides an element, rounds within ±max. Division
    by a positive number is monotone, so a group's largest |x / s| is its amax / s. Known per
    tensor, this spares the kernel an overflow pass per chunk for the recipes whose scales fit
    (rceil, NVFP4, amax / 448 tiles). False with one scale: the kernel checks each chunk's max."""
    if values.dim() == 0 or amax.shape != values.shape or values.dtype not in _CARRIERS:
        return False
    flat_amax, flat_values = amax.reshape(-1), values.reshape(-1)
    for i in range(0, flat_amax.numel(), SCALE_SLICE):
        part = flat_amax[i : i + SCALE_SLICE].to(values.dtype)
        if not bool(torch.isfinite(part).all()):
            return False
        if bool(overflow_mask(part / flat_values[i : i + SCALE_SLICE], fmt).any()):
            return False
    return True


_CARRIERS = (torch.float32, torch.float64)


__all__ = [
    "Scale",
    "ScaleMode",
    "ScaleRule",
    "Scaling",
    "coarser_amax",
    "compute_scale",
    "group_amax",
    "matrix_view",
    "nvfp4_scale",
    "nvfp4_tensor_scale",
    "parse_scaling",
    "pow2_exponent",
    "scale_from_amax",
]
