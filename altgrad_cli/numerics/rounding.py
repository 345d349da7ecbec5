"""Exact rounding of already-scaled values to a format's grid: codes, grid values, overflow.

Rounding works on the bit patterns of the float32 (or float64) input, so it is exact by
construction and needs no comparisons against grid tables:

* adding C = 2^(e - M + p) (p = 23 or 52, e the binade of the input, at least emin), whose ULP
  is the grid step there, makes the FPU itself round half-even to the grid, subnormals included;
  scaled by a power of two, the rounded value's bit pattern is the code (`_binade_codes`);
* where that does not apply (M = 0, fixed point, binades beyond the carrier's reach), the
  normal range rounds by one integer add and a shift on the bit pattern (a carry into the
  exponent is the correct next binade) and the subnormal range by the add of C = 2^(emin - M + p).

Saturation is a clamp of the magnitude's bit pattern to the max value's before rounding, which
is the same as rounding and then saturating. The code of a value is its unsigned bit pattern in
the format (positive grid values are ordered like their patterns), signed by the input's sign.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch
from torch import Tensor

from altgrad_cli.numerics.bits import (
    INT_OF_WIDTH,
    Carrier,
    carrier_of,
    count_compared,
    float_bits,
)
from altgrad_cli.numerics.formats import Format, get_format

INVALID_CODE = -(2**31)
"""Code given to NaN and ±inf inputs by `encode`: they have no place on the grid."""


@dataclass(frozen=True)
class _Plan:
    """Per (format, carrier) integer constants of the rounding, computed once."""

    max_bits: int  # bit pattern of the format's max in the carrier
    min_normal_bits: int  # below this, the subnormal branch applies
    shift: int  # carrier mantissa bits dropped by the format
    round_add: int  # (1 << (shift - 1)) - 1, the half-minus-one of round-half-even
    code_offset: int  # carrier exponent field minus format exponent field, << M
    sub_const: float  # C: ULP(C) is the subnormal step
    sub_const_bits: int
    overflow_bits: int  # magnitudes above this overflow without saturation
    overflow_on_tie: bool  # ... and equal to it too, when max's code is odd
    binade_rounding: bool  # `_binade_codes` applies
    emin_field: int  # carrier exponent field of 2^emin, in place
    binade_offset: int  # adds (carrier mantissa - M) to an exponent field in place
    to_pattern: float  # 2^(bias - carrier bias): R(y) times this has the code as its bits


@lru_cache(maxsize=256)
def _plan(fmt: Format, dtype: torch.dtype) -> _Plan:
    c = carrier_of(dtype)
    m = fmt.mantissa_bits
    max_value = fmt.value_of_code(fmt.max_code)
    top_step = 2.0 ** ((fmt.emax if not fmt.is_fixed_point else fmt.emin) - m)
    threshold = float(max_value) + top_step / 2  # exact in float64 for M <= 23
    in_carrier = float(torch.tensor(threshold, dtype=c.float_dtype).item())
    thr_bits = float_bits(threshold, c)
    exact = in_carrier == threshold
    if in_carrier > threshold:  # rounded up (or to inf): the bound is the carrier value below it
        thr_bits -= 1
    sub_const = 2.0 ** (fmt.emin - m + c.mantissa)
    return _Plan(
        max_bits=float_bits(float(max_value), c),
        min_normal_bits=float_bits(2.0**fmt.emin, c),
        shift=c.mantissa - m,
        round_add=(1 << (c.mantissa - m - 1)) - 1 if c.mantissa > m else 0,
        code_offset=(c.bias - fmt.bias) << m,
        sub_const=sub_const,
        sub_const_bits=float_bits(sub_const, c),
        overflow_bits=thr_bits,
        overflow_on_tie=exact and fmt.max_code % 2 == 1,
        binade_rounding=not fmt.is_fixed_point
        and 0 < m < c.mantissa
        and fmt.emax + c.mantissa - m < c.bias
        and fmt.bias >= 1,
        emin_field=(fmt.emin + c.bias) << c.mantissa,
        binade_offset=(c.mantissa - m) << c.mantissa,
        to_pattern=2.0 ** (fmt.bias - c.bias),
    )


def _binade_codes(mag: Tensor, plan: _Plan, carrier: Carrier) -> Tensor:
    """Unsigned codes with the FPU doing the rounding: C = 2^(e + p - M), e the binade of |y|
    (at least emin) and p the carrier's mantissa bits, has an ULP equal to the grid step there,
    so (|y| + C) - C is R(y), ties to even (an even multiple of the step is an even code; a carry
    lands on the next binade's first value). Scaled by 2^(bias - carrier bias), R becomes the
    carrier float whose bit pattern, shifted, is the code, format subnormals included (they
    become carrier subnormals). No branch, no select. M >= 1 only: with M = 0 the parity of a
    code is its exponent's, which the FPU does not see."""
    binade = mag & -(1 << carrier.mantissa)  # the exponent field, in place (mag ≥ 0)
    binade.clamp_(min=plan.emin_field).add_(plan.binade_offset)
    step = binade.view(carrier.float_dtype)
    rounded = (mag.view(carrier.float_dtype) + step).sub_(step).mul_(plan.to_pattern)
    return rounded.view(carrier.int_dtype) >> plan.shift


def _magnitude_codes(mag: Tensor, fmt: Format, plan: _Plan, carrier: Carrier) -> Tensor:
    """Unsigned codes of magnitudes given as (already clamped) carrier bit patterns."""
    if plan.binade_rounding:
        return _binade_codes(mag, plan, carrier)
    fl = mag.view(carrier.float_dtype)
    sub = (fl + plan.sub_const).view(carrier.int_dtype)
    sub -= plan.sub_const_bits
    if fmt.is_fixed_point:
        return sub
    if plan.shift:
        normal = mag >> plan.shift
        normal &= 1
        normal += mag
        normal += plan.round_add
        normal >>= plan.shift
    else:
        normal = mag.clone()
    normal -= plan.code_offset
    return torch.where(mag < plan.min_normal_bits, sub, normal)


_NATIVE = {
    "e4m3fn": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "e4m3fnuz": "float8_e4m3fnuz",
    "e5m2fnuz": "float8_e5m2fnuz",
    "bf16": "bfloat16",
    "fp16": "float16",
}


def native_dtype(fmt: Format) -> torch.dtype | None:
    """torch's own dtype for a registry format, when torch has one (its cast is a reference)."""
    name = _NATIVE.get(fmt.name)
    dtype = getattr(torch, name, None) if name else None
    return dtype if get_format(fmt.name) == fmt else None


def _encode_native(y: Tensor, fmt: Format, dtype: torch.dtype, saturate: bool) -> Tensor:
    """Codes through torch's cast: the stored pattern is sign + code, so no rounding logic is needed."""
    clamped = y.clamp(-fmt.max, fmt.max) if saturate else y  # torch's casts do not saturate
    pattern = clamped.to(dtype).view(INT_OF_WIDTH[dtype.itemsize])
    sign = pattern >> (8 * dtype.itemsize - 1)
    code = pattern & ((1 << (8 * dtype.itemsize - 1)) - 1)
    code ^= sign
    code -= sign
    return code


def encode_scaled(y: Tensor, fmt: Format, *, saturate: bool = True) -> Tensor:
    """Signed codes of R(y) for a float32/float64 tensor already divided by its scale.

    The result is the narrowest signed int dtype that holds every code (int8 for torch's float8
    formats, int16 for bf16/fp16, int32 otherwise); widen before subtracting codes. Non-finite
    inputs get meaningless codes here; `encode` marks them, the metrics mask them out.
    `saturate=False` skips the clamp to ±max, for callers that know |y| <= max.
    """
    native = native_dtype(fmt) if y.dtype == torch.float32 else None
    if native is not None:  # float64 must not take it: torch casts float64 through float32 twice
        return _encode_native(y, fmt, native, saturate)
    return encode_scaled_bits(y, fmt)


def encode_scaled_bits(y: Tensor, fmt: Format) -> Tensor:
    """`encode_scaled` by integer arithmetic on the bit pattern: any format, float32 or float64."""
    carrier = carrier_of(y.dtype)
    plan = _plan(fmt, y.dtype)
    bits = y.view(carrier.int_dtype)
    mag = bits & carrier.magnitude_mask
    mag.clamp_(max=plan.max_bits)
    code = _magnitude_codes(mag, fmt, plan, carrier)
    sign = bits >> carrier.sign_shift  # 0 or -1: (code ^ -1) + 1 == -code
    code ^= sign
    code -= sign
    return code if code.dtype == torch.int32 else code.to(torch.int32)


@lru_cache(maxsize=256)
def _decode64_plan(fmt: Format) -> tuple[int, int]:
    """(shift, j): a code c placed as `c << shift` in a float64 bit pattern reads as its grid value
    times 2^-j. Float64's own subnormals cover the format's, so no branch is needed."""
    shift = 52 - fmt.mantissa_bits
    ratio = fmt.value_of_code(1) / Fraction(2) ** (shift - 1074)  # a power of two
    return shift, ratio.numerator.bit_length() - ratio.denominator.bit_length()


def decode_magnitude64_parts(code: Tensor, fmt: Format, scale: float = 1.0) -> tuple[Tensor, float]:
    """(raw, factor) with scale · (grid value) = raw · factor exactly, raw float64 and factor a
    finite float: two integer ops, and the multiply left to the caller to fuse."""
    shift, j = _decode64_plan(fmt)
    raw = (code.to(torch.int64) << shift).view(torch.float64)
    while j > 1000:  # 2^j itself may not be a float64; the partial products always are
        raw *= 2.0**1000
        j -= 1000
    factor = math.ldexp(scale, j)
    if not math.isfinite(factor):
        raw *= 2.0**j
        factor = scale
    return raw, factor


def decode_magnitude64(code: Tensor, fmt: Format, scale: float = 1.0) -> Tensor:
    """scale · (grid value) of non-negative codes, as float64: two integer ops and a multiply.

    Exact for float32 scales (a grid value has at most 24 significant bits, the scale 24)."""
    raw, factor = decode_magnitude64_parts(code, fmt, scale)
    return raw.mul_(factor)


def decode_magnitude(code: Tensor, fmt: Format, dtype: torch.dtype = torch.float32) -> Tensor:
    """Grid values of non-negative codes, in the carrier dtype (exact: every grid value fits it)."""
    return decode_magnitude64(code, fmt).to(carrier_of(dtype).float_dtype)


def decode(code: Tensor, fmt: Format | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Grid values of signed codes (code 0 decodes to +0)."""
    fmt = get_format(fmt)
    value = decode_magnitude(code.abs(), fmt, dtype)
    return torch.where(code < 0, -value, value)


def overflow_mask(y: Tensor, fmt: Format) -> Tensor:
    """Finite elements that rounding without saturation would send beyond ±max."""
    carrier = carrier_of(y.dtype)
    plan = _plan(fmt, y.dtype)
    mag = y.view(carrier.int_dtype) & carrier.magnitude_mask
    if plan.overflow_on_tie:  # the tie at max + half a step rounds away too
        return mag >= plan.overflow_bits
    return mag > plan.overflow_bits


def overflow_count(y: Tensor, fmt: Format) -> int:
    """The number of `overflow_mask`'s elements for y without NaN. Magnitudes order as their
    bit patterns do, so |y| is compared with the bound's float (`count_compared`)."""
    carrier = carrier_of(y.dtype)
    plan = _plan(fmt, y.dtype)
    bound = torch.tensor(plan.overflow_bits, dtype=carrier.int_dtype).view(carrier.float_dtype)
    return count_compared(torch.ge if plan.overflow_on_tie else torch.gt, y.abs(), bound)


def overflows(value: float, fmt: Format, dtype: torch.dtype = torch.float32) -> bool:
    """`overflow_mask` for one number that is already a `dtype` value, without a tensor."""
    plan = _plan(fmt, dtype)
    if dtype == torch.float64:
        magnitude = struct.unpack("<q", struct.pack("<d", abs(value)))[0]
    else:
        magnitude = struct.unpack("<i", struct.pack("<f", abs(value)))[0]
    return magnitude > plan.overflow_bits or (
        plan.overflow_on_tie and magnitude == plan.overflow_bits
    )


def divide_as(numerator: float, denominator: float, dtype: torch.dtype) -> float:
    """numerator / denominator rounded as a `dtype` division would round it (both operands
    already `dtype` values): float64 division, then rounding to float32 when asked, which is
    innocuous for division (53 >= 2·24 + 2 bits)."""
    quotient = numerator / denominator
    if dtype == torch.float64:
        return quotient
    try:
        return struct.unpack("<f", struct.pack("<f", quotient))[0]
    except OverflowError:  # beyond float32: the division overflows to inf
        return math.copysign(math.inf, quotient)
