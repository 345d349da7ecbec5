"""Rounding, codes and scaling, bit for bit against ml_dtypes, torch's casts and enumerated grids."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from reference import ML_DTYPES, enumerate_grid, ml_dtypes_grid, probe_values, round_to_grid

from altgrad_cli import compute_scale, encode, get_format, quantize
from altgrad_cli.numerics.rounding import (
    INVALID_CODE,
    decode,
    divide_as,
    encode_scaled,
    encode_scaled_bits,
    overflow_count,
    overflow_mask,
    overflows,
)
from altgrad_cli.numerics.scaling import Scale, parse_scaling

ML_NAMES = [n for n, d in ML_DTYPES.items() if d is not None]
CUSTOM = [
    "E0M7",
    "E1M6",
    "E2M5",
    "E6M1",
    "E7M0",
    "e3m3:fnuz",
    "e4m3:fn:bias=9",
    "e2m2:ieee",
    "e5m5:bias=12",
    "e0m3",
]


def _bits(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).view(np.int32)


@pytest.fixture(scope="module", params=ML_NAMES)
def ml_case(request):
    name = request.param
    dtype = ML_DTYPES[name]
    grid = ml_dtypes_grid(dtype)
    x = probe_values(grid)
    fmt = get_format(name)
    ref_values = np.clip(x, -fmt.max, fmt.max).astype(dtype).astype(np.float32)
    ref_codes = np.sign(ref_values).astype(np.int64) * np.searchsorted(
        grid, np.abs(ref_values).astype(np.float64)
    )
    return fmt, x, ref_values, ref_codes


def test_quantize_bit_exact_against_ml_dtypes(ml_case):
    fmt, x, ref_values, _ = ml_case
    q = quantize(torch.from_numpy(x), fmt).numpy()
    mismatch = np.nonzero(_bits(q) != _bits(ref_values))[0]
    assert mismatch.size == 0, (
        f"{fmt.name}: {x[mismatch[:5]]} -> {q[mismatch[:5]]}, want {ref_values[mismatch[:5]]}"
    )


def test_codes_against_ml_dtypes(ml_case):
    fmt, x, _, ref_codes = ml_case
    codes = encode(torch.from_numpy(x), fmt).numpy()
    np.testing.assert_array_equal(codes, ref_codes)


def test_bit_path_agrees_on_native_formats(ml_case):
    """The integer bit path must be exact on its own, not only where torch's cast takes over."""
    fmt, x, _, ref_codes = ml_case
    codes = encode_scaled_bits(torch.from_numpy(x), fmt).numpy()
    np.testing.assert_array_equal(codes, ref_codes)


@pytest.mark.parametrize(
    ("name", "dtype"), [("e4m3fn", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)]
)
def test_against_torch_float8_casts(name, dtype):
    fmt = get_format(name)
    x = torch.from_numpy(probe_values(ml_dtypes_grid(ML_DTYPES[name]), n_random=1 << 18, seed=3))
    ref = x.clamp(-fmt.max, fmt.max).to(dtype).float()
    q = quantize(x, fmt)
    assert torch.equal(q.view(torch.int32), ref.view(torch.int32))


@pytest.mark.parametrize("name", CUSTOM)
def test_custom_formats_against_enumerated_grid(name):
    fmt = get_format(name)
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    x = probe_values(grid, n_random=1 << 20, seed=1)
    ref_values, ref_codes = round_to_grid(x.astype(np.float64), grid)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(encode(xt, fmt).numpy(), ref_codes)
    q = quantize(xt, fmt).numpy()
    assert np.array_equal(q.astype(np.float64), ref_values)


