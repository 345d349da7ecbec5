"""Every metric against a plain whole-tensor reference written from the SPEC (numpy + ml_dtypes),
and chunked results against the merge of their chunks."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import enumerate_grid, round_to_grid

from altgrad_cli import compute_scale, get_format, get_recipe, tensor_metrics
from altgrad_cli.engine.kernel import ulp_distances
from altgrad_cli.engine.stats import CoMoments, Moments, UlpHistogram

SCALINGS = [
    "none",
    "tensor",
    "pow2",
    "channel",
    "block:4",
    "block:3:rceil",
    "block:5:ceil",
    "block:4:even",
]
FORMATS = ["e4m3fn", "e5m2", "e3m4", "E0M7", "e2m1fn", "bf16"]


def _ref_codes(x: np.ndarray, fmt) -> tuple[np.ndarray, np.ndarray]:
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    return round_to_grid(x.astype(np.float64), grid)


def _overflows(y: np.ndarray, fmt) -> np.ndarray:
    """SPEC: |y| beyond max + half the top binade's step, the tie by the even-code rule (the
    tie leaves max when max's code is odd)."""
    grid = enumerate_grid(fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials)
    top, below = float(grid[-1]), float(grid[-2])
    threshold = top + (top - below) / 2
    magnitude = np.abs(y.astype(np.float64))
    tie_leaves = (grid.size - 1) % 2 == 1
    return (magnitude > threshold) | ((magnitude == threshold) & tie_leaves)


def _ordinals_f32(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)


def reference_record(before, after, grad, fmt_name, scaling):
    """SPEC §Metrics, one formula at a time, on whole float32 tensors."""
    with np.errstate(all="ignore"):  # b / s may overflow for tiny channel scales, as float32 does
        return _reference_record(before, after, grad, fmt_name, scaling)


