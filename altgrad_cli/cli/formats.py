"""`altgrad formats` and `altgrad schema`: what altgrad knows, printed without loading torch."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated

import typer

from altgrad_cli.cli.boundary import DebugOption
from altgrad_cli.numerics.formats import registry


class FormatsOutput(str, Enum):
    table = "table"
    json = "json"


def formats_command(
    output: Annotated[
        FormatsOutput, typer.Option("--output", "-o", case_sensitive=False, help="table or json")
    ] = FormatsOutput.table,
    debug: DebugOption = False,
) -> None:
    """List every registered format (bits, bias, specials, range) and the named recipes."""
    from altgrad_cli.numerics.recipes import recipe_rows

    if output is FormatsOutput.json:
        rows = {"formats": [f.to_dict() for f in registry()], "recipes": recipe_rows()}
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from rich.console import Console

    from altgrad_cli.report.render.formats_table import render_formats, render_recipes

    console = Console()
    render_formats(registry(), console)
    render_recipes(recipe_rows(), console)


def schema_command(
    trajectory: Annotated[
        bool, typer.Option("--trajectory", help="The schema of `altgrad trajectory -o json`.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Print the JSON Schema of the report (`--output json`)."""
    if trajectory:
        from altgrad_cli.report.trajectory import trajectory_schema

        sys.stdout.write(json.dumps(trajectory_schema(), indent=2) + "\n")
        return
    from altgrad_cli.report.schema import report_schema

    sys.stdout.write(json.dumps(report_schema(), indent=2) + "\n")
