"""The trajectory report: frozen dataclasses for `altgrad trajectory`, their JSON form, no torch.

One `TrajectoryMetrics` per (tensor, recipe) and per recipe over all tensors, both built from the
same integer sums by `TrajectoryMetrics.from_counts`, so a summary's ratios are recomputed from
summed counts, never averaged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from altgrad_cli.io.pairing import Skipped
from altgrad_cli.report.records import Report, lookup

TRAJECTORY_SCHEMA = "altgrad.trajectory/1"


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class TrajectoryMetrics:
    """SPEC §Trajectories for one (tensor, recipe), or for one recipe over every tensor."""

    steps: int  # n: checkpoints − 1
    numel: int  # every element of the tensor(s)
    nonfinite: int  # elements not finite in some checkpoint, left out of every count below
    flips: int  # Σ flips_per_step
    flips_per_step: tuple[int, ...]  # #(c_t ≠ c_{t−1}), t = 1 … n
    ever_flipped: int  # #(code changed at least once)
    ever_flipped_frac: float  # ever_flipped / numel
    frozen_frac: float  # 1 − ever_flipped_frac
    net_flipped: int  # #(c_n ≠ c_0)
    net_flipped_frac: float  # net_flipped / numel
    flip_backs: int  # #(t, i): c_{t+1} = c_{t−1} ≠ c_t
    oscillation_rate: float  # flip_backs / Σ flips of steps 2 … n (0 when none)
    grid_steps: int  # Σ_t Σ_i |c_t − c_{t−1}|: the path length
    net_grid_steps: int  # Σ_i |c_n − c_0|
    path_efficiency: float  # net_grid_steps / grid_steps (0 when nothing moved)
    frozen_run_mean: float  # mean over counted elements of the longest run of steps without a flip

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
        out = asdict(self)
        out["flips_per_step"] = list(self.flips_per_step)
        return out


METRIC_KEYS = tuple(f.name for f in fields(TrajectoryMetrics))


@dataclass(frozen=True)
class TrajectoryLayer:
    """The trajectory of one tensor under one recipe."""

    name: str
    format: str
    dtype: str
    shape: tuple[int, ...]
    scale: dict[str, Any]  # mode, and per-checkpoint values when there is one scale per tensor
    metrics: TrajectoryMetrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            **self.metrics.to_dict(),
        }

    def get(self, key: str) -> Any:
        """A dotted key (`oscillation_rate`) of the record; KeyError if absent."""
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class OscillatingTensor:
    """One entry of a summary's worst list."""

    name: str
    oscillation_rate: float
    flip_backs: int
    ever_flipped_frac: float
    path_efficiency: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrajectorySummary:
    """One recipe over every tensor: counts summed, ratios recomputed, most oscillating tensors."""

    format: str
    tensors: int
    metrics: TrajectoryMetrics
    worst: tuple[OscillatingTensor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "tensors": self.tensors,
            **self.metrics.to_dict(),
            "worst": [w.to_dict() for w in self.worst],
        }

    def get(self, key: str) -> Any:
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class StepReport:
    """`--per-step`: the `analyze` report of checkpoints t−1 → t."""

    step: int
    report: Report

    def to_dict(self) -> dict[str, Any]:
        data = self.report.to_dict()
        return {
            "step": self.step,
            "before": data["inputs"]["before"],
            "after": data["inputs"]["after"],
            "layers": data["layers"],
            "summary": data["summary"],
            "skipped": data["skipped"],
        }


@dataclass(frozen=True)
class TrajectoryReport:
    """What `altgrad trajectory` renders and `altgrad_cli.trajectory` returns."""

    checkpoints: tuple[str, ...]
    options: dict[str, Any]
    formats: tuple[dict[str, Any], ...]
    layers: tuple[TrajectoryLayer, ...]
    summary: tuple[TrajectorySummary, ...]
    skipped: tuple[Skipped, ...]
    per_step: tuple[StepReport, ...] | None = field(default=None)
    checks: dict[str, Any] | None = field(default=None)

    @property
    def steps(self) -> int:
        return len(self.checkpoints) - 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": TRAJECTORY_SCHEMA,
            "inputs": {"checkpoints": list(self.checkpoints)},
            "options": self.options,
            "formats": list(self.formats),
            "layers": [layer.to_dict() for layer in self.layers],
            "summary": [s.to_dict() for s in self.summary],
            "skipped": [s.to_dict() for s in self.skipped],
        }
        if self.per_step is not None:
            out["per_step"] = [step.to_dict() for step in self.per_step]
        if self.checks is not None:
            out["checks"] = self.checks
        return out
