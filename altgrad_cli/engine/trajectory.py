"""Codes of one tensor across n+1 checkpoints, followed chunk by chunk: the counts of SPEC §Trajectories.

Every element's code sequence c_0 … c_n is walked once, checkpoint by checkpoint, with a
streaming state per element of the chunk: the first code, the previous two codes, the length of
the current run of steps without a flip and the longest such run. Everything else is a count
summed as the walk goes. So memory is a few integer arrays of one chunk per recipe, whatever the
number of checkpoints and whatever the tensor's size, and every number is an integer sum that
merges exactly: the report does not depend on the chunk size or the number of threads, to the bit.

Scales: each checkpoint is divided by its own scale (as training would quantize it), or, with
`fixed_scale`, by C0's. Per-tensor and per-channel scales are computed up front (one amax pass per
checkpoint; what is kept is one number, or one per channel, per checkpoint), block scales inside
each chunk, which always holds whole blocks, so no per-block array of the tensor is ever kept.
Elements not finite in some checkpoint are found by one isfinite pass over the chunk of every
checkpoint first, so that every count leaves them out from the first step on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from altgrad_cli.engine.parallel import ChunkPool, one_torch_thread, ordered_map
from altgrad_cli.numerics.bits import working_dtype
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.layout import iter_chunks
from altgrad_cli.numerics.rounding import encode_scaled
from altgrad_cli.numerics.scaling import (
    Scale,
    ScaleMode,
    Scaling,
    compute_scale,
    group_amax,
    scale_from_amax,
)


@dataclass(frozen=True)
class Recipe:
    """A format with the scaling it is quantized under; `name` is the record's `format` key."""

    name: str
    format: Format
    scaling: Scaling


@dataclass
class TrajectoryCounts:
    """The integer sums behind one (tensor, recipe) trajectory record; merged by addition."""

    steps: int
    numel: int = 0
    nonfinite: int = 0  # elements not finite in at least one checkpoint: left out of everything
    flips_per_step: list[int] = field(default_factory=list)
    ever_flipped: int = 0
    net_flipped: int = 0
    flip_backs: int = 0
    grid_steps: int = 0  # Σ_t Σ_i |c_t − c_{t−1}|: the path length in grid steps
    net_grid_steps: int = 0  # Σ_i |c_n − c_0|
    frozen_run_total: int = 0  # Σ_i (longest run of steps without a flip)

    def __post_init__(self) -> None:
        if not self.flips_per_step:
            self.flips_per_step = [0] * self.steps

    def merge(self, other: TrajectoryCounts) -> None:
        if other.steps != self.steps:
            raise ValueError(f"cannot merge {other.steps} steps into {self.steps}")
        self.numel += other.numel
        self.nonfinite += other.nonfinite
        self.flips_per_step = [
            a + b for a, b in zip(self.flips_per_step, other.flips_per_step, strict=True)
        ]
        self.ever_flipped += other.ever_flipped
        self.net_flipped += other.net_flipped
        self.flip_backs += other.flip_backs
        self.grid_steps += other.grid_steps
        self.net_grid_steps += other.net_grid_steps
        self.frozen_run_total += other.frozen_run_total


class _Walk:
    """The per-element state of one recipe over one chunk while its checkpoints stream past."""

    def __init__(self, counts: TrajectoryCounts) -> None:
        self.counts = counts
        self.first: Tensor | None = None
        self.prev: Tensor | None = None
        self.prev2: Tensor | None = None
        self.run: Tensor | None = None
        self.longest: Tensor | None = None
        self.t = 0

    def add(self, code: Tensor) -> None:
        """Take the codes of the next checkpoint."""
        if self.prev is None:
            self.first = self.prev = code
            self.run = torch.zeros(code.shape, dtype=torch.int32)
            self.longest = torch.zeros(code.shape, dtype=torch.int32)
            return
        c = self.counts
        flip = code != self.prev
        c.flips_per_step[self.t] += int(torch.count_nonzero(flip))
        c.grid_steps += int((code - self.prev).abs_().sum())
        if self.prev2 is not None:  # c_t = c_{t−2} ≠ c_{t−1}: back where it was one step earlier
            c.flip_backs += int(torch.count_nonzero(flip & (code == self.prev2)))
        self.run += 1
        self.run.masked_fill_(flip, 0)
        torch.maximum(self.longest, self.run, out=self.longest)
        self.prev2, self.prev = self.prev, code
        self.t += 1

    def finish(self) -> None:
        c = self.counts
        if self.prev is None:
            return
        net = self.prev - self.first
        c.net_flipped += int(torch.count_nonzero(net))
        c.net_grid_steps += int(net.abs_().sum())
        c.frozen_run_total += int(self.longest.sum())
        # an element that never flipped has one run as long as the trajectory
        c.ever_flipped += int(torch.count_nonzero(self.longest < c.steps))


