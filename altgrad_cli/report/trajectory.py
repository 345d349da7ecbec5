"""The trajectory report: frozen dataclasses for `altgrad trajectory`, their JSON and JSON Schema.

One `TrajectoryMetrics` per (tensor, recipe) and per recipe over all tensors, both built from the
same integer sums by `TrajectoryMetrics.from_counts`, so a summary's ratios are recomputed from
summed counts, never averaged. JSON comes from the fields (serialize.to_json) and the schema is
generated from them (schema.py), as for the `analyze` report. No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from altgrad_cli.report.records import (
    COUNT,
    FLAT,
    FRACTION,
    OMIT_NONE,
    ChecksSection,
    Dtype,
    FormatInfo,
    LayerRecord,
    Report,
    Skipped,
    SummaryRecord,
)
from altgrad_cli.report.schema import document_schema
from altgrad_cli.report.serialize import lookup, to_json

TRAJECTORY_SCHEMA = "altgrad.trajectory/1"


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class TrajectoryMetrics:
    """SPEC §Trajectories for one (tensor, recipe), or for one recipe over every tensor."""

    # n = checkpoints − 1; numel: every element; nonfinite: not finite in some checkpoint (left
    # out of every count below)
    steps: int = field(metadata={"schema": {"minimum": 1}})
    numel: int = field(metadata=COUNT)
    nonfinite: int = field(metadata=COUNT)
    # #(c_t ≠ c_{t−1}) for t = 1 … n, and their sum
    flips: int = field(metadata=COUNT)
    flips_per_step: tuple[int, ...] = field(metadata={"schema": {"items": {"minimum": 0}}})
    # #(code changed at least once); that over numel; 1 − that
    ever_flipped: int = field(metadata=COUNT)
    ever_flipped_frac: float = field(metadata=FRACTION)
    frozen_frac: float = field(metadata=FRACTION)
    # #(c_n ≠ c_0); that over numel
    net_flipped: int = field(metadata=COUNT)
    net_flipped_frac: float = field(metadata=FRACTION)
    # #(t, i) with c_{t+1} = c_{t−1} ≠ c_t; that over the flips of steps 2 … n (0 when none)
    flip_backs: int = field(metadata=COUNT)
    oscillation_rate: float = field(metadata=FRACTION)
    # Σ_t Σ_i |c_t − c_{t−1}| (the path length); Σ_i |c_n − c_0|; net over path (0: no motion)
    grid_steps: int = field(metadata=COUNT)
    net_grid_steps: int = field(metadata=COUNT)
    path_efficiency: float = field(metadata=FRACTION)
    # per counted element, the longest run of steps without a flip; its mean
    frozen_run_mean: float = field(metadata={"schema": {"minimum": 0}})

    @classmethod
    def from_counts(
        cls,
        *,
        steps: int,
        numel: int,
        nonfinite: int,
        flips_per_step: tuple[int, ...] | list[int],
        ever_flipped: int,
        net_flipped: int,
        flip_backs: int,
        grid_steps: int,
        net_grid_steps: int,
        frozen_run_total: int,
    ) -> TrajectoryMetrics:
        ever = _ratio(ever_flipped, numel)
        return cls(
            steps=steps,
            numel=numel,
            nonfinite=nonfinite,
            flips=sum(flips_per_step),
            flips_per_step=tuple(flips_per_step),
            ever_flipped=ever_flipped,
            ever_flipped_frac=ever,
            frozen_frac=1.0 - ever,
            net_flipped=net_flipped,
            net_flipped_frac=_ratio(net_flipped, numel),
            flip_backs=flip_backs,
            oscillation_rate=_ratio(flip_backs, sum(flips_per_step[1:])),
            grid_steps=grid_steps,
            net_grid_steps=net_grid_steps,
            path_efficiency=_ratio(net_grid_steps, grid_steps),
            frozen_run_mean=_ratio(frozen_run_total, numel - nonfinite),
        )

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


METRIC_KEYS = tuple(f.name for f in fields(TrajectoryMetrics))


@dataclass(frozen=True)
class TrajectoryScale:
    """The scaling mode, and each checkpoint's scale when there is one per tensor (else null)."""

    mode: str
    values: tuple[float, ...] | None


@dataclass(frozen=True)
class TrajectoryLayer:
    """The trajectory of one tensor under one recipe."""

    name: str
    format: str
    dtype: Dtype
    shape: tuple[int, ...] = field(metadata={"schema": {"items": {"minimum": 0}}})
    scale: TrajectoryScale
    metrics: TrajectoryMetrics = field(metadata=FLAT)

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    def get(self, key: str) -> Any:
        """A dotted key (`oscillation_rate`) of the record; KeyError if absent."""
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class OscillatingTensor:
    """One entry of a summary's worst list."""

    name: str
    oscillation_rate: float = field(metadata=FRACTION)
    flip_backs: int = field(metadata=COUNT)
    ever_flipped_frac: float = field(metadata=FRACTION)
    path_efficiency: float = field(metadata=FRACTION)


@dataclass(frozen=True)
class TrajectorySummary:
    """One recipe over every tensor: counts summed, ratios recomputed, most oscillating tensors."""

    format: str
    tensors: int = field(metadata=COUNT)
    metrics: TrajectoryMetrics = field(metadata=FLAT)
    worst: tuple[OscillatingTensor, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    def get(self, key: str) -> Any:
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class StepReport:
    """`--per-step`: the `analyze` records of checkpoints t−1 → t."""

    step: int = field(metadata={"schema": {"minimum": 1}})
    before: str
    after: str
    layers: tuple[LayerRecord, ...]
    summary: tuple[SummaryRecord, ...]
    skipped: tuple[Skipped, ...]

    @classmethod
    def from_report(cls, step: int, report: Report) -> StepReport:
        return cls(
            step,
            report.inputs.before,
            report.inputs.after,
            report.layers,
            report.summary,
            report.skipped,
        )


@dataclass(frozen=True)
class TrajectoryInputs:
    checkpoints: tuple[str, ...]


@dataclass(frozen=True)
class TrajectoryOptions:
    """The options that shaped the numbers, echoed so a saved report says how it was made."""

    formats: tuple[str, ...]
    scaling: str | None  # --scaling for bare formats; None: each format's default
    fixed_scale: bool
    strip_prefix: tuple[str, ...]
    include: str | None
    exclude: str | None
    chunk_size: int = field(metadata={"schema": {"minimum": 1}})
    per_step: bool


@dataclass(frozen=True)
class TrajectoryReport:
    """What `altgrad trajectory` renders and `altgrad_cli.trajectory` returns."""

    inputs: TrajectoryInputs
    options: TrajectoryOptions
    formats: tuple[FormatInfo, ...]
    layers: tuple[TrajectoryLayer, ...]
    summary: tuple[TrajectorySummary, ...]
    skipped: tuple[Skipped, ...]
    per_step: tuple[StepReport, ...] | None = field(default=None, metadata=OMIT_NONE)
    checks: ChecksSection | None = field(default=None, metadata=OMIT_NONE)

    @property
    def checkpoints(self) -> tuple[str, ...]:
        return self.inputs.checkpoints

    @property
    def steps(self) -> int:
        return len(self.inputs.checkpoints) - 1

    def to_dict(self) -> dict[str, Any]:
        return {"schema": TRAJECTORY_SCHEMA, **to_json(self)}


@cache
def trajectory_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of `altgrad trajectory -o json`, generated from the records."""
    return document_schema(TrajectoryReport, TRAJECTORY_SCHEMA, "altgrad trajectory report")
