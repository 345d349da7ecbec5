"""The CLI's one error boundary: an AltgradError becomes one line on stderr and its exit code.

Every way into the app passes through `ErrorBoundary.main` (the console script, `python -m
altgrad_cli`, and tests driving the app with a CliRunner), so this is the only place where an
exception turns into an exit code: 2 for a usage error, 3 for an input error, and 3 with an
"internal error" line for anything unexpected (a bug). The debug switch (`--debug` anywhere on
the command line, or `ALTGRAD_DEBUG=1`) adds the traceback and keeps the exit code.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from altgrad_cli.cli.help_style import plain_parameters
from altgrad_cli.errors import AltgradError, UsageError

DEBUG_ENV = "ALTGRAD_DEBUG"
_TRUE = {"1", "true", "yes", "on"}


def debug_from_env() -> bool:
    """True when ALTGRAD_DEBUG asks for tracebacks (1, true, yes or on)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE


class ErrorBoundary(TyperGroup):
    """The app's click group: runs the command line and maps whatever escapes it to an exit code."""

    debug = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_parameters(self.params)

    def get_params(self, ctx: typer.Context) -> list[Any]:
        params = super().get_params(ctx)
        plain_parameters(params)  # --help and completion options are added after __init__
        return params

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:  # the caller asked for exceptions, not exit codes
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        self.debug = debug_from_env()  # `--debug` may switch it on while the line is parsed
        try:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        except AltgradError as error:
            label = "usage error: " if isinstance(error, UsageError) else "error: "
            self._exit(error, label, str(error), error.exit_code)
        except Exception as error:  # a bug, not bad input: still one line and exit 3
            hint = "" if self.debug else "; --debug shows the traceback"
            what = f"{type(error).__name__}: {error} (please report it{hint})"
            self._exit(error, "internal error: ", what, 3)

    def _exit(self, error: BaseException, label: str, message: str, code: int) -> NoReturn:
        """The label in red, the message literally: never markup, control characters escaped,
        so a name holding `[/]` or a newline still makes one line."""
        from rich.text import Text

        from altgrad_cli.report.render.safe_text import printable

        if self.debug:
            traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        line = Text.assemble((label, "red"), printable(message))
        Console(stderr=True, highlight=False).print(line, soft_wrap=True)
        sys.exit(code)


def _enable_debug(ctx: typer.Context, value: bool) -> None:
    if value and isinstance(boundary := ctx.find_root().command, ErrorBoundary):
        boundary.debug = True


DebugOption = Annotated[
    bool,
    typer.Option(
        "--debug",
        callback=_enable_debug,
        is_eager=True,
        help=f"Show the traceback of an error (also {DEBUG_ENV}=1).",
    ),
]
"""`--debug`, declared on the root and on every command so that it works before or after the
subcommand; the value lives on the boundary, so commands ignore their parameter."""
