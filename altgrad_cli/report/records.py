"""The report's records: frozen dataclasses, the one vocabulary of every metric.

The JSON form, the shipped JSON Schema (report/schema.py), the table/CSV/markdown columns and the
`--fail-if` keys all come from these fields, so a metric is added here once and everything else
follows (or a test fails). Nothing here imports torch: `altgrad check`, `schema` and the renderers
work on saved reports without it.

Field order is JSON key order. A field marked `FLAT` spills its record's keys into the parent (the
per-layer JSON is flat: name, format, …, then the metrics), and `OMIT_NONE` leaves a key out
instead of writing null.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from altgrad_cli.report.serialize import from_json, lookup, to_json

SCHEMA = "altgrad.report/2"

FLAT = {"flatten": True}
OMIT_NONE = {"omit_none": True}
FRACTION = {"schema": {"minimum": 0, "maximum": 1}}
COUNT = {"schema": {"minimum": 0}}


def _meta(*parts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


# ----------------------------------------------------------------------------- metric groups


@dataclass(frozen=True)
class GridSteps:
    """k = |c(after) − c(before)|: how far codes moved."""

    mean: float
    max: int = field(metadata=COUNT)
    histogram: dict[str, int] = field(
        metadata={"schema": {"propertyNames": {"enum": ["0", "1", "2", "3", "4-7", "8-15", "16+"]}}}
    )


@dataclass(frozen=True)
class UlpStats:
    """Storage ULPs stepped over by the update (exact ordinal distance in the checkpoint's dtype)."""

    mean: float
    median: int = field(metadata=COUNT)
    max: int = field(metadata=COUNT)
    zero_frac: float = field(metadata=FRACTION)
    sign_changes: int = field(metadata=COUNT)  # crossings of zero: each spans two magnitudes
    mean_same_sign: float | None  # the mean without them; None when every element crossed


@dataclass(frozen=True)
class Stiffness:
    """S, the grid step at each weight; the histogram counts floor(log2 S), plus `zero`.
    S is undefined at before = 0, so its statistics are null when every weight is zero."""

    mean: float | None
    min: float | None
    max: float | None
    histogram: dict[str, int]


@dataclass(frozen=True)
class GridAlignment:
    """e = |before − Q(before)|: how far weights sit from the grid."""

    mean: float
    max: float
    std: float
    on_grid_frac: float = field(metadata=FRACTION)
    rel_mean: float | None  # mean(e / S) over before ≠ 0


@dataclass(frozen=True)
class GradStiffness:
    """|grad| against S, over before ≠ 0 (only with --grads)."""

    correlation: float = field(metadata={"schema": {"minimum": -1, "maximum": 1}})
    ratio_mean: float | None
    below_frac: float = field(metadata=FRACTION)


@dataclass(frozen=True)
class Outcome:
    flipped: int = field(metadata=COUNT)
    not_flipped: int = field(metadata=COUNT)


@dataclass(frozen=True)
class PredictedVsActual:
    """r = |Δ|/S ≥ ½ predicts a flip; how often the prediction held."""

    predicted_flip: Outcome
    predicted_stall: Outcome


@dataclass(frozen=True)
class UpdateStiffness:
    ratio_mean: float | None
    below_half_frac: float = field(metadata=FRACTION)
    predicted_vs_actual: PredictedVsActual


@dataclass(frozen=True)
class Stored:
    """The counterfactual of weights kept in the format with no higher-precision master copy:
    w' = Q(Q(before) + Δ) under BEFORE's scale, over updated elements; round-to-nearest (RNE)
    against stochastic rounding (SR)."""

    rne_moved: int = field(metadata=COUNT)
    rne_lost_frac: float = field(metadata=FRACTION)
    lost_mass_frac: float = field(metadata=FRACTION)
    sr_expected_moved: float = field(metadata=COUNT)
    sr_moved_std: float = field(metadata=COUNT)


@dataclass(frozen=True)
class Blocks:
    """The element scales s of BEFORE, for recipes with more than one scale (channel, block,
    nvfp4): their spread, the groups whose largest element clips, the dead zone, and (with
    --rescale) the groups whose scale changed between BEFORE and AFTER."""

    count: int = field(metadata=COUNT)
    min: float | None
    max: float | None
    log2_histogram: dict[str, int]  # counts per floor(log2 s)
    log2_std: float = field(metadata={"schema": {"minimum": 0}})  # n−1 std of log2 s
    clipped_frac: float = field(metadata=FRACTION)  # groups; a non-finite amax never counts
    deadzone_frac: float = field(metadata=FRACTION)  # non-zero elements rounding to 0
    scale_changed_frac: float = field(metadata=FRACTION)  # 0 without --rescale


@dataclass(frozen=True)
class Metrics:
    """SPEC §Metrics for one (tensor, format), or summed over tensors for the summary."""

    numel: int = field(metadata=COUNT)
    nonfinite: int = field(metadata=COUNT)
    updates: int = field(metadata=COUNT)
    # "mixed" only in a summary: --grads was given but some tensors had no gradient
    update_source: Literal["grads", "delta", "mixed"]
    flips: int = field(metadata=COUNT)
    flips_on_updates: int = field(metadata=COUNT)
    flips_without_update: int = field(metadata=COUNT)
    flip_rate: float = field(metadata=FRACTION)
    stall_ratio: float = field(metadata=FRACTION)
    grid_steps: GridSteps
    ulp: UlpStats
    stiffness: Stiffness
    grid_alignment: GridAlignment
    grad_stiffness: GradStiffness | None
    update_stiffness: UpdateStiffness
    stored: Stored
    overflow_frac: float = field(metadata=FRACTION)
    underflow_frac: float = field(metadata=FRACTION)
    blocks: Blocks | None  # None for one scale per tensor (tensor, pow2, none)


# ----------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class SingleScale:
    """One scale for the whole tensor (tensor, pow2, none)."""

    mode: str
    value: float


@dataclass(frozen=True)
class GroupScales:
    """Many scales (channel, block, nvfp4): the mode; their statistics are the record's
    `blocks`. NVFP4 also names its float32 tensor scale t."""

    mode: str
    tensor_scale: float | None = field(default=None, metadata=OMIT_NONE)


ScaleRecord = SingleScale | GroupScales

# ----------------------------------------------------------------------------- the report

Dtype = Literal["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"]


@dataclass(frozen=True)
class LayerRecord:
    """The metrics of one (tensor, format)."""

    name: str
    format: str
    dtype: Dtype
    shape: tuple[int, ...] = field(metadata={"schema": {"items": {"minimum": 0}}})
    scale: ScaleRecord
    metrics: Metrics = field(metadata=FLAT)

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    def get(self, key: str) -> Any:
        """A dotted key (`stall_ratio`, `ulp.median`) of the record; KeyError if absent."""
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class WorstRow:
    name: str
    stall_ratio: float = field(metadata=FRACTION)
    updates: int = field(metadata=COUNT)
    flips: int = field(metadata=COUNT)


@dataclass(frozen=True)
class SummaryRecord:
    """One format over every tensor: summed counts, ratios recomputed from the sums."""

    format: str
    tensors: int = field(metadata=COUNT)
    no_update_tensors: int = field(metadata=COUNT)  # no stall ratio: left out of `worst`
    metrics: Metrics = field(metadata=FLAT)
    worst: tuple[WorstRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)

    def get(self, key: str) -> Any:
        return lookup(self.to_dict(), key)


@dataclass(frozen=True)
class Inputs:
    before: str
    after: str
    grads: str | None


@dataclass(frozen=True)
class ReportOptions:
    """The options that shaped the numbers, echoed so a saved report says how it was made."""

    formats: tuple[str, ...]
    scaling: str | None  # --scaling for bare formats; None: each format's default
    rescale: bool
    grad_eps: float
    strip_prefix: tuple[str, ...]
    include: str | None
    exclude: str | None
    chunk_size: int = field(metadata={"schema": {"minimum": 1}})


@dataclass(frozen=True)
class FormatInfo:
    """A format's definition, as `altgrad formats` prints it."""

    name: str
    aliases: tuple[str, ...]
    exponent_bits: int = field(metadata=COUNT)
    mantissa_bits: int = field(metadata=COUNT)
    bias: int | None
    specials: Literal["ieee", "fn", "fnuz", "finite"]
    max: float
    min_normal: float | None
    min_subnormal: float | None


@dataclass(frozen=True)
class Skipped:
    """A tensor left out of the analysis, and why."""

    name: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


def skipped_summary(skipped: Sequence[Skipped], analysed: int) -> str:
    """One line for stderr: how many tensors were left out, and why, commonest reason first."""
    kinds = Counter(s.reason.split(":")[0].split(" (")[0] for s in skipped)
    reasons = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    total = len(skipped) + analysed
    return f"{len(skipped)} of {total} tensors skipped ({reasons}); the report lists each"


@dataclass(frozen=True)
class CheckResult:
    """One rule on one tensor (or the summary) in one format."""

    rule: str
    target: str  # tensor name, or "summary"
    format: str
    value: float | None
    threshold: float | None
    status: Literal["pass", "fail", "skip"]
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class ChecksSection:
    rules: tuple[str, ...]
    passed: bool
    failures: int = field(metadata=COUNT)
    results: tuple[CheckResult, ...]


@dataclass(frozen=True)
class Report:
    """Everything one `analyze` run found; renderers and checks read only this (or its JSON)."""

    inputs: Inputs
    options: ReportOptions
    formats: tuple[FormatInfo, ...]
    layers: tuple[LayerRecord, ...]
    summary: tuple[SummaryRecord, ...]
    skipped: tuple[Skipped, ...]
    checks: ChecksSection | None = field(default=None, metadata=OMIT_NONE)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **to_json(self)}

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """A report from its JSON form (a saved `-o json`); ValueError when it is not one."""
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"not an altgrad report (expected schema {SCHEMA!r})")
        return from_json(cls, {k: v for k, v in data.items() if k != "schema"})
