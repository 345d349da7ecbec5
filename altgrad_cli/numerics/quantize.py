"""The public quantization API: x / s, rounded to the grid, codes or values.

`format` is a format (applied with the given scale, none meaning 1) or a recipe (`mxfp8`,
`e4m3fn@block:32:rceil`, a `Recipe`): a recipe computes its own scale from `x` unless one is
given. A bare format name stays a format, so `encode(x, "e4m3fn")` is unscaled as before.
"""

from __future__ import annotations

import torch
from torch import Tensor

from altgrad_cli.numerics.bits import carrier_of, working_dtype
from altgrad_cli.numerics.formats import Format, get_format
from altgrad_cli.numerics.recipes import Recipe, get_recipe, is_recipe_text
from altgrad_cli.numerics.rounding import INVALID_CODE, decode_magnitude, encode_scaled
from altgrad_cli.numerics.scaling import Scale, compute_scale

FormatLike = Format | Recipe | str


def _resolve(
    x: Tensor, format: FormatLike, scale: Scale | Tensor | float | None
) -> tuple[Format, Scale | Tensor | float | None]:
    """The format to round to and the scale to use: a recipe's own scale when none is given."""
    if not is_recipe_text(format):
        return get_format(format), scale
    recipe = get_recipe(format)
    return recipe.format, compute_scale(x, recipe) if scale is None else scale


def _as_scale(scale: Scale | Tensor | float | None, dtype: torch.dtype) -> Tensor | None:
    if scale is None or (isinstance(scale, Scale) and scale.is_unit):
        return None
    if isinstance(scale, Scale):
        return scale.broadcast().to(dtype)
    return torch.as_tensor(scale, dtype=dtype)


def _scaled(x: Tensor, scale: Scale | Tensor | float | None) -> tuple[Tensor, Tensor | None]:
    """x / s in the working dtype (a true division: float32, or float64 for float64 inputs)."""
    dtype = working_dtype(x.dtype)
    y = x.detach().to(dtype)
    s = _as_scale(scale, dtype)
    return (y if s is None else y / s), s


def encode(x: Tensor, format: FormatLike, scale: Scale | Tensor | float | None = None) -> Tensor:
    """The signed int32 code of R(x / scale) for every element; NaN and ±inf get INVALID_CODE."""
    fmt, scale = _resolve(x, format, scale)
    y, _ = _scaled(x, scale)
    finite = torch.isfinite(y)
    code = encode_scaled(y, fmt).to(torch.int32)
    return torch.where(finite, code, torch.tensor(INVALID_CODE, dtype=torch.int32))


def quantize(x: Tensor, format: FormatLike, scale: Scale | Tensor | float | None = None) -> Tensor:
    """Q(x; s) = s · R(x / s): round half to even onto the grid, saturating at ±max.

    Returns float32 for inputs of up to 32 bits and float64 for float64 inputs. NaN and ±inf pass
    through unchanged; zeros keep the input's sign except in formats without -0 (fnuz).
    `scale` is a `Scale` from `compute_scale`, a tensor broadcastable to `x`, a number, or None
    (1 for a format, the recipe's own scale of `x` for a recipe).
    """
    fmt, scale = _resolve(x, format, scale)
    y, s = _scaled(x, scale)
    carrier = carrier_of(y.dtype)
    code = encode_scaled(y, fmt)
    value = decode_magnitude(code.abs(), fmt, y.dtype)
    if fmt.has_negative_zero:
        sign_bit = y.view(carrier.int_dtype) & carrier.sign_mask
    else:
        sign_bit = (code < 0).to(carrier.int_dtype) * carrier.sign_mask
    value = (value.view(carrier.int_dtype) | sign_bit).view(carrier.float_dtype)
    if s is not None:
        value = value * s
    return torch.where(torch.isfinite(y), value, y)
