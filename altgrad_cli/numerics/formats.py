"""The registry of low-precision formats and the parser for generic `e<E>m<M>[:specials][:bias=B]` names.

A format is fully described by (E, M, bias, specials). Everything else (max, min normal, the top
code) is derived here once, so the rounding engine and the reports read one source of truth.
Positive grid values are ordered like their bit patterns, so a value's code is its bit pattern
without the sign: that is what makes exact integer rounding possible.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from fractions import Fraction

from altgrad_cli.errors import FormatError

SPECIALS = ("ieee", "fn", "fnuz", "finite")

_SPECIALS_TEXT = {
    "ieee": "inf, NaN",
    "fn": "NaN only",
    "fnuz": "NaN 0x80, no -0",
    "finite": "none",
}


@dataclass(frozen=True)
class Format:
    """A sign + E exponent bits + M mantissa bits floating-point format (or, with E = 0, fixed point).

    `specials` says which bit patterns are not finite: `ieee` reserves the top exponent for
    inf/NaN, `fn` only the all-ones pattern (NaN), `fnuz` only 0x80 (and so has no -0),
    `finite` nothing. With E = 0 the grid is k / 2^M, |k| < 2^M, and `bias` is meaningless (0).
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    specials: str = "finite"
    aliases: tuple[str, ...] = field(default=(), compare=False)
    ml_dtypes_name: str | None = field(default=None, compare=False)

    @property
    def is_fixed_point(self) -> bool:
        return self.exponent_bits == 0

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade; for fixed point, the binade [1, 2) above the grid."""
        return 0 if self.is_fixed_point else 1 - self.bias

    @property
    def max_code(self) -> int:
        """Code (unsigned bit pattern) of the largest finite value."""
        e, m = self.exponent_bits, self.mantissa_bits
        if self.specials == "ieee":
            return (1 << (e + m)) - 1 - (1 << m)
        if self.specials == "fn":
            return (1 << (e + m)) - 2
        return (1 << (e + m)) - 1

    @property
    def emax(self) -> int:
        """Exponent of the top normal binade (floor(log2 max))."""
        if self.is_fixed_point:
            return -1
        return (self.max_code >> self.mantissa_bits) - self.bias

    def value_of_code(self, code: int) -> Fraction:
        """The exact grid value of a non-negative code."""
        m = self.mantissa_bits
        mant, expo = code & ((1 << m) - 1), code >> m
        if expo == 0:
            return Fraction(mant) * Fraction(2) ** (self.emin - m)
        return (1 + Fraction(mant, 1 << m)) * Fraction(2) ** (expo - self.bias)

    @property
    def max(self) -> float:
        return float(self.value_of_code(self.max_code))

    @property
    def min_normal(self) -> float | None:
        """Smallest positive normal value; None for fixed point, which has no normals."""
        return None if self.is_fixed_point else 2.0**self.emin

    @property
    def min_subnormal(self) -> float | None:
        """Smallest positive subnormal; None when M = 0 (no subnormals)."""
        return None if self.mantissa_bits == 0 else 2.0 ** (self.emin - self.mantissa_bits)

    @property
    def min_positive(self) -> float:
        return float(self.value_of_code(1))

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.specials in ("ieee", "fn", "fnuz")

    @property
    def has_negative_zero(self) -> bool:
        return self.specials != "fnuz"

    @property
    def specials_text(self) -> str:
        if self.is_fixed_point:
            return f"none (k/{1 << self.mantissa_bits})"
        return _SPECIALS_TEXT[self.specials]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits,
            "bias": None if self.is_fixed_point else self.bias,
            "specials": self.specials,
            "max": self.max,
            "min_normal": self.min_normal,
            "min_subnormal": self.min_subnormal,
        }

    def __str__(self) -> str:
        return self.name


def _validate(fmt: Format) -> Format:
    """Reject formats the float32 rounding engine cannot represent exactly."""
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    if not (0 <= e <= 8 and 0 <= m <= 23):
        raise FormatError(f"format {fmt.name!r}: need 0 <= E <= 8 and 0 <= M <= 23")
    if e + m == 0:
        raise FormatError(f"format {fmt.name!r}: a format needs at least one bit besides the sign")
    if e == 0 and fmt.specials != "finite":
        raise FormatError(f"format {fmt.name!r}: fixed point (E = 0) has no special values")
    if fmt.specials == "ieee" and e < 2:
        raise FormatError(f"format {fmt.name!r}: ieee specials need E >= 2")
    if fmt.specials == "fn" and fmt.max_code < 1:
        raise FormatError(f"format {fmt.name!r}: fn leaves no finite nonzero value")
    if fmt.max_code >> m >= 1 and fmt.emax > 127:
        raise FormatError(f"format {fmt.name!r}: max 2^{fmt.emax} is beyond float32's range")
    if fmt.emin - m < -149:
        raise FormatError(f"format {fmt.name!r}: smallest value is below float32's subnormals")
    return fmt


def _std_bias(e: int) -> int:
    return (1 << (e - 1)) - 1 if e > 0 else 0


_BUILTIN = [
    Format("e4m3fn", 4, 3, 7, "fn", ("E4M3", "fp8", "float8_e4m3fn"), "float8_e4m3fn"),
    Format("e5m2", 5, 2, 15, "ieee", ("E5M2", "float8_e5m2"), "float8_e5m2"),
    Format("e4m3", 4, 3, 7, "ieee", ("float8_e4m3",), "float8_e4m3"),
    Format("e3m4", 3, 4, 3, "ieee", ("E3M4", "float8_e3m4"), "float8_e3m4"),
    Format("e4m3fnuz", 4, 3, 8, "fnuz", ("float8_e4m3fnuz",), "float8_e4m3fnuz"),
    Format("e5m2fnuz", 5, 2, 16, "fnuz", ("float8_e5m2fnuz",), "float8_e5m2fnuz"),
    Format("e4m3b11fnuz", 4, 3, 11, "fnuz", ("float8_e4m3b11fnuz",), "float8_e4m3b11fnuz"),
    Format("e3m2fn", 3, 2, 3, "finite", ("E3M2", "fp6_e3m2", "float6_e3m2fn"), "float6_e3m2fn"),
    Format("e2m3fn", 2, 3, 1, "finite", ("E2M3", "fp6_e2m3", "float6_e2m3fn"), "float6_e2m3fn"),
    Format("e2m1fn", 2, 1, 1, "finite", ("E2M1", "fp4", "float4_e2m1fn"), "float4_e2m1fn"),
    Format("E0M7", 0, 7, 0, "finite"),
    Format("E1M6", 1, 6, _std_bias(1), "finite"),
    Format("E2M5", 2, 5, _std_bias(2), "finite"),
    Format("E6M1", 6, 1, _std_bias(6), "finite"),
    Format("E7M0", 7, 0, _std_bias(7), "finite"),
    Format("bf16", 8, 7, 127, "ieee", ("bfloat16",), "bfloat16"),
    Format("fp16", 5, 10, 15, "ieee", ("float16", "half"), "float16"),
]

REGISTRY: dict[str, Format] = {f.name: _validate(f) for f in _BUILTIN}
_BY_NAME: dict[str, Format] = {}
for _fmt in _BUILTIN:
    for _key in (_fmt.name, *_fmt.aliases):
        _BY_NAME[_key] = _fmt

_GENERIC = re.compile(r"e(\d+)m(\d+)((?::[a-z]+)?)((?::bias=-?\d+)?)")


def _parse_generic(name: str) -> Format | None:
    match = _GENERIC.fullmatch(name)
    if match is None:
        return None
    if max(len(match[1]), len(match[2]), len(match[4])) > 12:  # before int(): no 5000-digit parse
        raise FormatError(f"format {name[:40]!r}...: exponent, mantissa or bias is far too large")
    e, m = int(match[1]), int(match[2])
    specials = match[3][1:] if match[3] else "finite"
    if specials not in SPECIALS:
        raise FormatError(
            f"format {name!r}: unknown specials {specials!r}; choose one of {', '.join(SPECIALS)}"
        )
    bias = int(match[4].split("=")[1]) if match[4] else _std_bias(e)
    if e == 0 and match[4]:
        raise FormatError(f"format {name!r}: fixed point (E = 0) takes no bias")
    return _validate(Format(name, e, m, bias, specials))


def get_format(name: str | Format) -> Format:
    """Look a format up by name, alias or generic `e<E>m<M>[:ieee|fn|fnuz|finite][:bias=B]` syntax.

    Registry names are case-sensitive because the literature's names are: `E4M3` is the OCP
    e4m3fn (max 448) while `e4m3` is the IEEE-style format (max 240).
    """
    if isinstance(name, Format):
        return name
    key = name.strip()
    if key in _BY_NAME:
        return _BY_NAME[key]
    generic = _parse_generic(key)
    if generic is not None:
        return generic
    known = sorted(_BY_NAME)
    lowered = {k.lower(): k for k in known}
    close = [
        lowered[c] for c in difflib.get_close_matches(key.lower(), list(lowered), n=4, cutoff=0.6)
    ]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise FormatError(
        f"unknown format {name!r}{hint} (see `altgrad formats`, or write e<E>m<M>[:ieee|fn|fnuz|finite][:bias=B])"
    )


def registry() -> list[Format]:
    """Every registered format, in the SPEC's table order."""
    return list(REGISTRY.values())
