"""Loading a saved report (`check REPORT`, `--baseline`): strict JSON, then the records' shape.

A report whose `layers` is a number, whose records lack a name or whose metric is a string
would otherwise surface as a crash or, worse, a rule that silently skips; it is an input
error naming the file. The shape is checked by reading it back into the typed records
(`Report.from_dict`, strict), so the check and the records can never disagree.
"""

from __future__ import annotations

import os
from typing import Any

from altgrad_cli.errors import InputError
from altgrad_cli.io.files import load_json


def load_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved `analyze -o json` (or `trajectory -o json`) report, or InputError naming the file
    and the first problem."""
    from altgrad_cli.report.records import Report
    from altgrad_cli.report.serialize import from_json
    from altgrad_cli.report.trajectory import TRAJECTORY_SCHEMA, TrajectoryReport

    data = load_json(path, "JSON report")
    try:
        if isinstance(data, dict) and data.get("schema") == TRAJECTORY_SCHEMA:
            from_json(TrajectoryReport, {k: v for k, v in data.items() if k != "schema"})
        else:
            Report.from_dict(data)
    except (ValueError, TypeError) as error:
        raise InputError(path, f"not a valid altgrad report: {str(error)[:300]}") from None
    return data
