"""The per-(tensor, format) records of SPEC §Metrics, from chunks.

`accumulate_tensor` computes the scales of a tensor (one amax pass per side, shared by every
format), cuts it into chunks that never straddle a scale group, has chunk.py turn each chunk into
partial statistics (on a pool of threads when given one) and merges them in chunk order: chunks
into ranges, ranges into the tensor (`chunk_ranges`), so a range may be computed elsewhere.
`TensorAccumulator.results` turns the merged partials into the records. Nothing is materialised
at full-tensor size, so memory is bounded by the chunk size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from altgrad_cli.engine.kernel import (
    EXP_HIGH,
    EXP_LOW,
    FormatAccumulator,
    ScalePair,
    TensorCounts,
    prepare_chunk,
    update_format,
)
from altgrad_cli.engine.parallel import ChunkPool, one_torch_thread, ordered_map
from altgrad_cli.engine.stats import BinnedCounts, UlpHistogram, fold_grid_steps
from altgrad_cli.numerics.bits import floor_log2, working_dtype
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.layout import iter_chunks
from altgrad_cli.numerics.rounding import overflow_mask
from altgrad_cli.numerics.scaling import Scale, Scaling, group_amax, parse_scaling, scale_from_amax
from altgrad_cli.report.records import (
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

DEFAULT_GRAD_EPS = 1e-10
DEFAULT_CHUNK = 1 << 18
RANGE_CHUNKS = 32
"""Chunks merge into ranges of this many, ranges into the tensor (see `chunk_ranges`); a Dask task
computes one range (engine/distributed.py): 8M elements at the default chunk size."""


@dataclass
class TensorAccumulator:
    """The format-independent counts and ULPs of one tensor, plus one FormatAccumulator per format."""

    formats: tuple[Format, ...]
    has_grads: bool
    counts: TensorCounts = field(default_factory=TensorCounts)
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
        scales: Sequence[ScalePair],
        grad_eps: float = DEFAULT_GRAD_EPS,
    ) -> None:
        """Add one chunk. `before`/`after`/`grad` are in their storage dtype; `scales` holds, per
        format, the scales (broadcastable to the chunk) to divide BEFORE and AFTER by, or None."""
        prepared = prepare_chunk(before, after, grad, scales, grad_eps, self.counts, self.ulp)
        if prepared is None:
            return
        chunk, flat_scales = prepared
        for fmt, (s_before, s_after) in zip(self.formats, flat_scales, strict=True):
            update_format(self.per_format[fmt.name], fmt, chunk, s_before, s_after)

    def results(self) -> dict[str, Metrics]:
        """One record per format, keyed by format name (SPEC §Metrics)."""
        return {fmt.name: self._record(fmt) for fmt in self.formats}

    def _record(self, fmt: Format) -> Metrics:
        c, acc = self.counts, self.per_format[fmt.name]
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
    """The scale(s) of one tensor for its record: the value, or count/min/max/log2 histogram
    and the fraction of groups whose largest element was clipped."""
    values = scale.values.reshape(-1).to(torch.float64)
    if scale.scaling.mode in ("tensor", "pow2", "none"):
        return SingleScale(str(scale.scaling), float(values[0]) if values.numel() else 1.0)
    amax = scale.amax.reshape(-1)
    ratio = (amax.to(torch.float64) / values).to(amax.dtype)
    clipped = int(overflow_mask(ratio, fmt).sum()) if values.numel() else 0
    hist = BinnedCounts.empty(EXP_LOW, EXP_HIGH)
    hist.update(floor_log2(values))
    return GroupScales(
        mode=str(scale.scaling),
        count=values.numel(),
        min=float(values.min()) if values.numel() else None,
        max=float(values.max()) if values.numel() else None,
        log2_histogram=hist.result(),
        clipped_frac=clipped / values.numel() if values.numel() else 0.0,
    )


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
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(records, scales) per format name for one tensor, in their JSON form (plain dicts, for
    use on tensors in a training loop), streamed in chunks of about `chunk` elements."""
    acc, scales = accumulate_tensor(
        before, after, grad, formats, scaling, rescale=rescale, grad_eps=grad_eps, chunk=chunk
    )
    records = {name: to_json(metrics) for name, metrics in acc.results().items()}
    return records, {name: to_json(scale) for name, scale in scales.items()}


Bounds = tuple[int, int, int, int]
"""One chunk: (row0, row1, col0, col1) of the tensor's 2-D view."""


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
    pool: ChunkPool | None = None,
) -> tuple[TensorAccumulator, dict[str, ScaleRecord]]:
    """The mergeable accumulator of one tensor (for summaries across tensors) and its scales.

    With a `pool`, chunks run on its threads; their partial results are merged in chunk order,
    into one accumulator per chunk range, and the ranges in order into the tensor's."""
    scaling = parse_scaling(scaling)
    formats = tuple(formats)
    scale_pairs = tensor_scales(before, after, formats, scaling, rescale=rescale)
    acc = accumulate_scaled(
        before, after, grad, formats, scale_pairs, grad_eps=grad_eps, chunk=chunk, pool=pool
    )
    return acc, scale_summaries(formats, scale_pairs)


