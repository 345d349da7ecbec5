"""The format registry against the SPEC's table and against brute-force grids."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from reference import ML_DTYPES, enumerate_grid, ml_dtypes_grid

from altgrad_cli import FormatError, get_format
from altgrad_cli.numerics.formats import registry

# name: (E, M, bias, max, min normal, min subnormal), copied from SPEC §Formats.
SPEC_TABLE = {
    "e4m3fn": (4, 3, 7, 448, 2**-6, 2**-9),
    "e5m2": (5, 2, 15, 57344, 2**-14, 2**-16),
    "e4m3": (4, 3, 7, 240, 2**-6, 2**-9),
    "e3m4": (3, 4, 3, 15.5, 2**-2, 2**-6),
    "e4m3fnuz": (4, 3, 8, 240, 2**-7, 2**-10),
    "e5m2fnuz": (5, 2, 16, 57344, 2**-15, 2**-17),
    "e4m3b11fnuz": (4, 3, 11, 30, 2**-10, 2**-13),
    "e3m2fn": (3, 2, 3, 28, 2**-2, 2**-4),
    "e2m3fn": (2, 3, 1, 7.5, 1, 2**-3),
    "e2m1fn": (2, 1, 1, 6, 1, 0.5),
    "E0M7": (0, 7, None, 127 / 128, None, 2**-7),
}


@pytest.mark.parametrize("name", list(SPEC_TABLE))
def test_spec_table_row(name):
    e, m, bias, fmax, min_normal, min_sub = SPEC_TABLE[name]
    fmt = get_format(name)
    assert (fmt.exponent_bits, fmt.mantissa_bits) == (e, m)
    assert fmt.to_dict()["bias"] == bias
    assert fmt.max == fmax
    assert fmt.min_normal == min_normal
    assert fmt.min_subnormal == min_sub


@pytest.mark.parametrize("name", [n for n, d in ML_DTYPES.items() if d is not None])
def test_registry_matches_ml_dtypes_grid(name):
    fmt = get_format(name)
    grid = ml_dtypes_grid(ML_DTYPES[name])
    assert fmt.max == grid[-1]
    assert fmt.min_positive == grid[1]
    assert fmt.max_code == len(grid) - 1  # one code per positive grid value
    info = ml_dtypes.finfo(ML_DTYPES[name])
    assert fmt.min_normal == float(info.smallest_normal)


@pytest.mark.parametrize("fmt", registry(), ids=lambda f: f.name)
def test_registry_matches_enumerated_grid(fmt):
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    assert fmt.max == grid[-1]
    assert fmt.max_code == len(grid) - 1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("E4M3", "e4m3fn"),
        ("fp8", "e4m3fn"),
        ("E5M2", "e5m2"),
        ("E3M4", "e3m4"),
        ("fp4", "e2m1fn"),
        ("E2M1", "e2m1fn"),
        ("E3M2", "e3m2fn"),
        ("E2M3", "e2m3fn"),
        ("bfloat16", "bf16"),
        ("float16", "fp16"),
    ],
)
def test_aliases(name, expected):
    assert get_format(name) is get_format(expected)


def test_e7m0_has_no_subnormals_and_standard_bias():
    fmt = get_format("E7M0")
    assert fmt.bias == 63 and fmt.min_subnormal is None
    assert fmt.min_positive == 2.0**-62 and fmt.max == 2.0**64


@pytest.mark.parametrize(
    ("name", "e", "m", "bias", "specials", "fmax"),
    [
        ("e3m3", 3, 3, 3, "finite", 1.875 * 16),
        ("e3m3:ieee", 3, 3, 3, "ieee", 1.875 * 8),
        ("e3m3:fn", 3, 3, 3, "fn", 1.75 * 16),
        ("e3m3:fnuz", 3, 3, 3, "fnuz", 1.875 * 16),
        ("e4m3:fn:bias=8", 4, 3, 8, "fn", 224),
        ("e5m2:bias=10", 5, 2, 10, "finite", 1.75 * 2**21),
        ("e8m23:ieee", 8, 23, 127, "ieee", float(np.finfo(np.float32).max)),
        ("e0m3", 0, 3, 0, "finite", 7 / 8),
    ],
)
def test_generic_names(name, e, m, bias, specials, fmax):
    fmt = get_format(name)
    assert (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials) == (e, m, bias, specials)
    assert fmt.max == fmax
    if e + m <= 16:  # e8m23 is float32 itself: its max above is the independent check
        assert fmt.max == enumerate_grid(e, m, bias, specials)[-1]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("e4m4fm", "did you mean"),
        ("E4M3FN", "did you mean e4m3fn"),
        ("nonsense", "unknown format"),
        ("e9m2", "E <= 8"),
        ("e2m24", "M <= 23"),
        ("e0m0", "at least one bit"),
        ("e0m3:ieee", "fixed point"),
        ("e1m2:ieee", "ieee specials need E >= 2"),
        ("e3m2:weird", "unknown specials"),
        ("e8m2:bias=-10", "beyond float32"),
        ("e8m7:bias=200", "below float32"),
    ],
)
def test_bad_names_are_clear_errors(name, fragment):
    with pytest.raises(FormatError, match=fragment):
        get_format(name)


def test_emax_is_floor_log2_max():
    for fmt in registry():
        assert fmt.emax == math.floor(math.log2(fmt.max))
