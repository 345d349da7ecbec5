"""The per-(tensor, format) records of SPEC §Metrics, from chunks.

`accumulate_tensor` computes each recipe's scales of a tensor (one amax pass per side and
grouping, shared by the recipes that group alike), cuts it into chunks that never straddle a
scale group of any recipe, has kernel.py turn each chunk into partial statistics (on a pool of
threads when given one) and merges them in a fixed order: chunks into ranges, ranges into the
tensor (`chunk_ranges`), so a range may be computed elsewhere (a Dask task) to the same bits.
`TensorAccumulator.results` turns the merged partials into the records. Nothing is materialised
at full-tensor size, so memory is bounded by the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import torch
from torch import Tensor

from altgrad_cli.engine.allocator import release_freed_memory
from altgrad_cli.engine.blocks import BlockStats, block_stats
from altgrad_cli.engine.kernel import (
    FormatAccumulator,
    GroupedScale,
    ScalePair,
    TensorCounts,
    prepare_chunk,
    update_format,
)
from altgrad_cli.engine.parallel import ChunkPool, one_torch_thread, ordered_map
from altgrad_cli.engine.stats import UlpHistogram, fold_grid_steps
from altgrad_cli.numerics.bits import working_dtype
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.layout import iter_chunks
from altgrad_cli.numerics.recipes import Recipe, get_recipe
from altgrad_cli.numerics.scaling import (
    Scale,
    ScaleMode,
    ScaleRule,
    Scaling,
    coarser_amax,
    group_amax,
    matrix_view,
    nvfp4_tensor_scale,
    scale_from_amax,
)
from altgrad_cli.report.records import (
    Blocks,
    GradStiffness,
    GridAlignment,
    GridSteps,
    GroupScales,
    Metrics,
    Outcome,
    PredictedVsActual,
    ScaleRecord,
    SingleScale,
    Stiffness,
    UlpStats,
    UpdateStiffness,
    to_json,
)

R = TypeVar("R")
T = TypeVar("T")

DEFAULT_GRAD_EPS = 1e-10
DEFAULT_CHUNK = 1 << 18
RANGE_CHUNKS = 32
"""Chunks merge into ranges of this many, ranges into the tensor (see `chunk_ranges`); a Dask task
computes one range (engine/distributed.py): 8M elements at the default chunk size."""
MANY_SCALES = (ScaleMode.CHANNEL, ScaleMode.BLOCK, ScaleMode.NVFP4)


@dataclass
class TensorAccumulator:
    """The format-independent counts and ULPs of one tensor, plus one FormatAccumulator (and,
    for recipes with many scales, one BlockStats) per recipe, keyed by its canonical name. A
    bare Format counts as the format under its default scaling."""

    recipes: tuple[Recipe, ...]
    has_grads: bool
    counts: TensorCounts = field(default_factory=TensorCounts)
    ulp: UlpHistogram = field(default_factory=UlpHistogram)
    per_format: dict[str, FormatAccumulator] = field(default_factory=dict)
    blocks: dict[str, BlockStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.recipes = tuple(get_recipe(r) for r in self.recipes)
        for recipe in self.recipes:
            self.per_format.setdefault(recipe.name, FormatAccumulator())
            if recipe.scaling.mode in MANY_SCALES:
                self.blocks.setdefault(recipe.name, BlockStats())

    def merge(self, other: TensorAccumulator) -> None:
        self.counts.merge(other.counts)
        self.ulp.merge(other.ulp)
        for name, acc in other.per_format.items():
            self.per_format.setdefault(name, FormatAccumulator()).merge(acc)
        for name, stats in other.blocks.items():
            self.blocks.setdefault(name, BlockStats()).merge(stats)

    def update(
        self,
        before: Tensor,
        after: Tensor,
        grad: Tensor | None,
        scales: Sequence[ScalePair],
        grad_eps: float = DEFAULT_GRAD_EPS,
        overflow_free: Sequence[bool] = (),
    ) -> None:
        """Add one chunk. `before`/`after`/`grad` are in their storage dtype; `scales` holds, per
        recipe, the scales (broadcastable to the chunk) to divide BEFORE and AFTER by, or None;
        `overflow_free` per recipe whether BEFORE's scales keep every element in range
        (`Scale.overflow_free`; missing means not known)."""
        prepared = prepare_chunk(before, after, grad, scales, grad_eps, self.counts, self.ulp)
        if prepared is None:
            return
        chunk, flat_scales = prepared
        free = tuple(overflow_free) + (False,) * (len(self.recipes) - len(overflow_free))
        for recipe, (s_before, s_after), fits in zip(self.recipes, flat_scales, free, strict=True):
            sc = recipe.scaling
            update_format(
                self.per_format[recipe.name],
                recipe.format,
                chunk,
                s_before,
                s_after,
                power_of_two=sc.mode is ScaleMode.BLOCK and sc.rule is not ScaleRule.FP32,
                overflow_free=fits,
            )

    def results(self) -> dict[str, Metrics]:
        """One record per recipe, keyed by its canonical name (SPEC §Metrics)."""
        return {recipe.name: self._record(recipe) for recipe in self.recipes}

    def _record(self, recipe: Recipe) -> Metrics:
        c, acc = self.counts, self.per_format[recipe.name]
        fc = acc.counts
        numel, n = c.numel, c.n
        n_nonzero = n - fc.stiffness_zero
        flips, on_updates, updates = fc.flips, fc.flips_on_updates, c.updates
        stiffness_hist = acc.stiffness_hist.result()
        if fc.stiffness_zero:
            stiffness_hist["zero"] = fc.stiffness_zero
        stiffness = acc.stiffness.result()
        grid_error = acc.grid_error.result()
        grad_stiffness = None
        if self.has_grads:
            grad_stiffness = GradStiffness(
                correlation=acc.grad.correlation(),
                ratio_mean=acc.grad_ratio.mean if n_nonzero else None,
                below_frac=fc.grad_below / n_nonzero if n_nonzero else 0.0,
            )
        return Metrics(
            numel=numel,
            nonfinite=c.nonfinite,
            updates=updates,
            update_source="grads" if self.has_grads else "delta",
            flips=flips,
            flips_on_updates=on_updates,
            flips_without_update=flips - on_updates,
            flip_rate=flips / numel if numel else 0.0,
            stall_ratio=compute_stall_ratio(on_updates, updates),
            grid_steps=GridSteps(
                mean=fc.steps_sum / n if n else 0.0,
                max=acc.steps_max,
                histogram=fold_grid_steps(acc.grid_steps.counts),
            ),
            ulp=UlpStats(**self.ulp.result()),
            stiffness=Stiffness(
                mean=stiffness["mean"] if n_nonzero else None,
                min=stiffness["min"],
                max=stiffness["max"],
                histogram=stiffness_hist,
            ),
            grid_alignment=GridAlignment(
                mean=grid_error["mean"],
                max=grid_error["max"] if n else 0.0,
                std=acc.grid_error.std,
                on_grid_frac=fc.on_grid / n if n else 0.0,
                rel_mean=acc.grid_rel.mean if n_nonzero else None,
            ),
            grad_stiffness=grad_stiffness,
            update_stiffness=UpdateStiffness(
                ratio_mean=acc.update_ratio.mean if n_nonzero else None,
                below_half_frac=(fc.pred_stall_flipped + fc.pred_stall_stalled) / n_nonzero
                if n_nonzero
                else 0.0,
                predicted_vs_actual=PredictedVsActual(
                    predicted_flip=Outcome(fc.pred_flip_flipped, fc.pred_flip_stalled),
                    predicted_stall=Outcome(fc.pred_stall_flipped, fc.pred_stall_stalled),
                ),
            ),
            stored=acc.stored.result(),
            overflow_frac=fc.overflow / numel if numel else 0.0,
            underflow_frac=fc.underflow / numel if numel else 0.0,
            blocks=(
                Blocks(**self.blocks[recipe.name].result(fc.underflow, n_nonzero))
                if recipe.name in self.blocks
                else None
            ),
        )


def compute_stall_ratio(flips: int, updates: int) -> float:
    """1 − flips / updates: the share of attempted updates that did not change the code.

    0.0 when nothing was updated (no gradient, no stall); clamped to [0, 1] so flips counted
    outside the updated elements can never make it negative.
    """
    if updates == 0:
        return 0.0
    return min(1.0, max(0.0, 1.0 - flips / updates))


# ----------------------------------------------------------------------------- driving


def scale_summary(scale: Scale, fmt: Format) -> ScaleRecord:
    """What scaling a record used: its mode, and the value of a single scale (NVFP4: the
    tensor scale t). Many scales are described by the record's `blocks`."""
    values = scale.values.reshape(-1)
    if scale.is_single:
        return SingleScale(str(scale.scaling), float(values[0]) if values.numel() else 1.0)
    t = None
    if scale.scaling.mode is ScaleMode.NVFP4:
        t = float(nvfp4_tensor_scale(scale.amax, fmt))
    return GroupScales(mode=str(scale.scaling), tensor_scale=t)


