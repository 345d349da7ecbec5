"""Independent references for the tests: grids enumerated by brute force, rounding by search.

Nothing here imports altgrad_cli: these are the numbers the product is checked against.
"""

from __future__ import annotations

import bisect
from fractions import Fraction

import ml_dtypes
import numpy as np

ML_DTYPES = {
    "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e5m2": ml_dtypes.float8_e5m2,
    "e4m3": getattr(ml_dtypes, "float8_e4m3", None),
    "e3m4": getattr(ml_dtypes, "float8_e3m4", None),
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "e4m3b11fnuz": ml_dtypes.float8_e4m3b11fnuz,
    "e3m2fn": ml_dtypes.float6_e3m2fn,
    "e2m3fn": ml_dtypes.float6_e2m3fn,
    "e2m1fn": ml_dtypes.float4_e2m1fn,
    "bf16": ml_dtypes.bfloat16,
    "fp16": np.float16,
}


def ml_dtypes_grid(dtype) -> np.ndarray:
    """Sorted non-negative finite values of an ml_dtypes type, from every bit pattern it has."""
    width = np.dtype(dtype).itemsize
    patterns = np.arange(1 << (8 * width), dtype=np.uint64).astype(
        np.uint8 if width == 1 else np.uint16
    )
    with np.errstate(invalid="ignore"):  # NaN patterns
        values = patterns.view(dtype).astype(np.float64)
    values = values[np.isfinite(values)]
    return np.unique(np.abs(values))


def enumerate_grid(e: int, m: int, bias: int, specials: str) -> np.ndarray:
    """Sorted non-negative grid of a format, written out from the definition, value by value."""
    values = []
    if e == 0:
        return np.array([k / 2**m for k in range(2**m)], dtype=np.float64)
    for exp_field in range(2**e):
        for mant in range(2**m):
            if specials == "ieee" and exp_field == 2**e - 1:
                continue
            if specials == "fn" and exp_field == 2**e - 1 and mant == 2**m - 1:
                continue
            if exp_field == 0:
                value = Fraction(mant, 2**m) * Fraction(2) ** (1 - bias)
            else:
                value = (1 + Fraction(mant, 2**m)) * Fraction(2) ** (exp_field - bias)
            values.append(float(value))
    return np.array(sorted(values), dtype=np.float64)


def round_to_grid(x: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, signed codes) of round-half-even onto `grid` with saturation, by binary search.

    x is float64 (exact for float32 inputs); ties go to the even index, i.e. the even code.
    """
    a = np.minimum(np.abs(x), grid[-1])
    hi = np.clip(np.searchsorted(grid, a, side="left"), 0, len(grid) - 1)
    lo = np.maximum(hi - 1, 0)
    d_lo, d_hi = a - grid[lo], grid[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    idx = np.where(pick_hi, hi, lo)
    sign = np.where(np.signbit(x), -1, 1)
    return sign * grid[idx], (sign * idx).astype(np.int64)


def probe_values(grid: np.ndarray, n_random: int = 1 << 20, seed: int = 0) -> np.ndarray:
    """float32 probes: every grid value and midpoint, 1-3 ULPs either side of each midpoint,
    ±0, ±max and beyond, the subnormal range, and random values over all binades; both signs."""
    rng = np.random.default_rng(seed)
    g = grid
    top_half_step = (g[-1] - g[-2]) / 2
    mids = (g[:-1] + g[1:]) / 2
    with np.errstate(over="ignore"):  # beyond float32's range for the widest formats: inf, dropped
        base = np.concatenate([g, mids, [g[-1] + top_half_step, g[-1] * 2, 3.0e38]]).astype(
            np.float32
        )
    near = [base]
    up, down = base.copy(), base.copy()
    for _ in range(3):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(0))
        near += [up, down]
    tiny = g[1]
    subnormal = np.linspace(0, 4 * tiny, 4097).astype(np.float32)
    f32_sub = (np.arange(1, 2000, dtype=np.uint32)).view(np.float32)
    bits = rng.integers(0, 0x7F800000, size=n_random // 2, dtype=np.uint32).view(np.float32)
    lo, hi = max(np.log2(tiny) - 4, -149.0), min(np.log2(g[-1]) + 4, 127.9)
    logu = np.exp2(rng.uniform(lo, hi, size=n_random - n_random // 2)).astype(np.float32)
    allv = np.concatenate(
        near + [subnormal, f32_sub, bits, logu, np.array([np.finfo(np.float32).max], np.float32)]
    )
    allv = allv[np.isfinite(allv)]
    return np.concatenate([allv, -allv])


def stored_reference(before, after, scale, grid: np.ndarray, updated=None) -> dict:
    """SPEC §Metrics `stored`, element by element in exact rationals, by search on the signed grid.

    w = s · R(before / s) (float32 division), Δ = after − before, z = w + Δ rounded once to float64,
    y = z / s exactly; RNE: the nearest grid value (ties to the even code, saturating); SR: y between
    neighbours lo < y < hi goes to hi with probability (y − lo)/(hi − lo), beyond ±max to ±max.
    Returns the sums: updates, rne_moved, mass, lost_mass, sr_expected, sr_variance.
    """
    shape = np.shape(before)
    b = np.asarray(before, dtype=np.float32).reshape(-1)
    a = np.asarray(after, dtype=np.float32).reshape(-1)
    s = np.broadcast_to(np.asarray(scale, dtype=np.float32), shape).reshape(-1)
    keep = np.isfinite(b) & np.isfinite(a)
    if updated is not None:
        keep &= np.broadcast_to(np.asarray(updated, dtype=bool), shape).reshape(-1)
    magnitudes = [Fraction(float(v)) for v in grid]
    signed = sorted({-m for m in magnitudes} | set(magnitudes))
    top = magnitudes[-1]
    index_of = {m: i for i, m in enumerate(magnitudes)}  # the code of a magnitude

    def nearest(y: Fraction) -> Fraction:
        if y >= top:
            return top
        if y <= -top:
            return -top
        i = bisect.bisect_left(signed, y)
        if signed[i] == y:
            return y
        lo, hi = signed[i - 1], signed[i]
        if y - lo != hi - y:
            return lo if y - lo < hi - y else hi
        return lo if index_of[abs(lo)] % 2 == 0 else hi

    out = dict(updates=0, rne_moved=0, mass=0.0, lost_mass=0.0, sr_expected=0.0, sr_variance=0.0)
    for bi, ai, si in zip(b[keep], a[keep], s[keep], strict=True):
        yb = np.float32(bi) / np.float32(si)  # float32 division, as Q's
        g = nearest(Fraction(float(yb)))
        w = float(Fraction(float(si)) * g)  # exact: 24 + 25 bits
        d = float(ai) - float(bi)  # exact for float32 operands
        z = w + d  # one float64 rounding
        y = Fraction(z) / Fraction(float(si))
        moved = nearest(y) != g
        if y >= top or y <= -top:  # SR saturates
            p = Fraction(int(nearest(y) != g))
        else:
            i = bisect.bisect_left(signed, y)
            if signed[i] == y:
                p = Fraction(int(y != g))
            else:
                lo, hi = signed[i - 1], signed[i]
                p_hi = (y - lo) / (hi - lo)
                p = p_hi * (hi != g) + (1 - p_hi) * (lo != g)
        out["updates"] += 1
        out["rne_moved"] += int(moved)
        out["mass"] += abs(d)
        out["lost_mass"] += 0.0 if moved else abs(d)
        out["sr_expected"] += float(p)
        out["sr_variance"] += float(p * (1 - p))
    return out