@pytest.mark.parametrize("name", ["e4m3fn", "e3m4", "E0M7", "bf16", "E6M1"])
def test_float64_inputs_round_in_float64(name):
    """Values a hair above a midpoint must round up; float32 would see an exact tie."""
    fmt = get_format(name)
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    mids = (grid[:-1] + grid[1:]) / 2
    x = np.concatenate([mids * (1 + 2.0**-40), mids * (1 - 2.0**-40), mids, grid])
    x = np.concatenate([x, -x])
    ref_values, ref_codes = round_to_grid(x, grid)
    xt = torch.from_numpy(x)
    np.testing.assert_array_equal(encode(xt, fmt).numpy(), ref_codes)
    q = quantize(xt, fmt)
    assert q.dtype == torch.float64
    np.testing.assert_array_equal(q.numpy(), ref_values)
    # and the float32 route really would get these wrong: the test can tell the difference
    assert not np.array_equal(encode(xt.float(), fmt).numpy(), ref_codes)


@pytest.mark.parametrize("name", ML_NAMES + CUSTOM)
def test_code_invariants(name):
    fmt = get_format(name)
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    g = torch.from_numpy(grid.astype(np.float32))
    codes = encode(g, fmt)
    assert torch.equal(
        codes, torch.arange(len(grid), dtype=torch.int32)
    )  # consecutive values, consecutive codes
    assert torch.equal(encode(-g, fmt), -codes)
    assert encode(torch.tensor([0.0, -0.0]), fmt).tolist() == [0, 0]
    assert torch.equal(decode(codes, fmt).double(), torch.from_numpy(grid))
    assert torch.equal(decode(-codes, fmt).double(), -torch.from_numpy(grid))


def test_nonfinite_inputs():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    assert encode(x, "e4m3fn").tolist() == [INVALID_CODE, INVALID_CODE, INVALID_CODE, 56]
    q = quantize(x, "e4m3fn")
    assert torch.isnan(q[0]) and q[1] == float("inf") and q[2] == -float("inf") and q[3] == 1.0


def test_negative_zero_policy():
    tiny = torch.tensor([-1e-30])
    assert torch.signbit(quantize(tiny, "e4m3fn")).item()
    assert not torch.signbit(quantize(tiny, "e4m3fnuz")).item()


def test_quantize_does_not_touch_its_input():
    x = torch.tensor([0.3, -7.7, 1000.0])
    before = x.clone()
    quantize(x, "e4m3fn")
    encode(x, "E0M7")
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- overflow


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        # e4m3fn: max 448 (code 126, even), top step 32: 464 is a tie that rounds back to 448
        ("e4m3fn", [448.0, 463.9, 464.0, 464.1, 1e6], [False, False, False, True, True]),
        # e5m2: max 57344 (odd code), top step 8192: the tie 61440 would round up to inf
        ("e5m2", [57344.0, 61439.0, 61440.0], [False, False, True]),
        # E0M7: max 127/128, step 1/128: the tie 255/256 goes to 128/128 (even), beyond max
        ("E0M7", [127 / 128, 0.99, 255 / 256], [False, False, True]),
    ],
)
def test_overflow_threshold(name, values, expected):
    fmt = get_format(name)
    x = torch.tensor(values + [-v for v in values], dtype=torch.float32)
    assert overflow_mask(x, fmt).tolist() == expected + expected
    assert overflow_count(x, fmt) == 2 * sum(expected)


# ----------------------------------------------------------------------------- scaling


def test_parse_scaling():
    assert str(parse_scaling("block:32")) == "block:32:floor"
    assert str(parse_scaling("block:16:rceil")) == "block:16:rceil"
    for bad in ["block", "block:0", "block:32:up", "rows", "tensor:2"]:
        with pytest.raises(ValueError):
            parse_scaling(bad)