def tensor_metrics(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format | Recipe | str],
    scaling: Scaling | str | None = None,
    *,
    rescale: bool = False,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(records, scales) per recipe name for one tensor, in their JSON form (plain dicts, for
    use on tensors in a training loop), streamed in chunks of about `chunk` elements.
    `formats` are formats or recipes; `scaling` applies to bare formats (default: each
    format's own, `none` for bf16/fp16, else `tensor`)."""
    acc, scales = accumulate_tensor(
        before, after, grad, formats, scaling, rescale=rescale, grad_eps=grad_eps, chunk=chunk
    )
    records = {name: to_json(metrics) for name, metrics in acc.results().items()}
    return records, {name: to_json(scale) for name, scale in scales.items()}


Bounds = tuple[int, int, int, int]
"""One chunk: (row0, row1, col0, col1) of the tensor's 2-D view."""


def _lcm(values: Sequence[int]) -> int:
    return math.lcm(*values) if values else 1


def _one_scale_each(scalings: Sequence[Scaling]) -> bool:
    return all(s.mode in (ScaleMode.TENSOR, ScaleMode.POW2, ScaleMode.NONE) for s in scalings)


def chunk_view(shape: tuple[int, ...], scalings: Sequence[Scaling]) -> tuple[int, int]:
    """The 2-D view every recipe's scales address: 1 × numel when every recipe has one scale
    (the fast path), else P × last dim (`matrix_view`)."""
    if _one_scale_each(scalings):
        return 1, math.prod(shape)
    rows, cols, _ = matrix_view(shape)
    return rows, cols


def chunk_plan(shape: tuple[int, ...], scalings: Sequence[Scaling], chunk: int) -> list[Bounds]:
    """The chunks of `chunk_view`, in order: runs of whole rows, or of one row cut where every
    blocked recipe's blocks start (their widths' least common multiple, else their greatest
    common divisor when that multiple is wider than a chunk). Rows need not hold whole tiles:
    the scales are known before the chunks, and `Scale.for_chunk` finds each row's tile. Whole
    rows keep a chunk contiguous in memory, so it is read in place rather than copied."""
    if _one_scale_each(scalings):
        return list(iter_chunks(1, math.prod(shape), chunk))
    rows, cols, _ = matrix_view(shape)
    blocked = [s for s in scalings if s.is_blocked]
    width = _lcm([s.cols for s in blocked])
    if width > chunk:
        width = math.gcd(*[s.cols for s in blocked]) if blocked else 1
    return list(iter_chunks(rows, cols, chunk, width))


def chunk_ranges(
    shape: tuple[int, ...], scalings: Sequence[Scaling], chunk: int, per_range: int = RANGE_CHUNKS
) -> list[list[Bounds]]:
    """The tensor's chunks in order, cut into consecutive ranges of `per_range` chunks (the last
    may hold fewer).

    This is the fixed reduction tree of a tensor: chunks fold into their range, ranges into the
    tensor. It depends on the shape, the scalings and the chunk size only, so a range computed
    anywhere (a thread here, a Dask task elsewhere) merges into the same numbers, to the bit."""
    chunks = chunk_plan(shape, scalings, chunk)
    return [chunks[i : i + per_range] for i in range(0, len(chunks), per_range)]


def accumulate_tensor(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format | Recipe | str],
    scaling: Scaling | str | None = None,
    *,
    rescale: bool = False,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
    pool: ChunkPool | None = None,
) -> tuple[TensorAccumulator, dict[str, ScaleRecord]]:
    """The mergeable accumulator of one tensor (for summaries across tensors) and its scales.

    Each recipe has its own scaling; recipes whose scales group the tensor alike share one amax
    pass per side. With a `pool`, chunks run on its threads; their partial results are merged in
    chunk order, into one accumulator per chunk range, and the ranges in order into the tensor's."""
    recipes = tuple(dict.fromkeys(get_recipe(f, scaling) for f in formats))
    scale_pairs = tensor_scales(before, after, recipes, rescale=rescale, pool=pool)
    summaries = scale_summaries(recipes, scale_pairs)
    blocks = recipe_block_stats(recipes, scale_pairs, rescale=rescale, pool=pool)
    # the per-group amax arrays are done with: not held while the chunks run (for the 8M NVFP4
    # blocks of a 32000×4096 embedding, 32 MiB)
    scale_pairs = [_without_amax(pair) for pair in scale_pairs]
    many = any(not pair[0].is_single for pair in scale_pairs)
    if many:
        release_freed_memory()
    acc = accumulate_scaled(
        before, after, grad, recipes, scale_pairs, grad_eps=grad_eps, chunk=chunk, pool=pool
    )
    for name, stats in blocks.items():
        acc.blocks[name].merge(stats)
    if many:  # the chunks' buffers too, before the next tensor's scale arrays are allocated
        release_freed_memory()
    return acc, summaries


