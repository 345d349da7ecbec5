"""Mergeable accumulators: update(chunk) or a partial result, merge(other), result().

Every statistic altgrad reports is one of these, so chunks of a tensor, tensors of a checkpoint
and shards analysed on different machines combine into the same numbers. Counts are exact
integers; sums and moments are float64 and combined by Chan et al.'s parallel method, so the
merged result equals the whole-tensor result up to float rounding, whatever the chunking.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Moments:
    """Count, mean, sum of squared deviations (M2), min and max of a stream of values."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def update(self, values: Tensor) -> None:
        self.merge(Moments.of(values))

    @classmethod
    def of(cls, values: Tensor) -> Moments:
        """M2 from the float64 sum and sum of squares (no centred copy), unless they cancel,
        that is unless the values are nearly equal: then two passes, and exactly 0 when all are."""
        if values.numel() == 0:
            return cls()
        v = values.detach().reshape(-1).to(torch.float64)
        n = v.numel()
        low, high = (float(x) for x in torch.aminmax(v))
        total = float(v.sum())
        mean = total / n
        if low == high:
            mean, m2 = low, 0.0
        else:
            squares = float(torch.dot(v, v))
            m2 = squares - total * mean
            if m2 <= 1e-6 * squares:  # cancellation would cost more than 1e-10 of M2
                centered = v - mean
                m2 = float(torch.dot(centered, centered))
        return cls(n, mean, m2, low, high)

    def merge(self, other: Moments) -> None:
        if other.n == 0:
            return
        if self.n == 0:  # exactly the other, not the other rounded through the update below
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            self.min, self.max = other.min, other.max
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); 0.0 with fewer than two values."""
        return math.sqrt(max(self.m2, 0.0) / (self.n - 1)) if self.n > 1 else 0.0

    def result(self) -> dict[str, float | None]:
        empty = self.n == 0
        return {
            "mean": 0.0 if empty else self.mean,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "std": self.std,
        }


@dataclass
class Mean:
    """Count, float64 sum, min and max: the cheap accumulator for reported means. chunk.py
    computes each chunk's sum its own way (often a weighted dot product) and merges it in."""

    n: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def merge(self, other: Mean) -> None:
        self.n += other.n
        self.total += other.total
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def result(self) -> dict[str, float | None]:
        empty = self.n == 0
        return {
            "mean": self.mean,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
        }


def _exact_mean(x: Tensor) -> float:
    """The mean, exactly the value itself when every value is equal (a rounded sum/n would leave
    deviations of one ULP, and a constant would correlate ±1 instead of not at all)."""
    low, high = torch.aminmax(x)
    return float(low) if low == high else float(x.mean())


@dataclass
class CoMoments:
    """Means, M2s and the co-moment of pairs (x, y), for Pearson correlation."""

    n: int = 0
    mean_x: float = 0.0
    mean_y: float = 0.0
    m2_x: float = 0.0
    m2_y: float = 0.0
    c_xy: float = 0.0

    def update(self, x: Tensor, y: Tensor) -> None:
        if x.numel() == 0:
            return
        x64 = x.detach().reshape(-1).to(torch.float64)
        y64 = y.detach().reshape(-1).to(torch.float64)
        mx, my = _exact_mean(x64), _exact_mean(y64)
        dx, dy = x64 - mx, y64 - my
        self.merge(
            CoMoments(
                x64.numel(),
                mx,
                my,
                float((dx * dx).sum()),
                float((dy * dy).sum()),
                float((dx * dy).sum()),
            )
        )

    def merge(self, other: CoMoments) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean_x, self.mean_y = other.n, other.mean_x, other.mean_y
            self.m2_x, self.m2_y, self.c_xy = other.m2_x, other.m2_y, other.c_xy
            return
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        w = self.n * other.n / n
        self.c_xy += other.c_xy + dx * dy * w
        self.m2_x += other.m2_x + dx * dx * w
        self.m2_y += other.m2_y + dy * dy * w
        self.mean_x += dx * other.n / n
        self.mean_y += dy * other.n / n
        self.n = n

    def correlation(self) -> float:
        """Pearson's r; 0.0 when undefined (fewer than two pairs or a constant side)."""
        denominator = math.sqrt(max(self.m2_x, 0.0) * max(self.m2_y, 0.0))
        if self.n < 2 or denominator == 0.0:
            return 0.0
        return max(-1.0, min(1.0, self.c_xy / denominator))


@dataclass(slots=True)
class Counters:
    """Exact integer counters as the fields of a subclass (also `slots=True`), so a misspelt
    counter is an AttributeError, never a silent 0; merge adds field by field."""

    def merge(self, other: Counters) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def sparse_counts(counts: Tensor) -> tuple[int, bytes, bytes]:
    """(length, indices, values) of the non-zero bins, as int64 bytes: how histograms pickle. A
    chunk range fills a few hundred of the ULP histogram's 32641 bins, and a Dask run ships one
    per task to the client (9 KB instead of 280 KB, and no tensor to rebuild from a list)."""
    index = torch.nonzero(counts).reshape(-1)
    return len(counts), _int64_bytes(index), _int64_bytes(counts[index])


def dense_counts(sparse: tuple[int, bytes, bytes]) -> Tensor:
    """The int64 bins back from `sparse_counts`."""
    length, index, values = sparse
    counts = torch.zeros(length, dtype=torch.int64)
    if index:
        counts[_int64_tensor(index)] = _int64_tensor(values)
    return counts


def _int64_bytes(values: Tensor) -> bytes:
    return array("q", values.tolist()).tobytes()


