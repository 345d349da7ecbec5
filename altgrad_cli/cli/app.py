"""The Typer app: the root options and the list of commands, and `main()`, the console script.

Each command lives in its own module and only declares options and calls the library; errors
become exit codes in one place, `boundary.ErrorBoundary`. Nothing imported here loads torch:
`analyze` imports the pipeline when it runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from altgrad_cli.cli.analyze import analyze_command
from altgrad_cli.cli.boundary import DebugOption, ErrorBoundary
from altgrad_cli.cli.check import check_command
from altgrad_cli.cli.formats import formats_command, schema_command
from altgrad_cli.cli.help_style import PlainHelpCommand
from altgrad_cli.cli.render import render_command
from altgrad_cli.cli.trajectory_cmd import trajectory_command
from altgrad_cli.engine.allocator import keep_freed_buffers

app = typer.Typer(
    cls=ErrorBoundary,
    add_completion=True,
    no_args_is_help=True,
    help="Did the optimizer step move your low-precision weights? Flips, stalls, ULPs and grid fit.",
    pretty_exceptions_enable=False,
)


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
    debug: DebugOption = False,
) -> None:
    """altgrad: flip, stall, ULP and grid diagnostics for low-precision training checkpoints."""


app.command("formats", cls=PlainHelpCommand)(formats_command)
app.command("analyze", cls=PlainHelpCommand)(analyze_command)
app.command("check", cls=PlainHelpCommand)(check_command)
app.command("render", cls=PlainHelpCommand)(render_command)
app.command("schema", cls=PlainHelpCommand)(schema_command)
app.command("trajectory", cls=PlainHelpCommand)(trajectory_command)


def main() -> None:
    """The `altgrad` console script (and `python -m altgrad_cli`)."""
    keep_freed_buffers()
    from altgrad_cli.io import sigbus

    sigbus.install()  # a checkpoint truncated mid-read: exit 3 naming it, not death by SIGBUS
    app()
