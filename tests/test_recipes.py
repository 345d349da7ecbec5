"""Recipes (SPEC §Recipes): NVFP4 and MX scales bit for bit against references written here from
the SPEC text (numpy + ml_dtypes, never the product), 2-D tiles, parsing and canonical names."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from altgrad_cli import compute_scale, encode, get_format, get_recipe, quantize
from altgrad_cli.errors import UsageError
from altgrad_cli.numerics.recipes import parse_recipes
from altgrad_cli.numerics.scaling import group_amax, parse_scaling

F32 = np.float32


# ----------------------------------------------------------------------------- NVFP4 reference


def nvfp4_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(element scales per 16-block, e2m1fn codes) of float32 `x` (rows × cols) per the SPEC:
    t = amax / (448 · 6) in float32 (1 when zero or non-finite); per block b = amax_block / 6,
    e = e4m3fn(clamp(b / t, 2^-6, 448)) half-even; s = t · e in float32; codes of R(x / s)."""
    rows, cols = x.shape
    nb = -(-cols // 16)
    padded = np.zeros((rows, nb * 16), F32)
    padded[:, :cols] = np.abs(x)
    block_amax = padded.reshape(rows, nb, 16).max(axis=2)
    t = F32(np.abs(x).max()) / (F32(448.0) * F32(6.0))
    if not (np.isfinite(t) and t > 0):
        t = F32(1.0)
    b = (block_amax / F32(6.0)).astype(F32)
    ratio = np.clip((b / t).astype(F32), F32(2.0**-6), F32(448.0))
    e = ratio.astype(ml_dtypes.float8_e4m3fn).astype(F32)
    s = (t * e).astype(F32)
    per_element = np.repeat(s, 16, axis=1)[:, :cols]
    y = (x / per_element).astype(F32)
    q = np.clip(y, -6.0, 6.0).astype(ml_dtypes.float4_e2m1fn)
    bits = q.view(np.uint8).astype(np.int32)
    codes = np.where(bits & 8, -(bits & 7), bits & 7)
    return s, codes


def _binades(n: int, seed: int, low: int = -40, high: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mant = rng.uniform(1.0, 2.0, n)
    expo = rng.integers(low, high, n)
    sign = rng.choice([-1.0, 1.0], n)
    return (sign * mant * 2.0**expo).astype(F32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(16384, 64), (3000, 37), (1, 1_000_003)])
def test_nvfp4_scales_and_codes_bit_exact(dtype, shape):
    n = math.prod(shape)
    x = _binades(n, seed=n, low=-30 if dtype == torch.float32 else -40).reshape(shape)
    x = torch.from_numpy(x).to(dtype)
    rows = x.reshape(-1, shape[-1])
    rows[0, :32] = 0.0  # an all-zero block: clamps to 2^-6
    r, c = (rows.shape[0] - 1, 0) if rows.shape[0] > 1 else (0, 48)
    rows[r, c : c + 16] = 2.0**-60  # a tiny block far below the tensor scale: clamps at 2^-6
    x32 = x.to(torch.float32).numpy()
    want_s, want_codes = nvfp4_reference(x32)
    scale = compute_scale(x, "nvfp4")
    got_s = scale.values.numpy()
    np.testing.assert_array_equal(got_s.view(np.uint32), want_s.view(np.uint32))
    np.testing.assert_array_equal(encode(x, "nvfp4").numpy(), want_codes)
    t = F32(np.abs(x32).max()) / F32(2688.0)
    assert got_s.reshape(-1)[0] == F32(t * F32(2.0**-6))  # the all-zero block
    assert (want_s / t).max() == F32(448.0)  # the block holding the tensor amax hits 448


def test_nvfp4_edge_cases():
    zeros = torch.zeros(40)
    assert compute_scale(zeros, "nvfp4").values.tolist() == [[2.0**-6] * 3]  # t = 1, all clamp
    with_nan = torch.ones(32)
    with_nan[20] = float("nan")
    s = compute_scale(with_nan, "nvfp4").values  # tensor amax NaN: t = 1; NaN block: s = 1
    e = np.float32(F32(1.0) / F32(6.0)).astype(ml_dtypes.float8_e4m3fn).astype(F32)
    assert s.tolist() == [[float(e), 1.0]]  # e4m3fn(1/6) = 0.171875
    x = torch.tensor([1.0, -6.0, 0.5, 3.0] * 4, dtype=torch.float64)  # F64: scales in float32
    scale = compute_scale(x, "nvfp4")
    t = np.float32(6.0) / np.float32(2688.0)
    assert scale.values.dtype == torch.float64
    assert scale.values.item() == float(np.float32(t * np.float32(448.0)))


def test_nvfp4_against_torchao_if_installed():
    """Optional: torchao's nvfp4_quantize(per_tensor_scale=amax/(448·6)). Block scales agree bit
    for bit; codes wherever torchao's x·((1/t)/e) equals our x/(t·e) in float32 (SPEC)."""
    mx = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    x = torch.from_numpy(_binades(1 << 16, seed=7, low=-20, high=10).reshape(256, 256))
    x = x.to(torch.bfloat16)
    t = x.abs().max().float() / (448.0 * 6.0)
    scales, packed = mx.nvfp4_quantize(x, block_size=16, per_tensor_scale=t)
    ours = compute_scale(x, "nvfp4")
    e = scales.view(torch.float8_e4m3fn).to(torch.float32).reshape(ours.values.shape)
    assert torch.equal(ours.values, t * e)
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(x.shape).to(torch.int32)
    theirs = torch.where(nibbles >= 8, -(nibbles & 7), nibbles)
    x32 = x.float()
    e_full = e.repeat_interleave(16, dim=1)
    same_y = x32 / (t * e_full) == x32 * ((1.0 / t) / e_full)
    codes = encode(x, "nvfp4")
    assert torch.equal(codes[same_y], theirs[same_y])
    assert (codes != theirs).float().mean().item() < 0.01  # the SPEC's ~0.07 %, by one code


# ----------------------------------------------------------------------------- MX rules


@pytest.mark.parametrize(
    ("rule", "amax", "expected"),
    [
        # e2m1fn: max 6 = 1.5 · 2^2, emax 2, top step 2 (so clipping begins beyond 7)
        ("floor", 7.5, 1.0),  # 2^(2 - 2): 7.5 > 7 clips
        ("rceil", 7.5, 2.0),  # ceil(log2 1.25) = 1: 3.75, no clip
        ("ceil", 7.5, 2.0),  # 2^(3 - 2)
        ("even", 7.5, 2.0),  # 7.5 = 1.875 · 4 rounds to 8 with 1 mantissa bit
        ("floor", 5.0, 1.0),
        ("rceil", 5.0, 1.0),  # 5/6 -> 2^0
        ("ceil", 5.0, 2.0),
        ("even", 5.0, 1.0),  # 1.25 ties to 1.0 (even code)
        ("even", 7.0, 2.0),  # 1.75 ties to 2.0 (even code)
        ("rceil", 6.0, 1.0),
        ("floor", 2.0**-149, 2.0**-127),  # below E8M0: clamped
    ],
)
def test_mx_e8m0_rules_by_hand(rule, amax, expected):
    x = torch.tensor([amax, amax / 3, 0.0, -amax / 5], dtype=torch.float32)
    assert compute_scale(x, "e2m1fn", f"block:4:{rule}").values.tolist() == [[expected]]


def test_floor_clips_where_rceil_does_not():
    block = torch.tensor([[7.5] + [1.0] * 31, [3.0] + [0.5] * 31])  # two mxfp4 blocks
    floor = compute_scale(block, "mxfp4")
    rceil = compute_scale(block, "e2m1fn@block:32:rceil")
    assert floor.values.reshape(-1).tolist() == [1.0, 0.5]
    assert rceil.values.reshape(-1).tolist() == [2.0, 0.5]
    assert quantize(block, "mxfp4")[0, 0].item() == 6.0  # clipped: 7.5 -> 6
    assert quantize(block, "e2m1fn@block:32:rceil")[0, 0].item() == 8.0  # 3.75 -> 4, times 2


def test_pow2_scales_are_exact_where_float32_underflows():
    # rceil: amax / max_F underflows float32 to 0; the exact rule gives 2^-157, clamped to 2^-127
    tiny = torch.tensor([2.0**-149, 0.0], dtype=torch.float32)
    assert compute_scale(tiny, "e4m3fn", "block:2:rceil").values.tolist() == [[2.0**-127]]
    bf = torch.tensor([2.0**-133, 2.0**-140], dtype=torch.bfloat16)  # bf16 subnormals
    assert compute_scale(bf, "e5m2", "block:2:rceil").values.tolist() == [[2.0**-127]]
    # even: a float32 subnormal amax has floor(log2) below -126, so 2^-127 after the clamp
    for amax in (2.0**-140, 3 * 2.0**-145, 2.0**-149):
        x = torch.tensor([amax], dtype=torch.float32)
        for fmt in ("e4m3fn", "e2m1fn", "e5m2"):
            assert compute_scale(x, fmt, "block:1:even").values.item() == 2.0**-127, (amax, fmt)
    # an unclamped exponent, where the old float32 quotient lost nothing: agree with the rule
    x = torch.tensor([2.0**-100 * 1.97], dtype=torch.float32)  # rounds up to 2^-99 on 3 bits
    assert compute_scale(x, "e4m3fn", "block:1:rceil").values.item() == 2.0 ** (-100 - 8 + 1)
    assert compute_scale(x, "e4m3fn", "block:1:even").values.item() == 2.0 ** (-99 - 8)


def test_fp32_rule_and_unit_scales():
    x = torch.tensor([300.0, -1.0, 0.0, 0.0])
    s = compute_scale(x, "e4m3fn", "block:2:fp32").values
    assert s.tolist() == [[float(F32(300.0) / F32(448.0)), 1.0]]  # zero block: s = 1
    sub = torch.tensor([2.0**-149], dtype=torch.float32)  # 2^-149 / 448 rounds to 0: s = 1
    assert compute_scale(sub, "e4m3fn", "block:1:fp32").values.item() == 1.0


# ----------------------------------------------------------------------------- 2-D tiles


def _tile_reference(x: np.ndarray, r: int, c: int) -> np.ndarray:
    """amax per r × c tile of every matrix (last two dims), partial tiles at the edges."""
    mats = x.reshape(-1, *x.shape[-2:]) if x.ndim >= 2 else x.reshape(1, 1, -1)
    m, rows, cols = mats.shape
    out = np.zeros((m, -(-rows // r), -(-cols // c)), np.float32)
    for k in range(m):  # explicit loops: the reference, not the product's reshapes
        for i in range(0, rows, r):
            for j in range(0, cols, c):
                out[k, i // r, j // c] = np.abs(mats[k, i : i + r, j : j + c]).max()
    return out.reshape(-1, out.shape[-1])


def test_2d_tiles_on_a_5x7_tensor_with_partial_edges():
    x = torch.arange(1, 36, dtype=torch.float32).reshape(5, 7)
    x[4, 6] = -100.0  # the 1 × 1 corner tile
    s = compute_scale(x, "e4m3fn", "block:2x3:fp32")
    # tiles: rows {0,1},{2,3},{4} × cols {0..2},{3..5},{6}
    want_amax = [[10, 13, 14], [24, 27, 28], [31, 34, 100]]
    assert s.amax.tolist() == want_amax
    assert s.values.tolist() == (torch.tensor(want_amax) / F32(448.0)).tolist()
    full = s.broadcast()
    assert full.shape == (5, 7)
    assert full[4, 6].item() == float(F32(100.0) / F32(448.0))
    assert full[1, 5].item() == float(F32(13.0) / F32(448.0))
    assert full[4, 0].item() == float(F32(31.0) / F32(448.0))
    floor = compute_scale(x, "e4m3fn", "block:2x3")  # default rule floor: 2^(floor(log2) - 8)
    assert floor.values[2].tolist() == [2.0**-4, 2.0**-3, 2.0**-2]


@pytest.mark.parametrize("shape", [(5, 7), (2, 5, 7), (3, 4, 9), (37,), (1, 130)])
@pytest.mark.parametrize("tile", [(2, 3), (4, 4), (1, 5), (128, 128)])
def test_tile_amax_matches_reference_for_any_chunk(shape, tile):
    torch.manual_seed(sum(shape) + tile[0])
    x = torch.randn(shape)
    want = _tile_reference(x.numpy(), *tile)
    sc = parse_scaling(f"block:{tile[0]}x{tile[1]}")
    for chunk in (1, 7, 20, 1 << 20):
        got = group_amax(x, sc, chunk=chunk)
        np.testing.assert_array_equal(got.numpy(), want)
    scale = compute_scale(x, "e4m3fn", sc)
    ref_full = np.zeros(x.shape, np.float32).reshape(-1, shape[-1])
    rows = ref_full.shape[0]
    per_matrix = shape[-2] if len(shape) >= 2 else 1
    bands = -(-per_matrix // tile[0])
    for i in range(rows):  # which tile row holds view row i
        band = i // per_matrix * bands + i % per_matrix // tile[0]
        ref_full[i] = np.repeat(scale.values[band].numpy(), tile[1])[: shape[-1]]
    np.testing.assert_array_equal(scale.broadcast().reshape(-1, shape[-1]).numpy(), ref_full)


# ----------------------------------------------------------------------------- names


def test_named_recipes_and_canonical_names():
    names = {
        "mxfp8": "e4m3fn@block:32:floor",
        "mxfp8_e5m2": "e5m2@block:32:floor",
        "mxfp6_e3m2": "e3m2fn@block:32:floor",
        "mxfp6_e2m3": "e2m3fn@block:32:floor",
        "mxfp4": "e2m1fn@block:32:floor",
        "nvfp4": "e2m1fn@nvfp4",
        "fp8_tensorwise": "e4m3fn",
        "fp8_rowwise": "e4m3fn@channel",
        "fp8_blockwise": "e4m3fn@block:128x128:fp32",
        "e4m3fn": "e4m3fn",
        "fp8": "e4m3fn",
        "E4M3@tensor": "e4m3fn",
        "bf16": "bf16",
        "bf16@none": "bf16",
        "bf16@tensor": "bf16@tensor",
        "e4m3fn@none": "e4m3fn@none",
        "e2m1fn@block:32": "e2m1fn@block:32:floor",
        "e4m3fn@block:1x32:rceil": "e4m3fn@block:32:rceil",
    }
    for text, canonical in names.items():
        assert get_recipe(text).name == canonical, text
    assert get_recipe("e4m3fn", "block:32").name == "e4m3fn@block:32:floor"
    assert get_recipe("mxfp4", "tensor").name == "e2m1fn@block:32:floor"  # named keeps its own
    recipes = parse_recipes(["mxfp8", "e4m3fn@block:32", "e4m3fn", "fp8"], None)
    assert [r.name for r in recipes] == ["e4m3fn@block:32:floor", "e4m3fn"]


def test_unknown_recipe_names_close_matches():
    with pytest.raises(UsageError, match="mxfp8"):
        get_recipe("mxfp9")
    with pytest.raises(UsageError, match="nvfp4"):
        get_recipe("nvfp5")
    with pytest.raises(UsageError):
        get_recipe("e4m3fn@block:32:round")
    with pytest.raises(UsageError):
        get_recipe("e4m3fn@block:0x4")


def test_encode_quantize_accept_recipes_but_bare_formats_stay_unscaled():
    x = torch.tensor([[0.001, 0.002] * 16])
    assert torch.equal(encode(x, "e4m3fn"), encode(x, "e4m3fn", None))
    recipe = get_recipe("mxfp8")
    s = compute_scale(x, recipe)
    assert torch.equal(encode(x, recipe), encode(x, get_format("e4m3fn"), s))
    assert torch.equal(quantize(x, "mxfp8"), quantize(x, "e4m3fn", s))
    assert s.values.item() == 2.0 ** (-9 - 8)  # floor(log2 0.002) = -9


def test_overflow_free_says_whether_any_element_can_overflow():
    """`Scale.overflow_free` lets the kernel skip its overflow pass, so it must be True only when
    no group's amax / s rounds beyond max: rceil and NVFP4 fit, floor clips 480 of a block
    whose scale is 2^(8 - 8) (480 > 448 + 16), a NaN group is never known to fit."""
    x = torch.tensor([[480.0] + [1.0] * 31, [0.5] * 32])
    assert not compute_scale(x, "mxfp8").overflow_free  # floor: 480 / 1 is beyond 448
    assert compute_scale(x, "e4m3fn@block:32:rceil").overflow_free
    assert compute_scale(x, "nvfp4").overflow_free
    assert compute_scale(x, "fp8_blockwise").overflow_free
    assert not compute_scale(x, "e4m3fn@tensor").overflow_free  # one scale: the kernel checks
    x[1, 3] = float("nan")
    assert not compute_scale(x, "e4m3fn@block:32:rceil").overflow_free
