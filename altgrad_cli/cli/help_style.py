"""`--help` that reads like a man page: `BEFORE AFTER`, `PATH`, flags without a type.

Typer's own help shows arguments as `{before}`, every option's Python type (`<list[str]>`,
`<bool>` beside `--quiet`) and reads help texts as rich markup, so `FORMAT[@SCALING]` or
`altgrad-cli[dask]` lose their brackets. The commands (`cls=PlainHelpCommand`) and the root group
(`ErrorBoundary`) pass their parameters through `plain_parameters` once, at construction,
instead of a metavar on each option.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperOption

_DONE = "_altgrad_plain_help"
_TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT"}


def value_name(param: TyperOption | TyperArgument) -> str:
    """What a value of `param` is: PATH, INTEGER, FLOAT, TEXT or CHOICE (whose values the help
    text lists), the element's name for a repeatable option."""
    described = getattr(param, "type_descriptor", None)  # Typer >= 0.25; older ones are click's
    if described is None:
        return str(getattr(getattr(param, "type", None), "name", "value")).upper()
    if described.is_choice:
        return "CHOICE"
    annotation = described.annotation
    if described.is_list:
        annotation = get_args(annotation)[0]
    if described.is_path or annotation is Path:
        return "PATH"
    return _TYPE_NAMES.get(annotation, "VALUE")


class _PlainArgument(TyperArgument):
    """An argument whose help row shows `PATH`, not `<path>`."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return value_name(self)


def plain_parameters(params: Iterable[Any]) -> None:
    """Name each parameter's value plainly and make its help text literal (not rich markup)."""
    for param in params:
        if not isinstance(param, TyperOption | TyperArgument) or getattr(param, _DONE, False):
            continue
        setattr(param, _DONE, True)  # once: escaping twice would show the backslashes
        if param.help:
            param.help = escape(param.help)
        if isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
            if not param.metavar:
                many = "..." if param.nargs != 1 else ""
                param.metavar = (param.name or "").upper() + many
        elif param.is_flag:
            param.metavar = ""  # a flag takes no value; "" (not None) stops Typer's `<bool>`
        elif not param.metavar:
            param.metavar = value_name(param)


class PlainHelpCommand(TyperCommand):
    """A Typer command whose help names values plainly and prints help texts literally."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_parameters(self.params)
        if self.help:
            self.help = escape(self.help)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        plain_parameters(params)  # --help and completion options are added after __init__
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`[OPTIONS] BEFORE AFTER`, `CHECKPOINTS...`: arguments by name, no braces."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar
                pieces.append(name if param.required else f"[{name}]")
        return pieces