def _reference_record(before, after, grad, fmt_name, scaling):
    fmt = get_format(fmt_name)
    s = compute_scale(torch.from_numpy(before), fmt, scaling).broadcast().numpy()
    s = np.broadcast_to(s, before.shape).astype(np.float32).reshape(-1)
    b, a, g = before.reshape(-1), after.reshape(-1), grad.reshape(-1)
    finite = np.isfinite(b) & np.isfinite(a) & np.isfinite(g)
    b, a, g, s = b[finite], a[finite], g[finite], s[finite]
    yb = (b / s).astype(np.float32)
    ya = (a / s).astype(np.float32)
    qb, cb = _ref_codes(yb, fmt)
    _, ca = _ref_codes(ya, fmt)
    updated = np.abs(g) > 1e-10
    flipped = cb != ca
    k = np.abs(ca - cb)
    nz = b != 0
    # the quantization in float32 as the SPEC says; S = s * 2^k and its ratios in float64,
    # where that product is exact and cannot underflow
    s64 = s.astype(np.float64)
    if fmt.exponent_bits == 0:
        stiff = s64[nz] * 2.0**-fmt.mantissa_bits
    else:
        e = np.floor(np.log2(np.abs(yb[nz]).astype(np.float64)))
        stiff = s64[nz] * 2.0 ** (np.clip(e, fmt.emin, fmt.emax) - fmt.mantissa_bits)
    err = np.abs(np.abs(b).astype(np.float64) - np.abs(s64 * qb))  # exact in float64
    ord_a, ord_b = _ordinals_f32(a), _ordinals_f32(b)
    d = np.abs(ord_a - ord_b)
    crossed = ((ord_a < 0) & (ord_b > 0)) | ((ord_a > 0) & (ord_b < 0))
    ratio = np.abs(a.astype(np.float64) - b)[nz] / stiff  # |Δ| exact, as the SPEC's real arithmetic
    grad_ratio = np.abs(g[nz]).astype(np.float64) / stiff
    err_rel = err[nz] / stiff
    big = ratio >= 0.5
    numel = before.size
    n_upd = updated.sum()
    return {
        "numel": numel,
        "nonfinite": int((~finite).sum()),
        "updates": int(n_upd),
        "flips": int(flipped.sum()),
        "flips_on_updates": int((flipped & updated).sum()),
        "stall_ratio": (1 - (flipped & updated).sum() / n_upd) if n_upd else 0.0,
        "grid_steps.mean": k.mean() if k.size else 0.0,
        "grid_steps.max": int(k.max()) if k.size else 0,
        "grid_steps.16+": int((k >= 16).sum()),
        "grid_steps.4-7": int(((k >= 4) & (k < 8)).sum()),
        "ulp.mean": d.mean() if d.size else 0.0,
        "ulp.median": int(np.sort(d)[(d.size + 1) // 2 - 1]) if d.size else 0,
        "ulp.max": int(d.max()) if d.size else 0,
        "ulp.zero_frac": (d == 0).mean() if d.size else 0.0,
        "ulp.sign_changes": int(crossed.sum()),
        "ulp.mean_same_sign": d[~crossed].mean() if (~crossed).any() else None,
        "stiffness.mean": stiff.mean() if stiff.size else None,
        "stiffness.zero": int((~nz).sum()),
        "grid_alignment.mean": err.mean() if err.size else 0.0,
        "grid_alignment.std": err.std(ddof=1) if err.size > 1 else 0.0,
        "grid_alignment.on_grid_frac": (err == 0).mean() if err.size else 0.0,
        "grid_alignment.rel_mean": err_rel.mean() if stiff.size else None,
        "grad_stiffness.ratio_mean": grad_ratio.mean() if stiff.size else None,
        "grad_stiffness.below_frac": (np.abs(g[nz]) < stiff).mean() if stiff.size else 0.0,
        "update_stiffness.ratio_mean": ratio.mean() if ratio.size else None,
        "update_stiffness.below_half_frac": (~big).mean() if ratio.size else 0.0,
        "update_stiffness.flip_flipped": int((big & flipped[nz]).sum()),
        "update_stiffness.stall_stalled": int((~big & ~flipped[nz]).sum()),
        "underflow_frac": ((b != 0) & (cb == 0)).sum() / numel,
        "overflow_frac": _overflows(yb, fmt).sum() / numel,
    }, (stiff, np.abs(g[nz]).astype(np.float64))


_PATHS = {
    "grid_steps.16+": ("grid_steps", "histogram", "16+"),
    "grid_steps.4-7": ("grid_steps", "histogram", "4-7"),
    "stiffness.zero": ("stiffness", "histogram", "zero"),
    "update_stiffness.flip_flipped": (
        "update_stiffness",
        "predicted_vs_actual",
        "predicted_flip",
        "flipped",
    ),
    "update_stiffness.stall_stalled": (
        "update_stiffness",
        "predicted_vs_actual",
        "predicted_stall",
        "not_flipped",
    ),
}


def _get(record, key):
    value = record
    for part in _PATHS.get(key, tuple(key.split("."))):
        if part == "zero" and part not in value:
            return 0
        value = value[part]
    return value


def _workload(seed: int, shape=(24, 37), clean: bool = False):
    """Weights, updates and grads; unless `clean`, with zeros, NaN, inf and a deep underflow,
    which send every chunk down the general path (clean chunks take the fast paths)."""
    rng = np.random.default_rng(seed)
    before = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    grad = (rng.standard_normal(shape) * 1e-3).astype(np.float32)
    grad[rng.random(shape) < 0.3] = 0
    after = (before - 3e-3 * np.sign(grad) * rng.uniform(0.5, 1, shape)).astype(np.float32)
    if clean:
        return before, after, grad
    before.flat[::17] = 0.0
    before.flat[5] = np.nan
    after.flat[9] = np.inf
    before.flat[11] = 1e-9  # deep underflow
    return before, after, grad


@pytest.mark.parametrize("cols", [37, 36], ids=["cut-blocks", "whole-blocks"])
@pytest.mark.parametrize("clean", [False, True], ids=["special", "clean"])
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("fmt_name", FORMATS)
def test_metrics_match_whole_tensor_reference(fmt_name, scaling, clean, cols):
    """36 columns hold whole blocks of 3 and 4 (chunks keep their blocks' scales grouped), 37
    cut the last block of every row (chunks get one scale per element)."""
    before, after, grad = _workload(
        sum(map(ord, fmt_name + scaling)) + cols, shape=(24, cols), clean=clean
    )
    fmt = get_format(fmt_name)
    records, _ = tensor_metrics(
        torch.from_numpy(before),
        torch.from_numpy(after),
        torch.from_numpy(grad),
        [fmt],
        scaling,
        chunk=100,
    )
    record = records[get_recipe(fmt, scaling).name]
    ref, (stiff, absg) = reference_record(before, after, grad, fmt_name, scaling)
    for key, want in ref.items():
        got = _get(record, key)
        if want is None:  # not defined: no element defines it
            assert got is None, key
        elif key == "ulp.median" and want > 64:  # SPEC: exact up to 64, within 1 % above
            assert abs(got - want) <= 0.01 * want, key
        elif isinstance(want, (int, np.integer)) and not isinstance(want, bool):
            assert got == want, key
        else:
            assert got == pytest.approx(float(want), rel=1e-9, abs=1e-12), key
    if np.std(stiff) > 0:
        corr = np.corrcoef(stiff, absg)[0, 1]
        assert record["grad_stiffness"]["correlation"] == pytest.approx(corr, rel=1e-7, abs=1e-9)
    else:
        assert record["grad_stiffness"]["correlation"] == 0.0
    assert record["stiffness"]["max"] == pytest.approx(stiff.max(), rel=1e-12)
    if stiff.size:
        assert record["stiffness"]["min"] == pytest.approx(stiff.min(), rel=1e-12)
    # the histogram per floor(log2 S), and the zero weights on their own
    levels, counts = np.unique(np.floor(np.log2(stiff)).astype(int), return_counts=True)
    want_hist = {str(k): int(c) for k, c in zip(levels, counts, strict=True)}
    if ref["stiffness.zero"]:
        want_hist["zero"] = ref["stiffness.zero"]
    assert record["stiffness"]["histogram"] == want_hist
    assert record["flips_on_updates"] + record["flips_without_update"] == record["flips"]
    assert 0.0 <= record["stall_ratio"] <= 1.0


def test_bf16_storage_ulps_count_bf16_values():
    before = torch.tensor([1.0, 1.0, -1.0, 0.0], dtype=torch.bfloat16)
    after = torch.tensor(
        [1.0078125, 1.0234375, -1.0, 2.0**-133], dtype=torch.bfloat16
    )  # +1, +3 ULPs, +1
    records, _ = tensor_metrics(before, after, None, [get_format("e4m3fn")], "none")
    ulp = records["e4m3fn@none"]["ulp"]
    assert ulp["max"] == 3 and ulp["zero_frac"] == 0.25 and ulp["mean"] == pytest.approx(5 / 4)
    assert (
        records["e4m3fn@none"]["update_source"] == "delta"
        and records["e4m3fn@none"]["updates"] == 3
    )


def test_f8_storage_and_float64():
    b8 = torch.tensor([1.0, 2.0, -4.0]).to(torch.float8_e4m3fn)
    a8 = torch.tensor([1.125, 2.0, -3.75]).to(torch.float8_e4m3fn)  # one e4m3fn step each
    r, _ = tensor_metrics(b8, a8, None, [get_format("e4m3fn")], "none")
    assert r["e4m3fn@none"]["flips"] == 2 and r["e4m3fn@none"]["ulp"]["max"] == 1
    b64 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    r, _ = tensor_metrics(
        b64, b64 * (1 + 2.0**-52), None, [get_format("e4m3fn")], "none"
    )  # one ULP each
    assert r["e4m3fn@none"]["ulp"]["median"] == 1 and r["e4m3fn@none"]["flips"] == 0
    far = torch.tensor([3.0, -3.0, 1.0], dtype=torch.float64)  # ±3 are over 2^63 apart
    r, _ = tensor_metrics(far, -far, None, [get_format("e4m3fn")], "none")
    ulp = r["e4m3fn@none"]["ulp"]
    want = (2 * (2**63 - 1) + 2 * 0x3FF0000000000000) / 3  # two saturated, and 1 -> -1
    assert ulp["max"] == 2**63 - 1 and ulp["mean"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_inputs_are_left_untouched(dtype):
    b = (torch.randn(40, 30) * 0.02).to(dtype)
    a, g = b - 1e-3, torch.randn(40, 30).to(dtype)
    b[0, 0] = 0.0
    copies = [t.clone() for t in (b, a, g)]
    tensor_metrics(b, a, g, [get_format("e4m3fn"), get_format("E0M7")], "channel", chunk=100)
    tensor_metrics(b, a, g, [get_format("e4m3fn")], "tensor", chunk=100)
    for t, c in zip((b, a, g), copies, strict=True):
        assert torch.equal(t, c)


_INT_OF = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.float8_e4m3fn],
)
def test_ulp_distances_match_python_integers(dtype):
    finfo = torch.finfo(dtype)
    values = [0.0, -0.0, finfo.tiny, -finfo.tiny, 1.0, -1.0, 1.5, -1.75, 3.0, -3.0]
    values += [finfo.max, -finfo.max, finfo.smallest_normal / 4, -finfo.eps]
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    before, after = x.repeat_interleave(len(x)), x.repeat(len(x))
    width = x.element_size()

    def ordinal(bits: int) -> int:
        magnitude = bits & ((1 << (8 * width - 1)) - 1)
        return -magnitude if bits < 0 else magnitude

    b_bits = before.view(_INT_OF[width]).tolist()
    a_bits = after.view(_INT_OF[width]).tolist()
    want = [
        min(abs(ordinal(p) - ordinal(q)), 2**63 - 1) for p, q in zip(a_bits, b_bits, strict=True)
    ]
    for absmax in (1.0, float(finfo.max)):  # both sides of the int32 / int64 switch
        if absmax == 1.0:
            keep = (before.double().abs() < 2) & (after.double().abs() < 2)
            got = ulp_distances(before[keep], after[keep], absmax)[0].tolist()
            assert got == [w for w, k in zip(want, keep.tolist(), strict=True) if k]
        else:
            assert ulp_distances(before, after, absmax)[0].tolist() == want


def test_empty_scalar_and_all_zero_tensors():
    fmt = get_format("e4m3fn")
    r, _ = tensor_metrics(torch.zeros(0), torch.zeros(0), None, [fmt])
    assert r["e4m3fn"]["numel"] == 0 and r["e4m3fn"]["stall_ratio"] == 0.0
    r, _ = tensor_metrics(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(1.0), [fmt], "channel")
    assert r["e4m3fn@channel"]["numel"] == 1 and r["e4m3fn@channel"]["flips"] == 1
    r, _ = tensor_metrics(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, 3), [fmt])
    assert (
        r["e4m3fn"]["stiffness"]["histogram"] == {"zero": 9}
        and r["e4m3fn"]["stiffness"]["min"] is None
    )