def _without_amax(pair: tuple[Scale, Scale]) -> tuple[Scale, Scale]:
    """The pair with its amax arrays dropped, BEFORE and AFTER still one object without rescale."""
    before = replace(pair[0], amax=None)
    return (before, before) if pair[1] is pair[0] else (before, replace(pair[1], amax=None))


def tensor_scales(
    before: Tensor,
    after: Tensor,
    recipes: Sequence[Recipe],
    *,
    rescale: bool = False,
    pool: ChunkPool | None = None,
) -> list[tuple[Scale, Scale]]:
    """Per recipe, the scales BEFORE and AFTER are divided by: one whole-tensor amax pass per side
    and grouping, shared by the recipes that group alike. Every chunk range needs these. With a
    `pool`, the recipes' scales are computed from the amax arrays on its threads."""
    dtype = working_dtype(before.dtype)
    shape = tuple(before.shape)
    amax: dict[tuple, tuple[Tensor, Tensor]] = {}
    fine: dict[int, tuple[Tensor, Tensor]] = {}  # 1-D block amaxes by width, to coarsen
    # 1-D blocks first, narrowest first: wider blocks and tiles are unions of them
    for sc in sorted(
        {r.scaling.grouping: r.scaling for r in recipes}.values(),
        key=lambda sc: (not sc.is_blocked, sc.rows, sc.cols),
    ):
        if sc.mode is ScaleMode.NONE:
            continue
        base = next((w for w in fine if sc.is_blocked and sc.cols % w == 0), None)
        if base is not None:  # no pass over the elements: from the narrower blocks' amax
            fb, fa = fine[base]
            side_b = coarser_amax(fb, base, sc, shape)
            side_a = coarser_amax(fa, base, sc, shape) if rescale else side_b
        else:
            with one_torch_thread() if pool is not None else nullcontext():
                side_b = group_amax(before, sc, executor=pool)
                side_a = group_amax(after, sc, executor=pool) if rescale else side_b
        amax[sc.grouping] = (side_b, side_a)
        if sc.is_blocked and sc.rows == 1 and base is None:
            fine[sc.cols] = (side_b, side_a)

    def pair(recipe: Recipe) -> tuple[Scale, Scale]:
        fmt, sc = recipe.format, recipe.scaling
        amax_b, amax_a = amax.get(sc.grouping, (None, None))
        s_before = scale_from_amax(amax_b, fmt, sc, shape, dtype)
        s_after = scale_from_amax(amax_a, fmt, sc, shape, dtype) if rescale else s_before
        return s_before, s_after

    return _on_pool(pair, recipes, pool)