def test_tensor_and_pow2_scale():
    x = torch.tensor([[1.0, -300.0], [2.0, 5.0]])
    s = compute_scale(x, "e4m3fn", "tensor")
    assert s.values.item() == np.float32(300.0) / np.float32(448.0)
    assert compute_scale(x, "e4m3fn", "pow2").values.item() == 1.0  # 300/448 -> 2^0
    assert compute_scale(x * 2, "e4m3fn", "pow2").values.item() == 2.0
    assert (
        compute_scale(torch.tensor([448.0]), "e4m3fn", "pow2").values.item() == 1.0
    )  # exact power stays
    assert compute_scale(x, "e4m3fn", "none").values.item() == 1.0


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan")])
def test_zero_or_nonfinite_amax_gives_unit_scale(bad):
    x = torch.tensor([bad, 0.0])
    for mode in ["tensor", "pow2", "channel", "block:2", "block:2:rceil", "block:2:even"]:
        assert torch.all(compute_scale(x, "e4m3fn", mode).values == 1.0), mode


def test_channel_scale():
    x = torch.tensor([[1.0, -448.0], [0.5, 0.25], [0.0, 0.0]])
    s = compute_scale(x, "e4m3fn", "channel")
    assert s.values.tolist() == [1.0, np.float32(0.5) / np.float32(448.0), 1.0]
    q = quantize(x, "e4m3fn", s)
    assert q[0].tolist() == [1.0, -448.0]
    assert q[1].tolist() == [0.5, 0.25]


@pytest.mark.parametrize(
    ("rule", "amax", "expected"),
    [
        # E4M3: max 448 = 1.75 * 2^8, emax 8.
        ("floor", 150.0, 2.0**-1),  # 2^(7 - 8)
        ("rceil", 150.0, 2.0**-1),  # 150/448 = 0.33 -> 2^-1
        ("floor", 500.0, 1.0),  # 2^(8 - 8): 500 is then clipped to 448
        ("rceil", 500.0, 2.0),  # 500/448 = 1.12 -> 2^1: nothing clipped
        ("ceil", 500.0, 2.0),  # 2^(9 - 8)
        ("ceil", 256.0, 1.0),  # exact power: ceil(log2 256) = 8
        ("rceil", 448.0, 1.0),
        ("floor", 511.0, 1.0),
        ("even", 511.0, 2.0),  # 511 rounds to 512 with 3 mantissa bits: exponent 9
        ("even", 479.0, 1.0),  # 479 rounds to 480 = 1.875 * 2^8
        ("floor", 2.0**-140, 2.0**-127),  # E8M0's smallest scale
        ("floor", 3e38, 2.0**119),
    ],
)
def test_block_rules_by_hand(rule, amax, expected):
    x = torch.tensor([[amax / 4, -amax, 0.0, amax / 2]], dtype=torch.float32)
    s = compute_scale(x, "e4m3fn", f"block:4:{rule}")
    assert s.values.tolist() == [[expected]]


