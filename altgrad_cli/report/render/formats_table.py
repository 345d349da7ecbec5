"""The `altgrad formats` table."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from altgrad_cli.numerics.formats import Format


def _num(value: float | None) -> str:
    """Exact powers of two as 2^k (how people read format ranges), others to 5 digits."""
    if value is None:
        return "–"
    mantissa, exponent = math.frexp(value)
    if mantissa == 0.5 and not 1 <= value <= 1024:
        return f"2^{exponent - 1}"
    return f"{value:.5g}"


def render_formats(formats: list[Format], console: Console) -> None:
    table = Table(
        title="altgrad formats", title_justify="left", caption="aliases in `--output json`"
    )
    for column in [
        "name",
        "aliases",
        "E",
        "M",
        "bias",
        "specials",
        "max",
        "min normal",
        "min subnormal",
    ]:
        table.add_column(column, justify="right" if column in ("E", "M", "bias") else "left")
    for fmt in formats:
        row = fmt.to_dict()
        table.add_row(
            fmt.name,
            ", ".join(a for a in fmt.aliases if not a.startswith("float")),
            str(fmt.exponent_bits),
            str(fmt.mantissa_bits),
            "–" if row["bias"] is None else str(row["bias"]),
            fmt.specials_text,
            _num(fmt.max),
            _num(fmt.min_normal),
            _num(fmt.min_subnormal),
        )
    console.print(table)
    console.print("Any other format: e<E>m<M>[:ieee|fn|fnuz|finite][:bias=B] (E <= 8, M <= 23).")


def render_recipes(rows: list[dict[str, str]], console: Console) -> None:
    """The named recipes: what `-f NAME` runs, and under which canonical name it is recorded."""
    table = Table(title="recipes (-f NAME, or -f FORMAT@SCALING)", title_justify="left")
    for column in ("name", "recorded as", "what it is"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["recipe"], row["description"])
    console.print(table)
    console.print(
        "SCALING: tensor | pow2 | channel | nvfp4 | none | block:N[:RULE] | block:RxC[:RULE], "
        "RULE floor | rceil | ceil | even | fp32."
    )
