"""The flat columns shared by the csv, markdown and table renderers: one definition of what a row shows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from altgrad_cli.report.records import LayerRecord, SummaryRecord

# (header, dotted key) of each view, most important first: a narrow terminal drops columns from
# the right of each list (see table.py). ULPs are a property of the storage dtype, not of the
# format, so their view has one row per tensor.
STALL_COLUMNS = [
    ("stall ratio", "stall_ratio"),
    ("updates", "updates"),
    ("flips", "flips"),
    ("flip rate", "flip_rate"),
    ("steps mean", "grid_steps.mean"),
    ("flips w/o update", "flips_without_update"),
    ("steps max", "grid_steps.max"),
]
ULP_COLUMNS = [
    ("mean*", "ulp.mean_same_sign"),
    ("median", "ulp.median"),
    ("sign changes", "ulp.sign_changes"),
    ("max", "ulp.max"),
    ("zero", "ulp.zero_frac"),
]
GRID_COLUMNS = [
    ("on grid", "grid_alignment.on_grid_frac"),
    ("err/S", "grid_alignment.rel_mean"),
    ("err mean", "grid_alignment.mean"),
    ("overflow", "overflow_frac"),
    ("underflow", "underflow_frac"),
    ("err max", "grid_alignment.max"),
]
GRAD_COLUMNS = [
    ("|Δ|<S/2", "update_stiffness.below_half_frac"),
    ("|Δ|/S", "update_stiffness.ratio_mean"),
    ("corr(S,|g|)", "grad_stiffness.correlation"),
    ("|g|<S", "grad_stiffness.below_frac"),
    ("|g|/S", "grad_stiffness.ratio_mean"),
]
CSV_KEYS = [
    "updates",
    "flips",
    "flips_without_update",
    "flip_rate",
    "stall_ratio",
    "ulp.mean",
    "ulp.median",
    "ulp.max",
    "ulp.zero_frac",
    "ulp.sign_changes",
    "ulp.mean_same_sign",
    "grid_steps.mean",
    "grid_steps.max",
    "grid_alignment.mean",
    "grid_alignment.max",
    "grid_alignment.on_grid_frac",
    "grid_alignment.rel_mean",
    "overflow_frac",
    "underflow_frac",
    "grad_stiffness.correlation",
    "grad_stiffness.ratio_mean",
    "grad_stiffness.below_frac",
    "update_stiffness.ratio_mean",
    "update_stiffness.below_half_frac",
    "numel",
    "nonfinite",
    "flips_on_updates",
    "stiffness.mean",
    "stiffness.min",
    "stiffness.max",
    "grid_alignment.std",
    "stored.rne_moved",
    "stored.rne_lost_frac",
    "stored.lost_mass_frac",
    "stored.sr_expected_moved",
    "stored.sr_moved_std",
    "blocks.count",
    "blocks.clipped_frac",
    "blocks.deadzone_frac",
    "blocks.scale_changed_frac",
]


def value(record: LayerRecord | SummaryRecord, key: str) -> Any:
    """The value at a dotted key; None inside an absent optional group (grad_stiffness without
    --grads). An unknown key is a KeyError, not a blank cell: a test checks every column's key
    against the records' fields."""
    node: Any = record.to_dict()
    for part in key.split("."):
        if node is None:
            return None
        node = node[part]
    return node


def fmt_number(v: Any) -> str:
    """Short, stable text for one number on its own (a sentence, a step summary)."""
    return fmt_column([v])[0]


def fmt_column(values: Sequence[Any]) -> list[str]:
    """One style for every number of a column, so magnitudes compare at a glance: integers with
    thousands separators; floats fixed-point to four significant digits of the largest (whole
    numbers with separators from 1000 up), or all in scientific notation when any non-zero one
    is below 1e-3, where fixed-point would print a misleading 0. None is "–"."""
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    floats = [abs(v) for v in numbers if isinstance(v, float) and v != 0 and math.isfinite(v)]
    scientific = any(v < 1e-3 for v in floats)
    decimals = 0
    if floats and not scientific:
        decimals = min(4, max(0, 3 - math.floor(math.log10(max(floats)))))
    out = []
    for v in values:
        if v is None:
            out.append("–")
        elif isinstance(v, bool):
            out.append(str(v).lower())
        elif isinstance(v, int):
            out.append(f"{v:,}")
        elif v == 0:
            out.append("0")
        elif not math.isfinite(v):
            out.append(str(v))
        elif scientific:
            out.append(f"{v:.3e}")
        else:
            out.append(f"{v:,.{decimals}f}")
    return out