def test_block_layout_partial_blocks_zero_blocks_and_1d():
    x = torch.tensor([[448.0, 1.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    s = compute_scale(x, "e4m3fn", "block:2")
    # blocks [448, 1], [0, 0] (zero -> 1), [3] (a last partial block): floor rule
    assert s.values.tolist() == [[1.0, 1.0, 2.0**-7], [1.0, 1.0, 1.0]]
    assert s.broadcast().shape == x.shape
    assert s.broadcast()[0].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0**-7]
    one_d = compute_scale(torch.tensor([1.0, 2.0, 1000.0]), "e4m3fn", "block:2")
    # one row: blocks [1, 2] -> 2^(1 - 8) and the partial [1000] -> 2^(9 - 8); 1000/2 clips to 448
    assert one_d.values.tolist() == [[2.0**-7, 2.0]]
    assert quantize(torch.tensor([1.0, 2.0, 1000.0]), "e4m3fn", one_d).tolist() == [1.0, 2.0, 896.0]


def test_scale_from_one_tensor_applies_to_another():
    before = torch.tensor([1.0, 2.0, 100.0])
    after = torch.tensor([1.0, 2.0, 300.0])
    s = compute_scale(before, "e4m3fn", "tensor")
    q_after = quantize(after, "e4m3fn", s)
    assert q_after[2].item() == pytest.approx(
        float(s.values) * 448.0
    )  # saturated under BEFORE's scale
    own = compute_scale(after, "e4m3fn", "tensor")
    assert quantize(after, "e4m3fn", own)[2].item() == pytest.approx(300.0, rel=1e-6)


def test_for_chunk_matches_broadcast():
    x = torch.randn(3, 10)
    for mode in ["channel", "block:4", "tensor"]:
        s = compute_scale(x, "e4m3fn", mode)
        rows, cols = s.view_shape()
        full = s.broadcast().expand(x.shape).reshape(rows, cols)
        for r0, r1, c0, c1 in (
            [(0, rows, 0, cols), (1, 2, 0, cols), (0, rows, 4, 8)]
            if mode != "tensor"
            else [(0, 1, 3, 17)]
        ):
            part = s.for_chunk(r0, r1, c0, c1).expand(r1 - r0, c1 - c0)
            assert torch.equal(part, full[r0:r1, c0:c1])


def test_scaled_rounding_is_true_division():
    x = torch.randn(10000) * 37
    s = compute_scale(x, "e3m4", "tensor")
    ref_values, ref_codes = round_to_grid(
        (x / s.values).double().numpy(), enumerate_grid(3, 4, 3, "ieee")
    )
    np.testing.assert_array_equal(encode(x, "e3m4", s).numpy(), ref_codes)
    assert isinstance(s, Scale)


def test_encode_scaled_dtype_is_narrow_for_native_formats():
    y = torch.tensor([1.0, -2.0])
    assert encode_scaled(y, get_format("e4m3fn")).dtype == torch.int8
    assert encode_scaled(y, get_format("bf16")).dtype == torch.int16
    assert encode_scaled(y, get_format("e3m4")).dtype == torch.int32


def test_ml_dtypes_is_present():
    assert ml_dtypes.float8_e4m3fn is not None


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e3m4", "E0M7", "e2m1fn", "bf16", "fp16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scalar_overflow_agrees_with_the_mask_and_the_count(name, dtype):
    """The scalar check and the mask compare bit patterns; the count compares |y| with a float
    bound."""
    fmt = get_format(name)
    top = torch.tensor(fmt.max, dtype=torch.float64)
    probes = torch.cat([top * torch.linspace(0.9, 1.5, 601, dtype=torch.float64), top.reshape(1)])
    probes = torch.cat([probes, torch.nextafter(probes, probes * 2), torch.tensor([math.inf])])
    probes = torch.cat([probes, -probes, torch.zeros(3)]).to(dtype)
    mask = overflow_mask(probes, fmt).tolist()
    assert [overflows(float(v), fmt, dtype) for v in probes] == mask
    assert any(mask) and not all(mask)
    assert overflow_count(probes, fmt) == sum(mask)


def test_overflow_count_beyond_an_exact_float32_sum():
    """Past 2^24 elements a float32 sum of ones would stop counting: the mask's count is used."""
    fmt = get_format("e4m3fn")
    y = torch.full((2**24 + 3,), 500.0)
    assert float(torch.ones_like(y).sum()) != y.numel()  # what the fallback is there for
    assert overflow_count(y, fmt) == y.numel()
    y[::2] = 1.0
    assert overflow_count(y, fmt) == (2**24 + 3) // 2


def test_scalar_division_rounds_like_float32_division():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(20000, generator=gen) * 10.0 ** torch.randint(-30, 30, (20000,), generator=gen)
    b = torch.rand(20000, generator=gen) * 10.0 ** torch.randint(-30, 30, (20000,), generator=gen)
    want = (a / b).tolist()
    assert [divide_as(float(x), float(y), torch.float32) for x, y in zip(a, b, strict=True)] == want
    assert divide_as(3e38, 1e-3, torch.float32) == float("inf")
