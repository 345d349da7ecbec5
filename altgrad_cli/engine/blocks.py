"""The `blocks` record (SPEC §Recipes): what a tensor's many scales look like, mergeable.

Computed once per tensor from its group arrays (one amax and one scale per channel, block or
tile — a fixed fraction of the tensor, never the elements), so it cannot depend on how the
elements are chunked or on the thread count. Counts are exact integers; the log2 moments merge by
Chan's method, so a summary over tensors equals the whole-checkpoint value up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from altgrad_cli.engine.stats import BinnedCounts, Moments
from altgrad_cli.numerics.bits import floor_log2
from altgrad_cli.numerics.formats import Format
from altgrad_cli.numerics.rounding import overflow_mask
from altgrad_cli.numerics.scaling import Scale

LOG2_LOW, LOG2_HIGH = -1100, 1100  # floor(log2 s) of any float64 scale lies in here
SLICE = 1 << 18  # groups per pass: a fixed size, so the numbers never depend on the chunking


@dataclass
class BlockStats:
    """Scale statistics of the groups of one or more tensors under one recipe."""

    count: int = 0
    clipped: int = 0
    changed: int = 0
    log2: Moments = field(default_factory=Moments)  # of log2 s, unfloored; min/max of log2 s
    values: Moments = field(default_factory=Moments)  # of s itself: min and max
    histogram: BinnedCounts = field(default_factory=lambda: BinnedCounts.empty(LOG2_LOW, LOG2_HIGH))

    def merge(self, other: BlockStats) -> None:
        self.count += other.count
        self.clipped += other.clipped
        self.changed += other.changed
        self.log2.merge(other.log2)
        self.values.merge(other.values)
        self.histogram.merge(other.histogram)

    def result(self, deadzone: int, nonzero: int) -> dict:
        """The record; `deadzone` of the `nonzero` finite non-zero BEFORE elements round to 0."""
        empty = self.count == 0
        return {
            "count": self.count,
            "min": None if empty else self.values.min,
            "max": None if empty else self.values.max,
            "log2_histogram": self.histogram.result(),
            "log2_std": self.log2.std,
            "clipped_frac": self.clipped / self.count if self.count else 0.0,
            "deadzone_frac": deadzone / nonzero if nonzero else 0.0,
            "scale_changed_frac": self.changed / self.count if self.count else 0.0,
        }


def block_stats(before: Scale, after: Scale | None, fmt: Format) -> BlockStats:
    """BlockStats of one tensor: its BEFORE scales (and, with `--rescale`, AFTER's own, for the
    share of groups whose scale changed). A group clips when amax / s is beyond max_F plus half
    the top step (the `overflow_frac` rule); a group with a non-finite amax never clips."""
    stats = BlockStats()
    values, amax = before.values.reshape(-1), before.amax.reshape(-1)
    other = after.values.reshape(-1) if after is not None and after is not before else None
    for start in range(0, values.numel(), SLICE):  # fixed slices: transient memory bounded
        part = values[start : start + SLICE]
        s64 = part.to(torch.float64)
        stats.count += part.numel()
        stats.values.update(s64)
        stats.log2.update(torch.log2(s64))
        stats.histogram.update(floor_log2(s64))
        top = amax[start : start + SLICE]
        over = overflow_mask(top / part.to(top.dtype), fmt) & torch.isfinite(top)
        stats.clipped += int(torch.count_nonzero(over))
        if other is not None:
            stats.changed += int(torch.count_nonzero(other[start : start + SLICE] != part))
    return stats