def _assert_records_close(x, y, path=""):
    if isinstance(x, dict):
        assert set(x) == set(y), path
        for key in x:
            _assert_records_close(x[key], y[key], f"{path}.{key}")
    elif isinstance(x, float):
        assert y == pytest.approx(x, rel=1e-9, abs=1e-15), path
    else:
        assert x == y, path


def test_one_chunk_equals_many_chunks_on_a_bigger_tensor():
    torch.manual_seed(1)
    b = torch.randn(300, 257) * 0.02
    g = torch.randn(300, 257) * 1e-3
    a = b - 1e-4 * torch.sign(g)
    fmts = [get_format(n) for n in ["e4m3fn", "E0M7", "e3m4"]]
    for scaling in ["tensor", "block:32:rceil", "channel"]:
        whole, s1 = tensor_metrics(b, a, g, fmts, scaling, chunk=1 << 30)
        chunked, s2 = tensor_metrics(b, a, g, fmts, scaling, chunk=1000)
        _assert_records_close(whole, chunked)
        assert s1 == s2


def test_scale_summary_for_blocks():
    x = torch.tensor([[448.0, 1.0, 500.0, 0.0]])
    records, scales = tensor_metrics(x, x, None, [get_format("e4m3fn")], "block:2")
    assert scales["e4m3fn@block:2:floor"] == {"mode": "block:2:floor"}
    s = records["e4m3fn@block:2:floor"]["blocks"]
    assert s["count"] == 2 and s["min"] == 1.0 and s["max"] == 1.0
    assert s["clipped_frac"] == 0.5  # 500 under scale 2^(8-8) = 1 overflows 448
    assert s["log2_histogram"] == {"0": 2}


