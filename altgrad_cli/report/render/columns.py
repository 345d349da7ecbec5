"""The flat columns shared by the csv, markdown and table renderers: one definition of what a row shows."""

from __future__ import annotations

from typing import Any

from altgrad_cli.report.records import LayerRecord, SummaryRecord

# (header, dotted key) of the per-layer stall/flip view
STALL_COLUMNS = [
    ("updates", "updates"),
    ("flips", "flips"),
    ("flips w/o update", "flips_without_update"),
    ("flip rate", "flip_rate"),
    ("stall ratio", "stall_ratio"),
]
ULP_COLUMNS = [
    ("ulp mean", "ulp.mean"),
    ("ulp median", "ulp.median"),
    ("ulp max", "ulp.max"),
    ("ulp zero", "ulp.zero_frac"),
    ("steps mean", "grid_steps.mean"),
    ("steps max", "grid_steps.max"),
]
GRID_COLUMNS = [
    ("err mean", "grid_alignment.mean"),
    ("err max", "grid_alignment.max"),
    ("on grid", "grid_alignment.on_grid_frac"),
    ("err/S", "grid_alignment.rel_mean"),
    ("overflow", "overflow_frac"),
    ("underflow", "underflow_frac"),
]
GRAD_COLUMNS = [
    ("corr(S,|g|)", "grad_stiffness.correlation"),
    ("|g|/S", "grad_stiffness.ratio_mean"),
    ("|g|<S", "grad_stiffness.below_frac"),
    ("|Δ|/S", "update_stiffness.ratio_mean"),
    ("|Δ|<S/2", "update_stiffness.below_half_frac"),
]
CSV_KEYS = [key for _, key in STALL_COLUMNS + ULP_COLUMNS + GRID_COLUMNS + GRAD_COLUMNS] + [
    "numel",
    "nonfinite",
    "flips_on_updates",
    "stiffness.mean",
    "stiffness.min",
    "stiffness.max",
    "grid_alignment.std",
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
    """Short, stable text for a number in a table cell."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1 else f"{v:.4g}"