def _on_pool(fn: Callable[[R], T], items: Sequence[R], pool: ChunkPool | None) -> list[T]:
    """fn of each item (one per recipe), in order; on the pool's threads (torch on one thread
    each) when there is one and more than one item: the per-group work of four recipes is
    otherwise serial."""
    if pool is None or len(items) < 2:
        return [fn(item) for item in items]
    with one_torch_thread():
        return list(ordered_map(fn, items, pool))


def add_block_stats(
    acc: TensorAccumulator,
    recipes: Sequence[Recipe],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    *,
    rescale: bool,
) -> None:
    """The `blocks` statistics of every recipe with many scales, from its per-group arrays."""
    for name, stats in recipe_block_stats(recipes, scale_pairs, rescale=rescale).items():
        acc.blocks[name].merge(stats)


def recipe_block_stats(
    recipes: Sequence[Recipe],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    *,
    rescale: bool,
    pool: ChunkPool | None = None,
) -> dict[str, BlockStats]:
    """BlockStats per recipe with many scales, by canonical name (on the pool's threads, if any)."""
    many = [
        (recipe, pair)
        for recipe, pair in zip(recipes, scale_pairs, strict=True)
        if not pair[0].is_single
    ]

    def stats(item: tuple[Recipe, tuple[Scale, Scale]]) -> BlockStats:
        recipe, (s_before, s_after) = item
        return block_stats(s_before, s_after if rescale else None, recipe.format)

    found = _on_pool(stats, many, pool)
    return {recipe.name: one for (recipe, _), one in zip(many, found, strict=True)}