def _int64_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.int64)


@dataclass
class BinnedCounts:
    """Counts over a fixed range of integer bins [low, low + len): merge is addition."""

    low: int
    counts: Tensor

    @classmethod
    def empty(cls, low: int, high: int) -> BinnedCounts:
        return cls(low, torch.zeros(high - low + 1, dtype=torch.int64))

    def update(self, bins: Tensor) -> None:
        if bins.numel() == 0:
            return
        idx = (bins.reshape(-1).to(torch.int64) - self.low).clamp(0, len(self.counts) - 1)
        self.counts += torch.bincount(idx, minlength=len(self.counts))

    def add_counts(self, low: int, counts: Tensor) -> None:
        """Add counts already binned: counts[i] is the count of value low + i (clamped into range)."""
        start = low - self.low
        top = len(self.counts) - 1
        if start >= 0 and start + len(counts) <= len(self.counts):
            self.counts[start : start + len(counts)] += counts
        else:
            idx = (torch.arange(len(counts)) + start).clamp(0, top)
            self.counts.index_add_(0, idx, counts.to(torch.int64))

    def merge(self, other: BinnedCounts) -> None:
        self.counts += other.counts

    def __getstate__(self) -> dict:
        return {"low": self.low, "counts": sparse_counts(self.counts)}

    def __setstate__(self, state: dict) -> None:
        self.low, self.counts = state["low"], dense_counts(state["counts"])

    def result(self) -> dict[str, int]:
        """Non-empty bins, keyed by bin value, in increasing order."""
        nonzero = torch.nonzero(self.counts).reshape(-1).tolist()
        return {str(i + self.low): int(self.counts[i]) for i in nonzero}


GRID_STEP_BINS = ("0", "1", "2", "3", "4-7", "8-15", "16+")


def fold_grid_steps(counts: Tensor) -> dict[str, int]:
    """Counts of k = 0..15 and 16+ (17 exact bins) folded into the reported 0, 1, 2, 3, 4–7, 8–15, 16+."""
    c = counts.tolist()
    folded = [c[0], c[1], c[2], c[3], sum(c[4:8]), sum(c[8:16]), c[16]]
    return dict(zip(GRID_STEP_BINS, folded, strict=True))


class UlpHistogram:
    """Distances in storage ULPs: one bin per integer up to 255, bins under 0.8 % wide above.

    A distance's bin is its float32 bit pattern without the low 16 bits (exponent and 7 mantissa
    bits): one conversion and one shift, no logarithm, no branch. Integers below 256 need at most
    8 significant bits, so each has a bin of its own. The lower median (the ceil(n/2)-th
    smallest) is exact up to 255 and within 1 % relative above; max and mean are exact.
    """

    _SHIFT = 16
    _BINS = (0x7F800000 >> 16) + 1  # every finite float32

    def __init__(self) -> None:
        self.counts = torch.zeros(self._BINS, dtype=torch.int64)
        self.n = 0
        self.total = 0
        self.max = 0
        self.sign_changes = 0
        self.sign_change_total = 0

    @property
    def zeros(self) -> int:
        return int(self.counts[0])

    def _lower_edge(self, index: int) -> int:
        bits = torch.tensor(index << self._SHIFT, dtype=torch.int32)
        return int(bits.view(torch.float32).item())

    def update(self, d: Tensor, sign_changed: Tensor | None = None) -> None:
        """d: non-negative integer distances, any integer dtype; `sign_changed`: the elements that
        crossed zero (their distances are the sum of two magnitudes, kept apart in the mean)."""
        if d.numel() == 0:
            return
        d = d.reshape(-1)
        bins = d.to(torch.float32).view(torch.int32) >> self._SHIFT
        self.counts += torch.bincount(bins, minlength=self._BINS)
        self.n += d.numel()
        self.total += _exact_sum(d)
        self.max = max(self.max, int(d.max()))
        if sign_changed is not None:
            crossings = d[sign_changed.reshape(-1)]
            self.sign_changes += crossings.numel()
            self.sign_change_total += _exact_sum(crossings) if crossings.numel() else 0

    def __getstate__(self) -> dict:
        return {**vars(self), "counts": sparse_counts(self.counts)}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state, counts=dense_counts(state["counts"]))

    def merge(self, other: UlpHistogram) -> None:
        self.counts += other.counts
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)
        self.sign_changes += other.sign_changes
        self.sign_change_total += other.sign_change_total

    def median(self) -> int:
        if self.n == 0:
            return 0
        rank = (self.n + 1) // 2  # the lower median: ceil(n/2)-th smallest
        index = int(torch.searchsorted(torch.cumsum(self.counts, 0), torch.tensor(rank)))
        return min(max(self._lower_edge(index), 0), self.max)

    def result(self) -> dict[str, float | int | None]:
        same_sign = self.n - self.sign_changes
        return {
            "mean": self.total / self.n if self.n else 0.0,
            "median": self.median(),
            "max": self.max,
            "zero_frac": self.zeros / self.n if self.n else 0.0,
            "sign_changes": self.sign_changes,
            "mean_same_sign": (self.total - self.sign_change_total) / same_sign
            if same_sign
            else None,
        }


def _exact_sum(d: Tensor) -> int:
    """The sum of non-negative integer distances, exact unless it would pass 2^63 (float64
    storage far across zero), where it is summed in float64."""
    if int(d.max()) * d.numel() < 2**63:  # the int64 sum cannot wrap
        return int(d.sum(dtype=torch.int64))
    return round(float(d.sum(dtype=torch.float64)))
