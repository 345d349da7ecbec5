"""The `blocks` record and several recipes in one run: against whole-tensor numpy references
written here, invariant under chunk size and thread count, merged exactly into summaries."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli import analyze, get_format, tensor_metrics
from altgrad_cli.cli.app import app
from altgrad_cli.numerics.scaling import coarser_amax, group_amax, parse_scaling

F32 = np.float32


def _floor_scales(x: np.ndarray, fmt: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(amax, OCP floor scale) per n-block of each row, by frexp: 2^(floor(log2 amax) - emax)."""
    rows, cols = x.shape
    nb = -(-cols // n)
    padded = np.zeros((rows, nb * n), x.dtype)
    padded[:, :cols] = np.abs(x)
    amax = padded.reshape(rows, nb, n).max(axis=2).reshape(-1)
    emax = int(np.floor(np.log2(float(ml_dtypes.finfo(_ML[fmt]).max))))
    _, e = np.frexp(amax.astype(np.float64))
    s = np.where(amax > 0, np.ldexp(1.0, np.clip(e - 1 - emax, -127, 127)), 1.0)
    return amax, s


_ML = {"e2m1fn": ml_dtypes.float4_e2m1fn, "e4m3fn": ml_dtypes.float8_e4m3fn}


def _clipped(ratio: np.ndarray, fmt: str) -> np.ndarray:
    """amax/s beyond max + half the top step; at the tie, clipped iff max's code is odd."""
    grid = np.unique(np.abs(np.arange(256, dtype=np.uint8).view(_ML[fmt]).astype(np.float64)))
    grid = grid[np.isfinite(grid)]
    top, below = grid[-1], grid[-2]
    threshold = top + (top - below) / 2
    top_code_odd = (len(grid) - 1) % 2 == 1
    return (ratio > threshold) | ((ratio == threshold) & top_code_odd)


def _reference_blocks(x: np.ndarray, fmt: str, n: int) -> dict:
    amax, s = _floor_scales(x, fmt, n)
    finite = np.isfinite(amax)
    clipped = _clipped(np.where(finite, amax / s, 0.0), fmt) & finite
    per_element = np.repeat(s.reshape(x.shape[0], -1), n, axis=1)[:, : x.shape[1]]
    y = (x / per_element).astype(F32)
    fmax = float(ml_dtypes.finfo(_ML[fmt]).max)
    q = np.clip(y, -fmax, fmax).astype(_ML[fmt]).astype(F32)
    nonzero = (x != 0) & np.isfinite(x)
    log2 = np.log2(s)
    hist = {}
    for k in np.floor(log2).astype(int):
        hist[str(k)] = hist.get(str(k), 0) + 1
    return {
        "count": s.size,
        "min": float(s.min()),
        "max": float(s.max()),
        "log2_histogram": dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        "log2_std": float(np.std(log2, ddof=1)),
        "clipped_frac": float(clipped.sum() / s.size),
        "deadzone_frac": float(((q == 0) & nonzero).sum() / nonzero.sum()),
        "scale_changed_frac": 0.0,
    }


def _gaussian(shape, seed, std=0.02):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * std


def test_blocks_match_whole_tensor_reference():
    before = _gaussian((64, 200), 1)  # 200 = 6 whole blocks of 32 and a partial one of 8
    before[3, :32] = 0.0  # a zero block: s = 1
    after = before + _gaussian((64, 200), 2, 1e-4)
    records, _ = tensor_metrics(before, after, None, ["mxfp4", "mxfp8"])
    for name, fmt in (("e2m1fn@block:32:floor", "e2m1fn"), ("e4m3fn@block:32:floor", "e4m3fn")):
        got, want = records[name]["blocks"], _reference_blocks(before.numpy(), fmt, 32)
        assert got["log2_std"] == pytest.approx(want.pop("log2_std"), rel=1e-12)
        got.pop("log2_std")
        assert got == want, name
    assert records["e2m1fn@block:32:floor"]["blocks"]["clipped_frac"] > 0.1  # Gaussian blocks


def test_blocks_nan_group_never_clips_and_rescale_counts_changed_scales():
    before = torch.tensor([[7.5, 1.0, float("nan"), 100.0, 1.0, 1.0]])
    after = torch.tensor([[7.5, 1.0, float("nan"), 100.0, 3.0, 1.0]])  # last block: 1 -> 3
    records, _ = tensor_metrics(before, after, None, ["e2m1fn@block:2"])
    blocks = records["e2m1fn@block:2:floor"]["blocks"]
    assert blocks["clipped_frac"] == pytest.approx(1 / 3)  # 7.5 clips; the NaN block does not
    assert blocks["scale_changed_frac"] == 0.0
    own, _ = tensor_metrics(before, after, None, ["e2m1fn@block:2"], rescale=True)
    assert own["e2m1fn@block:2:floor"]["blocks"]["scale_changed_frac"] == pytest.approx(1 / 3)


def test_single_scale_records_have_no_blocks_and_say_their_scale():
    x = torch.tensor([1.0, -3.0])
    records, scales = tensor_metrics(x, x, None, ["e4m3fn", "bf16", "fp8_rowwise", "nvfp4"])
    assert records["e4m3fn"]["blocks"] is None and records["bf16"]["blocks"] is None
    assert scales["bf16"] == {"mode": "none", "value": 1.0}  # bf16's default is unscaled
    assert scales["e4m3fn"] == {"mode": "tensor", "value": float(F32(3.0) / F32(448.0))}
    assert records["e4m3fn@channel"]["blocks"]["count"] == 2  # one channel per element
    assert scales["e2m1fn@nvfp4"] == {"mode": "nvfp4", "tensor_scale": float(F32(3) / F32(2688))}


def test_f64_channel_on_grid_is_exact():
    g = torch.Generator().manual_seed(3)
    before = (torch.randn(6, 64, generator=g, dtype=torch.float64) * 0.1).contiguous()
    records, _ = tensor_metrics(before, before, None, ["e4m3fn@channel"])
    s = before.abs().amax(dim=1) / 448.0  # float64 channel scales
    q = (before / s[:, None]).clip(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    on_grid = sum(
        Fraction(b) == Fraction(sv) * Fraction(qv)  # exact rational comparison
        for row, sv, qrow in zip(before.tolist(), s.tolist(), q.tolist(), strict=True)
        for b, qv in zip(row, qrow, strict=True)
    )
    got = records["e4m3fn@channel"]["grid_alignment"]["on_grid_frac"]
    assert got == on_grid / before.numel()
    assert got < 0.2  # the bug counted s·R(y) rounded in float64 as on the grid


# ----------------------------------------------------------------------------- CLI, invariance

RECIPES = ["mxfp8", "nvfp4", "e4m3fn@block:3x5:rceil", "fp8_blockwise", "fp8_rowwise", "e4m3fn"]


@pytest.fixture
def checkpoint(tmp_path):
    before = {
        "w": _gaussian((40, 37), 4),  # 37 columns: no block size divides it
        "b": _gaussian((37,), 5),
        "t": _gaussian((3, 7, 11), 6, 0.5),
    }
    grads = {k: _gaussian(v.shape, 10 + i, 1e-3) for i, (k, v) in enumerate(before.items())}
    after = {k: v - 3e-4 * torch.sign(grads[k]) for k, v in before.items()}
    paths = []
    for label, tensors in (("before", before), ("after", after), ("grads", grads)):
        path = tmp_path / f"{label}.safetensors"
        save_file(tensors, str(path))
        paths.append(str(path))
    return paths


def _run(*args):
    result = CliRunner().invoke(app, ["analyze", *map(str, args)], env={"COLUMNS": "200"})
    return result


def test_threads_and_chunk_size_give_identical_blocks(checkpoint):
    before, after, grads = checkpoint
    fmts = [a for r in RECIPES for a in ("-f", r)]
    outputs = {}
    for chunk, threads in ((1 << 18, 1), (1 << 18, 2), (13, 1), (13, 2), (100, 2)):
        args = (before, after, "-g", grads, *fmts, "-o", "json", "-q", "--rescale")
        result = _run(*args, "--chunk-size", chunk, "--threads", threads)
        assert result.exit_code == 0, result.output
        outputs[chunk, threads] = result.stdout
    assert outputs[1 << 18, 1] == outputs[1 << 18, 2]  # byte-identical across threads
    assert outputs[13, 1] == outputs[13, 2]
    reports = [json.loads(text) for text in outputs.values()]
    first = reports[0]
    assert [s["format"] for s in first["summary"]] == [
        "e4m3fn@block:32:floor",
        "e2m1fn@nvfp4",
        "e4m3fn@block:3x5:rceil",
        "e4m3fn@block:128x128:fp32",
        "e4m3fn@channel",
        "e4m3fn",
    ]
    for other in reports[1:]:  # chunking changes no count and no block statistic
        pairs = zip(
            first["layers"] + first["summary"], other["layers"] + other["summary"], strict=True
        )
        for a, b in pairs:
            assert a["blocks"] == b["blocks"]
            for key in ("flips", "updates", "flips_on_updates", "grid_steps"):
                assert a[key] == b[key], key


def test_summary_blocks_merge_exactly(checkpoint):
    before, after, grads = checkpoint
    report = analyze(before, after, grads=grads, formats=["mxfp4"]).to_dict()
    layers = report["layers"]
    merged = report["summary"][0]["blocks"]
    assert merged["count"] == sum(r["blocks"]["count"] for r in layers)
    assert merged["min"] == min(r["blocks"]["min"] for r in layers)
    hist: dict[str, int] = {}
    for r in layers:
        for k, v in r["blocks"]["log2_histogram"].items():
            hist[k] = hist.get(k, 0) + v
    assert merged["log2_histogram"] == dict(sorted(hist.items(), key=lambda kv: int(kv[0])))
    clipped = sum(r["blocks"]["clipped_frac"] * r["blocks"]["count"] for r in layers)
    assert merged["clipped_frac"] * merged["count"] == pytest.approx(clipped, abs=1e-9)
    # log2_std of the union against numpy over every tensor's scales
    from safetensors.torch import load_file

    logs = []
    for x in load_file(before).values():
        view = x.reshape(-1, x.shape[-1]).numpy()
        logs.append(np.log2(_floor_scales(view, "e2m1fn", 32)[1]))
    assert merged["log2_std"] == pytest.approx(np.std(np.concatenate(logs), ddof=1), rel=1e-12)


def test_unknown_recipe_exits_2_with_close_matches(checkpoint):
    before, after, _ = checkpoint
    result = _run(before, after, "-f", "mxfp9")
    assert result.exit_code == 2
    assert "mxfp8" in result.output and "Traceback" not in result.output


def test_duplicate_recipes_run_once(checkpoint):
    before, after, _ = checkpoint
    result = _run(before, after, "-f", "mxfp8", "-f", "e4m3fn@block:32", "-o", "json", "-q")
    report = json.loads(result.stdout)
    assert [s["format"] for s in report["summary"]] == ["e4m3fn@block:32:floor"]
    assert report["schema"] == "altgrad.report/2"
    assert get_format("e4m3fn").name in [f["name"] for f in report["formats"]]


def test_fail_if_on_blocks_skips_single_scale_records(checkpoint):
    before, after, _ = checkpoint
    args = (before, after, "-f", "mxfp4", "-f", "e4m3fn", "-q", "-o", "json")
    result = _run(*args, "--fail-if", "summary.blocks.clipped_frac>=0")
    assert result.exit_code == 1, result.output  # mxfp4's summary trips the rule
    report = json.loads(result.stdout)
    statuses = {r["format"]: r["status"] for r in report["checks"]["results"]}
    assert statuses == {"e2m1fn@block:32:floor": "fail", "e4m3fn": "skip"}


@pytest.mark.parametrize(
    ("shape", "fine", "coarse"),
    [
        ((64, 256), 16, "block:32"),
        ((300, 520), 16, "block:128x128"),  # partial tiles at both edges
        ((5, 7), 1, "block:2x3"),
        ((3, 10, 14), 2, "block:4x6:rceil"),  # leading dims: tiles never cross a matrix
        ((37,), 4, "block:12"),  # a 1-D tensor is one row; a partial last block
        ((0, 32), 16, "block:32"),
        ((4, 0), 16, "block:32"),
    ],
)
def test_coarser_amax_equals_a_pass_over_the_elements(shape, fine, coarse):
    """Wider blocks and tiles are unions of narrower blocks: their amax from the narrower amax
    is the direct pass's, bit for bit, inf included, NaN where it has NaN (so recipes share one
    pass)."""
    g = torch.Generator().manual_seed(len(shape) + fine)
    numel = math.prod(shape)
    x = torch.randn(shape, generator=g) * torch.logspace(-8, 8, numel).reshape(shape)
    if x.numel() > 20:
        x.view(-1)[7] = float("nan")
        x.view(-1)[-3] = float("-inf")
    direct = group_amax(x, coarse)
    derived = coarser_amax(group_amax(x, f"block:{fine}"), fine, parse_scaling(coarse), shape)
    assert derived.shape == direct.shape and derived.dtype == direct.dtype
    nan = torch.isnan(direct)
    assert torch.equal(torch.isnan(derived), nan)  # a NaN's payload is not a number to keep
    assert torch.equal(derived[~nan].view(torch.int32), direct[~nan].view(torch.int32))
