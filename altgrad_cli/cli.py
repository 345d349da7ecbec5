"""The Typer app: declares options, calls the library, maps errors to one line and an exit code."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console

from altgrad_cli.errors import AltgradError
from altgrad_cli.formats import registry

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Did the optimizer step move your low-precision weights? Flips, stalls, ULPs and grid fit.",
    pretty_exceptions_enable=False,
)


class FormatsOutput(str, Enum):
    table = "table"
    json = "json"


def _fail(error: AltgradError) -> None:
    """One line on stderr and the error's exit code; the traceback only with --debug/ALTGRAD_DEBUG."""
    if os.environ.get("ALTGRAD_DEBUG") == "1":
        raise error
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {error}", soft_wrap=True)
    raise typer.Exit(error.exit_code)


def _version(value: bool) -> None:
    if value:
        from altgrad_cli import __version__

        typer.echo(f"altgrad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """altgrad: flip, stall, ULP and grid diagnostics for low-precision training checkpoints."""


@app.command("formats")
def formats_command(
    output: Annotated[
        FormatsOutput, typer.Option("--output", "-o", help="table or json")
    ] = FormatsOutput.table,
) -> None:
    """List every registered format: bits, bias, specials, range."""
    rows = [f.to_dict() for f in registry()]
    if output is FormatsOutput.json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    from altgrad_cli.render.formats_table import render_formats

    render_formats(registry(), Console())


def main() -> None:
    try:
        app()
    except AltgradError as error:  # raised outside a command body (option callbacks)
        _fail(error)