def tensor_scales(
    before: Tensor,
    after: Tensor,
    formats: Sequence[Format],
    scaling: Scaling,
    *,
    rescale: bool = False,
) -> list[tuple[Scale, Scale]]:
    """Per format, the scales BEFORE and AFTER are divided by: one whole-tensor amax pass per
    side, shared by every format. Every chunk range of the tensor needs these."""
    dtype = working_dtype(before.dtype)
    shape = tuple(before.shape)
    amax_before = None if scaling.mode == "none" else group_amax(before, scaling)
    amax_after = group_amax(after, scaling) if rescale and amax_before is not None else amax_before
    scale_pairs: list[tuple[Scale, Scale]] = []
    for fmt in formats:
        s_before = scale_from_amax(amax_before, fmt, scaling, shape, dtype)
        s_after = scale_from_amax(amax_after, fmt, scaling, shape, dtype) if rescale else s_before
        scale_pairs.append((s_before, s_after))
    return scale_pairs


def scale_summaries(
    formats: Sequence[Format], scale_pairs: Sequence[tuple[Scale, Scale]]
) -> dict[str, ScaleRecord]:
    """The `scale` entry of each format's record (BEFORE's scales)."""
    return {
        fmt.name: scale_summary(pair[0], fmt)
        for fmt, pair in zip(formats, scale_pairs, strict=True)
    }


def accumulate_scaled(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    *,
    grad_eps: float = DEFAULT_GRAD_EPS,
    chunk: int = DEFAULT_CHUNK,
    pool: ChunkPool | None = None,
) -> TensorAccumulator:
    """The accumulator of one tensor under scales already known: per format, the (BEFORE, AFTER)
    `Scale` pair, all of one scaling (it sets the chunk layout). `accumulate_tensor` computes
    the scales and comes here; the seed functions, whose callers hand them a scale, come here
    too, so they run the CLI's chunks, kernel and merge order and get its numbers to the bit."""
    layout = layout_scaling(scale_pairs)
    ranges = chunk_ranges(tuple(before.shape), layout, chunk)
    acc = TensorAccumulator(tuple(formats), grad is not None)
    for part in accumulate_ranges(
        before, after, grad, formats, scale_pairs, ranges, grad_eps=grad_eps, pool=pool
    ):
        acc.merge(part)
    return acc


def layout_scaling(scale_pairs: Sequence[tuple[Scale, Scale]]) -> Scaling:
    """The scaling that sets a tensor's 2-D view and chunks: the formats' (all share one), or
    one flat row when there is no format."""
    return scale_pairs[0][0].scaling if scale_pairs else Scaling("tensor")


def chunk_ranges(
    shape: tuple[int, ...], scaling: Scaling, chunk: int, per_range: int = RANGE_CHUNKS
) -> list[list[Bounds]]:
    """The tensor's chunks in order, cut into consecutive ranges of `per_range` chunks (the last
    may hold fewer); `scaling` is the layout's (`layout_scaling`).

    This is the fixed reduction tree of a tensor: chunks fold into their range, ranges into the
    tensor. It depends on the shape, the scaling and the chunk size only, so a range computed
    anywhere (a thread here, a Dask task elsewhere) merges into the same numbers, to the bit."""
    rows, cols = Scale(scaling, torch.ones(()), shape).view_shape()
    align = scaling.block if scaling.mode == "block" else 1
    chunks = list(iter_chunks(rows, cols, chunk, align))
    return [chunks[i : i + per_range] for i in range(0, len(chunks), per_range)]


def accumulate_ranges(
    before: Tensor,
    after: Tensor,
    grad: Tensor | None,
    formats: Sequence[Format],
    scale_pairs: Sequence[tuple[Scale, Scale]],
    ranges: Sequence[Sequence[Bounds]],
    *,
    grad_eps: float = DEFAULT_GRAD_EPS,
    pool: ChunkPool | None = None,
) -> Iterator[TensorAccumulator]:
    """One accumulator per range of `chunk_ranges`, each its chunks merged in order.

    `before`/`after`/`grad` are the whole tensors (views cost nothing); only the chunks named in
    `ranges` are read. With a `pool`, chunks run on its threads, across range boundaries."""
    formats = tuple(formats)
    dtype = working_dtype(before.dtype)
    rows, cols = Scale(
        layout_scaling(scale_pairs), torch.ones(()), tuple(before.shape)
    ).view_shape()
    b2, a2 = before.reshape(rows, cols), after.reshape(rows, cols)
    g2 = grad.reshape(rows, cols) if grad is not None else None

    def one_chunk(bounds: Bounds) -> TensorAccumulator:
        r0, r1, c0, c1 = bounds
        pairs = [
            tuple(None if s.is_unit else s.for_chunk(r0, r1, c0, c1).to(dtype) for s in pair)
            for pair in scale_pairs
        ]
        part = TensorAccumulator(formats, grad is not None)
        part.update(
            b2[r0:r1, c0:c1],
            a2[r0:r1, c0:c1],
            None if g2 is None else g2[r0:r1, c0:c1],
            pairs,
            grad_eps,
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
                current, index = TensorAccumulator(formats, grad is not None), i
            current.merge(part)
    if current is not None:
        yield current
