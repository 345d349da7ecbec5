"""Recipes: a format with its scaling (SPEC §Recipes), parsed once, named the ecosystem's way.

`-f FORMAT[@SCALING]` or a named recipe (`mxfp8`, `nvfp4`, `fp8_blockwise`, ...). The canonical
name is the bare format under its default scaling (`none` for bf16 and fp16, `tensor` otherwise),
else `FORMAT@SCALING` with the rule written out; two spellings of one recipe are one recipe.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from altgrad_cli.errors import FormatError, UsageError
from altgrad_cli.numerics.formats import Format, get_format, registry
from altgrad_cli.numerics.scaling_modes import Scaling, parse_scaling

UNSCALED_FORMATS = ("bf16", "fp16")

NAMED: dict[str, tuple[str, str, str]] = {
    # name: (format, scaling, what it is)
    "mxfp8": ("e4m3fn", "block:32:floor", "OCP MX v1.0 FP8: E8M0 scale per 32 elements"),
    "mxfp8_e5m2": ("e5m2", "block:32:floor", "OCP MX v1.0 FP8 (E5M2): E8M0 scale per 32"),
    "mxfp6_e3m2": ("e3m2fn", "block:32:floor", "OCP MX v1.0 FP6 (E3M2): E8M0 scale per 32"),
    "mxfp6_e2m3": ("e2m3fn", "block:32:floor", "OCP MX v1.0 FP6 (E2M3): E8M0 scale per 32"),
    "mxfp4": ("e2m1fn", "block:32:floor", "OCP MX v1.0 FP4: E8M0 scale per 32 elements"),
    "nvfp4": ("e2m1fn", "nvfp4", "NVFP4: e4m3fn scale per 16 under an fp32 tensor scale"),
    "fp8_tensorwise": ("e4m3fn", "tensor", "torchao float8: one fp32 scale per tensor"),
    "fp8_rowwise": ("e4m3fn", "channel", "torchao float8: one fp32 scale per row"),
    "fp8_blockwise": ("e4m3fn", "block:128x128:fp32", "DeepSeek-V3: fp32 scale per 128x128"),
}


def default_scaling(fmt: Format) -> Scaling:
    """`none` for bf16 and fp16 (used unscaled in training), `tensor` for every other format."""
    return parse_scaling("none" if fmt.name in UNSCALED_FORMATS else "tensor")


@dataclass(frozen=True)
class Recipe:
    """A format and the scaling it is used with."""

    format: Format
    scaling: Scaling

    @property
    def name(self) -> str:
        """The canonical name: `e4m3fn`, `bf16`, `e4m3fn@block:32:floor`, `e2m1fn@nvfp4`."""
        if self.scaling == default_scaling(self.format):
            return self.format.name
        return f"{self.format.name}@{self.scaling}"

    def __str__(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "format": self.format.name, "scaling": str(self.scaling)}


def get_recipe(name: str | Recipe | Format, scaling: Scaling | str | None = None) -> Recipe:
    """The recipe `name` means: a named recipe, `FORMAT@SCALING`, or a bare format under
    `scaling` (when given) or its default. A named recipe or an `@` keeps its own scaling.
    Unknown names raise UsageError naming the closest matches."""
    if isinstance(name, Recipe):
        return name
    if isinstance(name, Format):
        return Recipe(name, parse_scaling(scaling) if scaling else default_scaling(name))
    text = name.strip()
    if text.lower() in NAMED:
        fmt_name, scaling_text, _ = NAMED[text.lower()]
        return Recipe(get_format(fmt_name), parse_scaling(scaling_text))
    fmt_text, at, scaling_text = text.partition("@")
    try:
        fmt = get_format(fmt_text)
    except FormatError as error:
        lowered = {k.lower(): k for k in known_names()}
        matches = difflib.get_close_matches(text.lower(), list(lowered), n=3, cutoff=0.6)
        close = [lowered[m] for m in matches]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown format or recipe {name!r}{hint} (see `altgrad formats`)") from (
            error
        )
    if at:
        return Recipe(fmt, parse_scaling(scaling_text))
    return Recipe(fmt, parse_scaling(scaling) if scaling else default_scaling(fmt))


def as_recipe(value: str | Recipe | Format, scaling: Scaling | str | None = None) -> Recipe:
    """Like `get_recipe`, for library calls that take a format or a recipe."""
    return get_recipe(value, scaling)


def is_recipe_text(value: object) -> bool:
    """True for a Recipe or text that names one with its own scaling (`mxfp8`, `e4m3fn@tensor`);
    a bare format name is not (it stays unscaled in `encode` and `quantize`)."""
    if isinstance(value, Recipe):
        return True
    return isinstance(value, str) and ("@" in value or value.strip().lower() in NAMED)


def parse_recipes(names: list[str] | tuple, scaling: Scaling | str | None = None) -> list[Recipe]:
    """Recipes for `-f` values in order, duplicates (same canonical name) dropped."""
    out: dict[str, Recipe] = {}
    for name in names:
        recipe = get_recipe(name, scaling)
        out.setdefault(recipe.name, recipe)
    return list(out.values())


def known_names() -> list[str]:
    names = [*NAMED]
    for fmt in registry():
        names.append(fmt.name)
        names.extend(fmt.aliases)
    return names


def recipe_rows() -> list[dict[str, str]]:
    """The named recipes for `altgrad formats`: name, canonical recipe, format, scaling, meaning."""
    rows = []
    for name, (fmt_name, _, meaning) in NAMED.items():
        recipe = get_recipe(name)
        rows.append(
            {
                "name": name,
                "recipe": recipe.name,
                "format": fmt_name,
                "scaling": str(recipe.scaling),
                "description": meaning,
            }
        )
    return rows