def _codes(y: Tensor, recipe: Recipe) -> Tensor:
    """Codes wide enough that a difference of two cannot overflow."""
    code = encode_scaled(y, recipe.format)
    wide = recipe.format.exponent_bits + recipe.format.mantissa_bits >= 30
    return code.to(torch.int64 if wide else torch.int32)


ScaleOf = Callable[[int, Tensor, tuple[int, int, int, int]], Tensor | None]
"""scale_of(checkpoint, chunk of that checkpoint, bounds) -> scales broadcastable to the chunk."""


def _scale_source(
    tensors: Sequence[Tensor], recipe: Recipe, fixed_scale: bool
) -> tuple[ScaleOf, list[float] | None]:
    """How a chunk of checkpoint t gets its scales, and the per-checkpoint scale values for the
    record when there is one scale per tensor."""
    scaling, fmt = recipe.scaling, recipe.format
    dtype = working_dtype(tensors[0].dtype)
    shape = tuple(tensors[0].shape)
    if scaling.mode is ScaleMode.NONE:
        return (lambda t, x, b: None), [1.0] * len(tensors)
    if scaling.mode is ScaleMode.BLOCK:
        first = tensors[0].reshape(Scale(scaling, torch.ones(()), shape).view_shape())

        def block_scale(t: int, x: Tensor, bounds: tuple[int, int, int, int]) -> Tensor:
            # the chunk holds whole blocks of its rows, so its own amax per block is the tensor's
            r0, r1, c0, c1 = bounds
            source = first[r0:r1, c0:c1] if fixed_scale else x
            amax = group_amax(source, scaling)
            return scale_from_amax(amax, fmt, scaling, tuple(source.shape), dtype).broadcast()

        return block_scale, None
    sources = tensors[:1] if fixed_scale else tensors
    scales = [compute_scale(x, fmt, scaling) for x in sources]

    def precomputed(t: int, x: Tensor, bounds: tuple[int, int, int, int]) -> Tensor:
        return scales[0 if fixed_scale else t].for_chunk(*bounds).to(dtype)

    values = None
    if scaling.mode in (ScaleMode.TENSOR, ScaleMode.POW2):
        values = [float(s.values) for s in scales]
        if fixed_scale:
            values = values * len(tensors)
    return precomputed, values


def accumulate_trajectory(
    tensors: Sequence[Tensor],
    recipes: Sequence[Recipe],
    *,
    fixed_scale: bool = False,
    chunk: int = 1 << 18,
    pool: ChunkPool | None = None,
) -> tuple[dict[str, TrajectoryCounts], dict[str, dict]]:
    """(counts, scale summary) per recipe name for one tensor seen in n+1 >= 2 checkpoints of one
    shape and dtype, streamed in chunks of about `chunk` elements."""
    steps = len(tensors) - 1
    if steps < 1:
        raise ValueError("a trajectory needs at least two checkpoints")
    totals = {r.name: TrajectoryCounts(steps) for r in recipes}
    scales: dict[str, dict] = {}
    by_scaling: dict[Scaling, list[Recipe]] = {}
    for recipe in recipes:
        by_scaling.setdefault(recipe.scaling, []).append(recipe)
    dtype = working_dtype(tensors[0].dtype)
    for scaling, group in by_scaling.items():
        view = Scale(scaling, torch.ones(()), tuple(tensors[0].shape)).view_shape()
        views = [t.detach().reshape(view) for t in tensors]
        sources = []
        for recipe in group:
            scale_of, values = _scale_source(tensors, recipe, fixed_scale)
            sources.append(scale_of)
            scales[recipe.name] = {"mode": str(scaling), "values": values}
        align = scaling.block if scaling.mode is ScaleMode.BLOCK else 1

        def one_chunk(
            bounds: tuple[int, int, int, int], group=group, views=views, sources=sources
        ) -> list[TrajectoryCounts]:
            r0, r1, c0, c1 = bounds
            chunks = [v[r0:r1, c0:c1] for v in views]
            finite = torch.isfinite(chunks[0])
            for x in chunks[1:]:
                finite &= torch.isfinite(x)
            kept = int(torch.count_nonzero(finite))
            keep = None if kept == finite.numel() else finite
            parts = [TrajectoryCounts(steps, numel=finite.numel()) for _ in group]
            for part in parts:
                part.nonfinite = finite.numel() - kept
            walks = [_Walk(part) for part in parts]
            for t, x in enumerate(chunks):
                y_all = x.to(dtype)
                for recipe, scale_of, walk in zip(group, sources, walks, strict=True):
                    s = scale_of(t, x, bounds)
                    y = y_all if s is None else y_all / s
                    if keep is not None:
                        y = y[keep]
                    walk.add(_codes(y, recipe))
            for walk in walks:
                walk.finish()
            return parts

        counts = [TrajectoryCounts(steps) for _ in group]
        with one_torch_thread():
            for parts in ordered_map(one_chunk, iter_chunks(*view, chunk, align), pool):
                for total, part in zip(counts, parts, strict=True):
                    total.merge(part)
        for recipe, total in zip(group, counts, strict=True):
            totals[recipe.name] = total
    return totals, scales
