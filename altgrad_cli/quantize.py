"""Exact rounding to a format's grid: codes, quantized values, and the scaling modes.

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
import re
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import torch
from torch import Tensor

from altgrad_cli.errors import UsageError
from altgrad_cli.formats import Format, get_format

INVALID_CODE = -(2**31)
"""Code given to NaN and ±inf inputs by `encode`: they have no place on the grid."""


@dataclass(frozen=True)
class _Carrier:
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


_F32 = _Carrier(torch.float32, torch.int32, 23, 127)
_F64 = _Carrier(torch.float64, torch.int64, 52, 1023)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (it must not be rounded through float32); every other float widens to float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _carrier(dtype: torch.dtype) -> _Carrier:
    return _F64 if dtype == torch.float64 else _F32


def _float_bits(value: float, carrier: _Carrier) -> int:
    return int(torch.tensor(value, dtype=carrier.float_dtype).view(carrier.int_dtype).item())


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
    c = _carrier(dtype)
    m = fmt.mantissa_bits
    max_value = fmt.value_of_code(fmt.max_code)
    top_step = 2.0 ** ((fmt.emax if not fmt.is_fixed_point else fmt.emin) - m)
    threshold = float(max_value) + top_step / 2  # exact in float64 for M <= 23
    in_carrier = float(torch.tensor(threshold, dtype=c.float_dtype).item())
    thr_bits = _float_bits(threshold, c)
    exact = in_carrier == threshold
    if in_carrier > threshold:  # rounded up (or to inf): the bound is the carrier value below it
        thr_bits -= 1
    sub_const = 2.0 ** (fmt.emin - m + c.mantissa)
    return _Plan(
        max_bits=_float_bits(float(max_value), c),
        min_normal_bits=_float_bits(2.0**fmt.emin, c),
        shift=c.mantissa - m,
        round_add=(1 << (c.mantissa - m - 1)) - 1 if c.mantissa > m else 0,
        code_offset=(c.bias - fmt.bias) << m,
        sub_const=sub_const,
        sub_const_bits=_float_bits(sub_const, c),
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


def _binade_codes(mag: Tensor, plan: _Plan, carrier: _Carrier) -> Tensor:
    """Unsigned codes with the FPU doing the rounding: C = 2^(e + p - M), e the binade of |y|
    (at least emin) and p the carrier's mantissa bits, has an ULP equal to the grid step there,
    so (|y| + C) - C is R(y), ties to even (an even multiple of the step is an even code; a carry
    lands on the next binade's first value). Scaled by 2^(bias - carrier bias), R becomes the
    carrier float whose bit pattern, shifted, is the code, format subnormals included (they
    become carrier subnormals). No branch, no select. M >= 1 only: with M = 0 the parity of a
    code is its exponent's, which the FPU does not see."""
    binade = (mag >> carrier.mantissa) << carrier.mantissa  # the exponent field, in place
    binade.clamp_(min=plan.emin_field).add_(plan.binade_offset)
    step = binade.view(carrier.float_dtype)
    rounded = (mag.view(carrier.float_dtype) + step).sub_(step).mul_(plan.to_pattern)
    return rounded.view(carrier.int_dtype) >> plan.shift


def _magnitude_codes(mag: Tensor, fmt: Format, plan: _Plan, carrier: _Carrier) -> Tensor:
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
_INT_OF_WIDTH = {1: torch.int8, 2: torch.int16}


def native_dtype(fmt: Format) -> torch.dtype | None:
    """torch's own dtype for a registry format, when torch has one (its cast is a reference)."""
    name = _NATIVE.get(fmt.name)
    dtype = getattr(torch, name, None) if name else None
    return dtype if get_format(fmt.name) == fmt else None


def _encode_native(y: Tensor, fmt: Format, dtype: torch.dtype, saturate: bool) -> Tensor:
    """Codes through torch's cast: the stored pattern is sign + code, so no rounding logic is needed."""
    clamped = y.clamp(-fmt.max, fmt.max) if saturate else y  # torch's casts do not saturate
    pattern = clamped.to(dtype).view(_INT_OF_WIDTH[dtype.itemsize])
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
    carrier = _carrier(y.dtype)
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
    return decode_magnitude64(code, fmt).to(_carrier(dtype).float_dtype)


def decode(code: Tensor, fmt: Format | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """Grid values of signed codes (code 0 decodes to +0)."""
    fmt = get_format(fmt)
    value = decode_magnitude(code.abs(), fmt, dtype)
    return torch.where(code < 0, -value, value)


def overflow_mask(y: Tensor, fmt: Format) -> Tensor:
    """Finite elements that rounding without saturation would send beyond ±max."""
    carrier = _carrier(y.dtype)
    plan = _plan(fmt, y.dtype)
    mag = y.view(carrier.int_dtype) & carrier.magnitude_mask
    over = mag > plan.overflow_bits
    if plan.overflow_on_tie:
        over |= mag == plan.overflow_bits
    return over


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


# --------------------------------------------------------------------------- scaling

_BLOCK_RULES = ("floor", "rceil", "ceil", "even")
_SCALING = re.compile(r"(tensor|pow2|channel|none)|block:(\d+)(?::([a-z]+))?")


@dataclass(frozen=True)
class Scaling:
    """A scaling mode: `tensor`, `pow2`, `channel`, `block` (with size and rule) or `none`."""

    mode: str
    block: int = 0
    rule: str = "floor"

    def __str__(self) -> str:
        return f"block:{self.block}:{self.rule}" if self.mode == "block" else self.mode


def parse_scaling(text: str | Scaling) -> Scaling:
    """Parse `tensor`, `pow2`, `channel`, `none` or `block:N[:floor|rceil|ceil|even]`."""
    if isinstance(text, Scaling):
        return text
    match = _SCALING.fullmatch(text.strip())
    if match is None:
        raise UsageError(
            f"unknown scaling {text!r}; choose tensor, pow2, channel, none or block:N[:floor|rceil|ceil|even]"
        )
    if match[1]:
        return Scaling(match[1])
    size, rule = int(match[2]), match[3] or "floor"
    if size < 1:
        raise UsageError(f"scaling {text!r}: the block size must be at least 1")
    if rule not in _BLOCK_RULES:
        raise UsageError(
            f"scaling {text!r}: unknown block rule {rule!r}; choose {', '.join(_BLOCK_RULES)}"
        )
    return Scaling("block", size, rule)


def exp2_int(expo: Tensor, dtype: torch.dtype) -> Tensor:
    """2**expo exactly, built from bits (subnormal results included), for integer tensors."""
    c = _carrier(dtype)
    min_normal = 1 - c.bias
    expo = expo.to(c.int_dtype).clamp(min_normal - c.mantissa, c.bias)
    normal = (expo + c.bias).clamp(min=1) << c.mantissa
    tiny = torch.ones_like(expo) << (expo - min_normal + c.mantissa).clamp(min=0)
    return torch.where(expo >= min_normal, normal, tiny).view(c.float_dtype)


def _pow2_ceil(q: Tensor) -> Tensor:
    """Smallest power of two >= q (q > 0, finite), exactly."""
    mant, expo = torch.frexp(q)
    expo = torch.where(mant == 0.5, expo - 1, expo)
    return exp2_int(expo, q.dtype)


def floor_log2(q: Tensor) -> Tensor:
    """floor(log2 |q|) of non-zero finite values, exactly (subnormals included), as int64."""
    _, expo = torch.frexp(q)
    return expo.to(torch.int64) - 1


def _round_mantissa(q: Tensor, m: int) -> Tensor:
    """q with its mantissa rounded half-even to m bits, range unbounded (MX's `even` rule)."""
    carrier = _carrier(q.dtype)
    shift = carrier.mantissa - m
    if shift == 0:
        return q
    bits = q.view(carrier.int_dtype)
    bits = (bits + ((1 << (shift - 1)) - 1) + ((bits >> shift) & 1)) >> shift << shift
    return bits.view(carrier.float_dtype)


def _amax_scale(amax: Tensor, fmt: Format, scaling: Scaling) -> Tensor:
    """Scales from per-group amax values; zero or non-finite amax gives 1."""
    good = torch.isfinite(amax) & (amax > 0)
    safe = torch.where(good, amax, torch.ones_like(amax))
    fmax = torch.tensor(fmt.max, dtype=amax.dtype)
    if scaling.mode in ("tensor", "channel"):
        scale = safe / fmax
    elif scaling.mode == "pow2":
        scale = _pow2_ceil(safe / fmax)
    else:
        emax = math.floor(math.log2(fmt.max))
        if scaling.rule == "rceil":
            expo = floor_log2(_pow2_ceil(safe / fmax))
        elif scaling.rule == "floor":
            expo = floor_log2(safe) - emax
        elif scaling.rule == "ceil":
            expo = floor_log2(_pow2_ceil(safe)) - emax
        else:
            expo = floor_log2(_round_mantissa(safe, fmt.mantissa_bits)) - emax
        expo = expo.clamp(-127, 127)  # E8M0's range
        scale = exp2_int(expo, safe.dtype)
    good &= torch.isfinite(scale) & (scale > 0)
    return torch.where(good, scale, torch.ones_like(scale))


@dataclass(frozen=True)
class Scale:
    """Scales for one tensor, in their natural shape, ready to be applied to it or to another tensor.

    `values` is 0-d for tensor/pow2/none, (dim0,) for channel and (rows, blocks) for block, where
    rows are the tensor's elements grouped by its last dim. Computed from one tensor (BEFORE) and
    applicable to another of the same shape (AFTER), so flips measure weight motion, not scale jitter.
    """

    scaling: Scaling
    values: Tensor
    shape: tuple[int, ...]
    amax: Tensor | None = field(default=None, compare=False)  # per-group amax the scales came from

    @property
    def is_unit(self) -> bool:
        return self.scaling.mode == "none"

    def view_shape(self) -> tuple[int, int]:
        """The 2-D view of the tensor in which every scale covers whole rows or aligned column runs."""
        numel = math.prod(self.shape)
        if self.scaling.mode == "channel":
            rows = self.shape[0] if self.shape else 1
            return rows, (numel // rows if rows else 0)
        if self.scaling.mode == "block":
            cols = self.shape[-1] if self.shape else 1
            return (numel // cols if cols else 0), cols
        return 1, numel

    def for_chunk(self, row0: int, row1: int, col0: int, col1: int) -> Tensor:
        """Scales broadcastable to the chunk [row0:row1, col0:col1] of `view_shape()`."""
        if self.scaling.mode == "channel":
            return self.values[row0:row1, None]
        if self.scaling.mode == "block":
            n = self.scaling.block
            blocks = self.values[row0:row1, col0 // n : (col1 + n - 1) // n]
            expanded = blocks.repeat_interleave(n, dim=1)
            return expanded[:, : col1 - col0]
        return self.values

    def broadcast(self) -> Tensor:
        """Scales broadcastable to the whole tensor."""
        if not self.shape:
            return self.values.reshape(())
        if self.scaling.mode == "channel":
            return self.values.reshape(-1, *([1] * (len(self.shape) - 1)))
        if self.scaling.mode == "block":
            rows, cols = self.view_shape()
            return self.for_chunk(0, rows, 0, cols).reshape(self.shape)
        return self.values

    def to(self, dtype: torch.dtype) -> Scale:
        return Scale(self.scaling, self.values.to(dtype), self.shape, self.amax)


AMAX_CHUNK = 1 << 20


def iter_chunks(rows: int, cols: int, chunk: int, align: int = 1):
    """Chunks (row0, row1, col0, col1) of a rows × cols view: whole rows when a row fits,
    otherwise column runs of one row whose starts are multiples of `align` (the block size)."""
    if rows == 0 or cols == 0:
        return
    if cols <= chunk:
        step = max(1, chunk // cols)
        for r in range(0, rows, step):
            yield r, min(rows, r + step), 0, cols
        return
    width = max(align, chunk // align * align)
    for r in range(rows):
        for c in range(0, cols, width):
            yield r, r + 1, c, min(cols, c + width)


def group_amax(x: Tensor, scaling: Scaling, chunk: int = AMAX_CHUNK) -> Tensor:
    """amax(|x|) per scale group (0-d, (dim0,) or (rows, blocks)), read in chunks: no |x| copy of the
    whole tensor is ever made. NaN propagates, so a group holding NaN gets a non-finite amax."""
    dtype = working_dtype(x.dtype)
    rows, cols = Scale(scaling, torch.ones(()), tuple(x.shape)).view_shape()
    view = x.detach().reshape(rows, cols)
    n = scaling.block if scaling.mode == "block" else 1
    if scaling.mode == "channel":
        amax = torch.zeros(rows, dtype=dtype)
    elif scaling.mode == "block":
        amax = torch.zeros(rows, (cols + n - 1) // n, dtype=dtype)
    else:
        amax = torch.zeros((), dtype=dtype)
    for r0, r1, c0, c1 in iter_chunks(rows, cols, chunk, n):
        if scaling.mode not in ("channel", "block"):  # no |x| copy: max(-min, max)
            low, high = torch.aminmax(view[r0:r1, c0:c1].to(dtype))
            amax = torch.maximum(amax, torch.maximum(-low, high))
            continue
        part = view[r0:r1, c0:c1].to(dtype).abs()
        if scaling.mode == "channel":
            amax[r0:r1] = torch.maximum(amax[r0:r1], part.amax(dim=1))
        elif scaling.mode == "block":
            width = c1 - c0
            nb = (width + n - 1) // n
            padded = torch.nn.functional.pad(part, (0, nb * n - width))
            amax[r0:r1, c0 // n : c0 // n + nb] = padded.reshape(r1 - r0, nb, n).amax(dim=2)
    return amax


def compute_scale(x: Tensor, format: Format | str, scaling: Scaling | str = "tensor") -> Scale:
    """The scales of `scaling` for `x` (float32 arithmetic, float64 for float64 `x`)."""
    scaling = parse_scaling(scaling)
    amax = None if scaling.mode == "none" else group_amax(x, scaling)
    return scale_from_amax(amax, format, scaling, tuple(x.shape), working_dtype(x.dtype))


def scale_from_amax(
    amax: Tensor | None,
    format: Format | str,
    scaling: Scaling | str,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Scale:
    """The Scale for one format from `group_amax` of a tensor, so several formats share one pass."""
    scaling = parse_scaling(scaling)
    if amax is None:  # scaling "none"
        return Scale(scaling, torch.ones((), dtype=dtype), shape)
    return Scale(scaling, _amax_scale(amax, get_format(format), scaling), shape, amax)


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


def encode(x: Tensor, format: Format | str, scale: Scale | Tensor | float | None = None) -> Tensor:
    """The signed int32 code of R(x / scale) for every element; NaN and ±inf get INVALID_CODE."""
    fmt = get_format(format)
    y, _ = _scaled(x, scale)
    finite = torch.isfinite(y)
    code = encode_scaled(y, fmt).to(torch.int32)
    return torch.where(finite, code, torch.tensor(INVALID_CODE, dtype=torch.int32))


def quantize(
    x: Tensor, format: Format | str, scale: Scale | Tensor | float | None = None
) -> Tensor:
    """Q(x; s) = s · R(x / s): round half to even onto the grid, saturating at ±max.

    Returns float32 for inputs of up to 32 bits and float64 for float64 inputs. NaN and ±inf pass
    through unchanged; zeros keep the input's sign except in formats without -0 (fnuz).
    `scale` is a `Scale` from `compute_scale`, a tensor broadcastable to `x`, a number, or None (1).
    """
    fmt = get_format(format)
    y, s = _scaled(x, scale)
    carrier = _carrier(y.dtype)
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
