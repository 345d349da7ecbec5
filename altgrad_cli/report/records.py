"""The report: frozen dataclasses that every renderer and check reads, and their JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from altgrad_cli.io.pairing import Skipped

SCHEMA = "altgrad.report/1"


@dataclass(frozen=True)
class LayerRecord:
    """The metrics of one (tensor, format)."""

    name: str
    format: str
    dtype: str
    shape: tuple[int, ...]
    scale: dict[str, Any]
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": self.scale,
            **self.metrics,
        }

    def get(self, key: str) -> Any:
        """A dotted key (`stall_ratio`, `ulp.median`) of the record; KeyError if absent."""
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class SummaryRecord:
    """One format over every tensor: summed counts, ratios recomputed from the sums."""

    format: str
    tensors: int
    metrics: dict[str, Any]
    worst: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "tensors": self.tensors,
            **self.metrics,
            "worst": list(self.worst),
        }

    def get(self, key: str) -> Any:
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class Report:
    inputs: dict[str, Any]
    options: dict[str, Any]
    formats: tuple[dict[str, Any], ...]
    layers: tuple[LayerRecord, ...]
    summary: tuple[SummaryRecord, ...]
    skipped: tuple[Skipped, ...]
    checks: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "inputs": self.inputs,
            "options": self.options,
            "formats": list(self.formats),
            "layers": [layer.to_dict() for layer in self.layers],
            "summary": [s.to_dict() for s in self.summary],
            "skipped": [s.to_dict() for s in self.skipped],
        }
        if self.checks is not None:
            out["checks"] = self.checks
        return out


def lookup(record: dict[str, Any], key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value
