"""Bit layouts of the float types the arithmetic runs in, exact power-of-two helpers, and exact
counts of a compare.

Rounding, scaling and the per-chunk kernel all read float bit patterns; the constants live here
once so no module keeps its own copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Carrier:
    """Bit layout of the float type the arithmetic runs in."""

    float_dtype: torch.dtype
    int_dtype: torch.dtype
    mantissa: int
    bias: int

    @property
    def sign_shift(self) -> int:
        return self.mantissa + (11 if self.mantissa == 52 else 8)

    @property
    def sign_mask(self) -> int:
        return -(1 << self.sign_shift)  # the sign bit, as the signed integer type sees it

    @property
    def magnitude_mask(self) -> int:
        return (1 << self.sign_shift) - 1


F32 = Carrier(torch.float32, torch.int32, 23, 127)
F64 = Carrier(torch.float64, torch.int64, 52, 1023)
INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
"""The signed integer dtype of each byte width, for viewing float bit patterns."""


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (it must not be rounded through float32); every other float widens to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def carrier_of(dtype: torch.dtype) -> Carrier:
    return F64 if dtype == torch.float64 else F32


def float_bits(value: float, layout: Carrier) -> int:
    """The bit pattern of `value` rounded to the carrier's float type, as a signed integer."""
    return int(torch.tensor(value, dtype=layout.float_dtype).view(layout.int_dtype).item())


def exp2_int(expo: Tensor, dtype: torch.dtype) -> Tensor:
    """2**expo exactly, built from bits (subnormal results included), for integer tensors."""
    c = carrier_of(dtype)
    min_normal = 1 - c.bias
    expo = expo.to(c.int_dtype).clamp(min_normal - c.mantissa, c.bias)
    normal = (expo + c.bias).clamp(min=1) << c.mantissa
    tiny = torch.ones_like(expo) << (expo - min_normal + c.mantissa).clamp(min=0)
    return torch.where(expo >= min_normal, normal, tiny).view(c.float_dtype)


def floor_log2(q: Tensor) -> Tensor:
    """floor(log2 |q|) of non-zero finite values, exactly (subnormals included), as int64."""
    _, expo = torch.frexp(q)
    return expo.to(torch.int64) - 1


def count_compared(compare: Callable[..., Tensor], x: Tensor, bound: Tensor | float) -> int:
    """#compare(x, bound) for a torch compare such as `torch.lt`, written as 1 or 0 into x's
    float dtype: several times faster than into a bool mask on the CPUs measured, and its sum
    is an exact count while it is at most 2^(mantissa + 1) = 2 / eps. Beyond, a bool mask."""
    if x.numel() > 2 / torch.finfo(x.dtype).eps:
        return int(torch.count_nonzero(compare(x, bound)))
    return int(compare(x, bound, out=torch.empty_like(x)).sum())
