"""The stored-weights counterfactual for people: the "kept in FORMAT" columns and the one-line
verdict per format, shared by the table and markdown renderers (read from the records only)."""

from __future__ import annotations

from altgrad_cli.report.records import LayerRecord, SummaryRecord

STORED_COLUMNS = [
    ("updates", "updates"),
    ("moved (RNE)", "stored.rne_moved"),
    ("lost mass (RNE)", "stored.lost_mass_frac"),
    ("lost (RNE)", "stored.rne_lost_frac"),
]
"""The plain columns of the "kept in FORMAT" table, most important first; the table renderer puts
`sr_cell` (stochastic rounding's expected moves ± std) after the lost mass."""


def sr_cell(record: LayerRecord | SummaryRecord) -> str:
    """Expected weights moved under stochastic rounding ± its standard deviation: `118.0 ± 9.9`."""
    stored = record.metrics.stored
    return f"{stored.sr_expected_moved:,.1f} ± {stored.sr_moved_std:,.1f}"


def percent(fraction: float) -> str:
    """A share as a short percentage: 63 %, 0.12 %, < 0.01 %."""
    if fraction == 0:
        return "0 %"
    if fraction < 1e-4:
        return "< 0.01 %"
    if fraction >= 0.1:
        return f"{100 * fraction:.0f} %"
    return f"{100 * fraction:.2g} %"


def verdict(summary: SummaryRecord) -> str | None:
    """One line on what storing the weights in this format, without a master copy, would do to
    the step; None when nothing was updated."""
    stored, updates = summary.metrics.stored, summary.metrics.updates
    if not updates:
        return None
    lost, moved = stored.lost_mass_frac, stored.rne_moved
    expected, std = stored.sr_expected_moved, stored.sr_moved_std
    fmt = summary.format
    if lost == 0:
        return (
            f"{fmt} without a master copy would keep all of this step's update mass "
            f"(round-to-nearest moves {moved:,} of {updates:,} updated weights)"
        )
    return (
        f"{fmt} without a master copy would lose {percent(lost)} of this step's update mass "
        f"(round-to-nearest moves {moved:,} of {updates:,} updated weights); "
        f"stochastic rounding would keep it in expectation "
        f"(moving {expected:,.0f} ± {std:,.1f} of them)"
    )