def scale_summaries(
    recipes: Sequence[Recipe], scale_pairs: Sequence[tuple[Scale, Scale]]
) -> dict[str, ScaleRecord]:
    """The `scale` entry of each recipe's record (BEFORE's scales)."""
    return {
        recipe.name: scale_summary(pair[0], recipe.format)
        for recipe, pair in zip(recipes, scale_pairs, strict=True)
    }


def accumulate_scaled(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format | Recipe],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    *,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
    pool: ChunkPool | None = None,
) -> TensorAccumulator:
    """The accumulator of one tensor under scales already known: per format or recipe, the
    (BEFORE, AFTER) `Scale` pair; the pairs' scalings together set the chunk layout.
    `accumulate_tensor` computes the scales and comes here; the seed functions, whose callers
    hand them a scale, come here too, so they run the CLI's chunks, kernel and merge order and
    get its numbers to the bit. A bare Format is keyed by its name."""
    recipes = tuple(get_recipe(f) for f in formats)
    scalings = [pair[0].scaling for pair in scale_pairs]
    ranges = chunk_ranges(tuple(before.shape), scalings, chunk)
    acc = TensorAccumulator(recipes, grad is not None)
    for part in accumulate_ranges(
        before, after, grad, recipes, scale_pairs, ranges, grad_eps=grad_eps, pool=pool
    ):
        acc.merge(part)
    return acc


def _chunk_scales(scale: Scale, bounds: Bounds, dtype: torch.dtype) -> Tensor | GroupedScale:
    """A chunk's scales for the kernel: its groups' scales when the chunk holds whole groups
    (the kernel broadcasts them), else broadcastable to the chunk."""
    grouped = scale.groups_for_chunk(*bounds)
    if grouped is not None:
        return GroupedScale(grouped[0].to(dtype), grouped[1])
    return scale.for_chunk(*bounds).to(dtype)


def accumulate_ranges(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    recipes: Sequence[Recipe],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    ranges: Sequence[Sequence[Bounds]],
    *,
    grad_eps: float = DEFAULT_GRAD_EPS,
    pool: ChunkPool | None = None,
) -> Iterator[TensorAccumulator]:
    """One accumulator per range of `chunk_ranges`, each its chunks merged in order.

    `before`/`after`/`grad` are the whole tensors (views cost nothing); only the chunks named in
    `ranges` are read. With a `pool`, chunks run on its threads, across range boundaries."""
    recipes = tuple(recipes)
    dtype = working_dtype(before.dtype)
    rows, cols = chunk_view(tuple(before.shape), [pair[0].scaling for pair in scale_pairs])
    b2, a2 = before.reshape(rows, cols), after.reshape(rows, cols)
    g2 = grad.reshape(rows, cols) if grad is not None else None
    free = tuple(pair[0].overflow_free for pair in scale_pairs)

    def one_chunk(bounds: Bounds) -> TensorAccumulator:
        r0, r1, c0, c1 = bounds
        pairs = []
        for s_before, s_after in scale_pairs:
            first = None if s_before.is_unit else _chunk_scales(s_before, bounds, dtype)
            if s_after is s_before:  # without --rescale: one expansion serves both sides
                pairs.append((first, first))
            else:
                pairs.append((first, _chunk_scales(s_after, bounds, dtype)))
        part = TensorAccumulator(recipes, grad is not None)
        part.update(
            b2[r0:r1, c0:c1],
            a2[r0:r1, c0:c1],
            None if g2 is None else g2[r0:r1, c0:c1],
            pairs,
            grad_eps,
            free,
        )
        return part

    owner = [i for i, bounds in enumerate(ranges) for _ in bounds]
    flat = (bounds for chunks in ranges for bounds in chunks)
    current, index = None, -1
    with one_torch_thread():  # per-chunk sums that do not depend on the machine's core count
        for i, part in zip(owner, ordered_map(one_chunk, flat, pool), strict=True):
            if i != index:
                if current is not None:
                    yield current
                current, index = TensorAccumulator(recipes, grad is not None), i
            current.merge(part)
    if current is not None:
        yield current