def test_rescale_uses_after_s_own_scale():
    b = torch.tensor([1.0, 100.0])
    a = torch.tensor([2.0, 200.0])  # everything doubled: same codes under each side's own scale
    fmt = get_format("e4m3fn")
    fixed, _ = tensor_metrics(b, a, None, [fmt], "tensor")
    own, _ = tensor_metrics(b, a, None, [fmt], "tensor", rescale=True)
    # under BEFORE's scale 200 saturates onto 100's code (clipped), 2.0 moves: one flip
    assert fixed["e4m3fn"]["flips"] == 1 and fixed["e4m3fn"]["overflow_frac"] == 0.0
    assert own["e4m3fn"]["flips"] == 0


# ----------------------------------------------------------------------------- merging

special = st.sampled_from(
    [0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, 3e38, 448.0, 1e-6]
)
element = st.one_of(
    special,
    st.floats(-1e3, 1e3, width=32),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.tuples(element, element, element), min_size=1, max_size=60),
    cols=st.integers(1, 7),
    chunk=st.integers(1, 50),
    scaling=st.sampled_from(SCALINGS),
    fmt_name=st.sampled_from(FORMATS),
)
def test_metrics_equal_merge_of_chunks(data, cols, chunk, scaling, fmt_name):
    rows = len(data) // cols
    if rows == 0:
        return
    arr = np.array(data[: rows * cols], dtype=np.float32).reshape(rows, cols, 3)
    b, a, g = (torch.from_numpy(np.ascontiguousarray(arr[..., i])) for i in range(3))
    fmts = [get_format(fmt_name)]
    whole, _ = tensor_metrics(b, a, g, fmts, scaling, chunk=1 << 30)
    chunked, _ = tensor_metrics(b, a, g, fmts, scaling, chunk=chunk)
    _assert_records_close(whole, chunked)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=80),
    split=st.integers(0, 80),
    order=st.booleans(),
)
def test_moments_merge_in_any_order(values, split, order):
    t = torch.tensor(values, dtype=torch.float64)
    whole = Moments()
    whole.update(t)
    left, right = Moments(), Moments()
    left.update(t[:split])
    right.update(t[split:])
    first, second = (left, right) if order else (right, left)
    first.merge(second)
    assert first.n == whole.n and first.min == whole.min and first.max == whole.max
    assert first.mean == pytest.approx(whole.mean, rel=1e-9, abs=1e-9)
    assert first.std == pytest.approx(float(t.std()), rel=1e-7, abs=1e-7)
    co_whole, co_l, co_r = CoMoments(), CoMoments(), CoMoments()
    co_whole.update(t, t.flip(0))
    co_l.update(t[:split], t.flip(0)[:split])
    co_r.update(t[split:], t.flip(0)[split:])
    co_l.merge(co_r)
    assert co_l.correlation() == pytest.approx(co_whole.correlation(), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=200))
def test_ulp_histogram_median(values):
    h = UlpHistogram()
    h.update(torch.tensor(values, dtype=torch.int64))
    exact = sorted(values)[(len(values) + 1) // 2 - 1]
    median = h.median()
    if exact <= 64:
        assert median == exact
    else:
        assert abs(median - exact) <= 0.01 * exact
    assert h.max == max(values)


def test_reference_helpers_agree_with_ml_dtypes():
    x = np.array([0.3, 17.0, 500.0], dtype=np.float32)
    values, _ = _ref_codes(x, get_format("e4m3fn"))
    expected = np.clip(x, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
    np.testing.assert_array_equal(values, expected)
    assert math.isfinite(values.sum())
