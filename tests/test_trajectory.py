"""`altgrad trajectory` and `altgrad_cli.trajectory`: hand-built sequences, a whole-tensor numpy
reference for every key, chunk/thread invariance, the CLI's outputs, rules and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ml_dtypes
import numpy as np
import pytest
import torch
from reference import ML_DTYPES, ml_dtypes_grid
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli import trajectory
from altgrad_cli.cli.app import app
from altgrad_cli.errors import InputError, UsageError
from altgrad_cli.report.render.trajectory import sparkline
from altgrad_cli.report.trajectory import METRIC_KEYS, TrajectoryLayer, trajectory_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = trajectory_schema()


def write_series(folder: Path, steps: list[dict[str, torch.Tensor]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, tensors in enumerate(steps):
        path = folder / f"step_{t}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        paths.append(path)
    return paths


def run(*args: object):
    return CliRunner().invoke(app, ["trajectory", *map(str, args)], env={"COLUMNS": "80"})


def _layer(report, name: str, fmt: str):
    # records carry the recipe's canonical name: the format, with "@SCALING" unless its default
    (layer,) = [r for r in report.layers if r.name == name and r.format.split("@")[0] == fmt]
    return layer.metrics


# ----------------------------------------------------------------------------- hand-built sequences

# bf16 without scaling: 1, 2 and 3 are grid values with codes 0x3F80, 0x4000 and 0x4040, so the
# code distances are 1 → 2: 128 and 2 → 3: 64 grid steps.
ONE, TWO, THREE = 1.0, 2.0, 3.0


def _bf16(tmp_path, columns: list[list[float]]):
    """One tensor `w` whose element i takes the values columns[i] over the checkpoints."""
    values = torch.tensor(columns, dtype=torch.float32).T  # (checkpoints, elements)
    paths = write_series(tmp_path / "s", [{"w": row.clone()} for row in values])
    report = trajectory(paths, formats=["bf16"], scaling="none")
    return _layer(report, "w", "bf16")


def test_there_and_back_is_one_flip_back(tmp_path):
    m = _bf16(tmp_path, [[ONE, TWO, ONE]])
    assert m.steps == 2 and m.flips_per_step == (1, 1) and m.flips == 2
    assert m.flip_backs == 1 and m.oscillation_rate == 1.0
    assert m.net_flipped == 0 and m.net_flipped_frac == 0.0
    assert m.ever_flipped_frac == 1.0 and m.frozen_frac == 0.0
    assert m.grid_steps == 256 and m.net_grid_steps == 0 and m.path_efficiency == 0.0
    assert m.frozen_run_mean == 0.0


def test_one_way_path_has_efficiency_one(tmp_path):
    m = _bf16(tmp_path, [[ONE, TWO, THREE]])
    assert m.flips_per_step == (1, 1) and m.flip_backs == 0 and m.oscillation_rate == 0.0
    assert m.grid_steps == 192 and m.net_grid_steps == 192 and m.path_efficiency == 1.0
    assert m.net_flipped_frac == 1.0 and m.frozen_run_mean == 0.0


def test_constant_is_frozen(tmp_path):
    m = _bf16(tmp_path, [[ONE, ONE, ONE, ONE], [-TWO, -TWO, -TWO, -TWO]])
    assert m.steps == 3 and m.flips_per_step == (0, 0, 0)
    assert m.frozen_frac == 1.0 and m.ever_flipped_frac == 0.0
    assert m.frozen_run_mean == 3.0
    assert m.path_efficiency == 0.0 and m.oscillation_rate == 0.0


def test_mixed_sequences_by_hand(tmp_path):
    nan = float("nan")
    m = _bf16(
        tmp_path,
        [
            [ONE, TWO, ONE, TWO, TWO],  # flips 1 1 1 0: flip-backs at t=1, 2; longest run 1
            [ONE, ONE, ONE, TWO, THREE],  # flips 0 0 1 1: longest run 2, net 192
            [TWO, TWO, TWO, TWO, TWO],  # frozen: longest run 4
            [ONE, TWO, nan, TWO, ONE],  # not finite once: left out of everything
            [THREE, TWO, ONE, TWO, THREE],  # flips 1 1 1 1: one flip-back (t=2), net 0, run 0
        ],
    )
    assert m.numel == 5 and m.nonfinite == 1
    assert m.flips_per_step == (2, 2, 3, 2) and m.flips == 9
    assert m.ever_flipped == 3 and m.ever_flipped_frac == 3 / 5 and m.frozen_frac == 1 - 3 / 5
    assert m.net_flipped == 2 and m.net_flipped_frac == 2 / 5
    assert m.flip_backs == 3 and m.oscillation_rate == 3 / (2 + 3 + 2)
    # paths: 128·3 + (128 + 64) + 0 + (64 + 128 + 128 + 64)
    assert m.grid_steps == 384 + 192 + 384 and m.net_grid_steps == 128 + 192
    assert m.path_efficiency == 320 / 960
    assert m.frozen_run_mean == (1 + 2 + 4 + 0) / 4


def test_sparkline():
    assert sparkline((0, 0, 0)) == "···"
    assert sparkline((0, 7, 14)) == "·▅█"
    assert len(sparkline(list(range(100)), width=12)) == 12


# ----------------------------------------------------------------------------- numpy reference


def _ref_codes(x: np.ndarray, fmt: str, s: np.float32 | None) -> np.ndarray:
    """Signed grid ordinal of x/s: ml_dtypes' rounding after saturation, ranked in its grid."""
    dtype = ML_DTYPES[fmt]
    y = x if s is None else (x / s).astype(np.float32)
    top = float(ml_dtypes.finfo(dtype).max)
    with np.errstate(invalid="ignore"):
        q = np.clip(y, -top, top).astype(dtype).astype(np.float64)
    grid = ml_dtypes_grid(dtype)
    code = np.searchsorted(grid, np.abs(q)).astype(np.int64)
    return np.where(np.signbit(q), -code, code)


def _reference(series: list[np.ndarray], fmt: str, scaling: str, fixed: bool) -> dict:
    """Every key of SPEC §Trajectories on whole tensors."""
    top = np.float32(ml_dtypes.finfo(ML_DTYPES[fmt]).max)

    def scale(x):
        if scaling == "none":
            return None
        amax = np.float32(np.max(np.abs(x)))
        return amax / top if np.isfinite(amax) and amax > 0 else np.float32(1)

    scales = [scale(series[0] if fixed else x) for x in series]
    finite = np.logical_and.reduce([np.isfinite(x) for x in series])
    c = np.stack([_ref_codes(x, fmt, s) for x, s in zip(series, scales, strict=True)])[:, finite]
    n = len(series) - 1
    numel = series[0].size
    d = np.diff(c, axis=0)
    flips = (d != 0).sum(axis=1)
    back = (c[2:] == c[:-2]) & (c[1:-1] != c[2:])
    longest = np.zeros(c.shape[1], dtype=np.int64)
    run = np.zeros(c.shape[1], dtype=np.int64)
    for t in range(n):
        run = np.where(d[t] != 0, 0, run + 1)
        longest = np.maximum(longest, run)
    ever = int((d != 0).any(axis=0).sum())
    path, net = int(np.abs(d).sum()), int(np.abs(c[-1] - c[0]).sum())
    return {
        "steps": n,
        "numel": numel,
        "nonfinite": int(numel - finite.sum()),
        "flips": int(flips.sum()),
        "flips_per_step": tuple(int(f) for f in flips),
        "ever_flipped": ever,
        "ever_flipped_frac": ever / numel,
        "frozen_frac": 1 - ever / numel,
        "net_flipped": int((c[-1] != c[0]).sum()),
        "net_flipped_frac": int((c[-1] != c[0]).sum()) / numel,
        "flip_backs": int(back.sum()),
        "oscillation_rate": int(back.sum()) / int(flips[1:].sum()) if flips[1:].sum() else 0.0,
        "grid_steps": path,
        "net_grid_steps": net,
        "path_efficiency": net / path if path else 0.0,
        "frozen_run_mean": float(longest.mean()) if longest.size else 0.0,
    }


def _random_series(seed: int, checkpoints: int = 6) -> list[dict[str, torch.Tensor]]:
    """A random walk that dithers (steps of random sign, some returning), with zeros and NaNs."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "a.weight": torch.randn(37, 29, generator=g) * 0.02,
        "b.bias": torch.randn(101, generator=g),
    }
    w["a.weight"][0, :5] = 0.0
    out = []
    for t in range(checkpoints):
        out.append({k: v.clone() for k, v in w.items()})
        for k, v in w.items():
            step = torch.randn(v.shape, generator=g) * v.abs().mean() * 0.1
            back = torch.rand(v.shape, generator=g) < 0.3
            w[k] = torch.where(back & (t % 2 == 1), v - step.abs(), v + step.abs() * 0.5)
    out[min(3, checkpoints - 1)]["b.bias"][7] = float("nan")
    out[1]["a.weight"][2, 3] = float("inf")
    return out


@pytest.mark.parametrize("storage", [torch.float32, torch.bfloat16], ids=["F32", "BF16"])
@pytest.mark.parametrize("fixed", [False, True], ids=["own-scale", "fixed-scale"])
@pytest.mark.parametrize(
    ("fmt", "scaling"), [("e4m3fn", "tensor"), ("e2m1fn", "tensor"), ("bf16", "none")]
)
def test_every_key_against_numpy(tmp_path, fmt, scaling, fixed, storage):
    series = [{k: v.to(storage) for k, v in s.items()} for s in _random_series(1)]
    paths = write_series(tmp_path / "s", series)
    report = trajectory(paths, formats=[fmt], scaling=scaling, fixed_scale=fixed, chunk_size=100)
    for name in ("a.weight", "b.bias"):
        # BF16 storage widens exactly to float32, where the reference works
        expected = _reference([s[name].float().numpy() for s in series], fmt, scaling, fixed)
        got = _layer(report, name, fmt)
        assert {k: getattr(got, k) for k in METRIC_KEYS} == expected, name
    assert report.summary[0].metrics.flip_backs == sum(
        _layer(report, n, fmt).flip_backs for n in ("a.weight", "b.bias")
    )


def test_block_scales_follow_each_checkpoint(tmp_path):
    """Block scaling under each checkpoint's own scale equals encoding each whole checkpoint with
    its own compute_scale (the per-chunk scale path against the whole-tensor one)."""
    import altgrad_cli as ag

    series = _random_series(2, checkpoints=4)
    paths = write_series(tmp_path / "s", series)
    report = trajectory(paths, formats=["e4m3fn"], scaling="block:8", chunk_size=16)
    x = [s["a.weight"] for s in series]
    finite = torch.stack([torch.isfinite(v) for v in x]).all(dim=0)
    codes = [ag.encode(v, "e4m3fn", ag.compute_scale(v, "e4m3fn", "block:8"))[finite] for v in x]
    flips = tuple(int((b != a).sum()) for a, b in zip(codes, codes[1:], strict=False))
    got = _layer(report, "a.weight", "e4m3fn")
    assert got.flips_per_step == flips
    assert got.net_flipped == int((codes[-1] != codes[0]).sum())


def test_same_json_for_any_chunk_size_and_thread_count(tmp_path):
    from altgrad_cli.report.render.json_out import render_json

    paths = write_series(tmp_path / "s", _random_series(3))
    texts = set()
    for chunk, threads in [(1 << 18, 1), (7, 1), (64, 2), (333, 3), (1, 2)]:
        report = trajectory(
            paths,
            formats=["e4m3fn", "bf16", "e2m1fn"],
            chunk_size=chunk,
            threads=threads,
        )
        texts.add(render_json(report).replace(f'"chunk_size": {chunk}', '"chunk_size": 0'))
    assert len(texts) == 1


# ----------------------------------------------------------------------------- pairing and errors


def test_missing_and_mismatched_tensors_are_skipped(tmp_path):
    series = [
        {"w": torch.ones(4), "only0": torch.ones(2), "shape": torch.ones(3), "ints": torch.ones(2)},
        {"w": torch.ones(4), "only0": torch.ones(2), "shape": torch.ones(3), "ints": torch.ones(2)},
        {"w": torch.ones(4), "shape": torch.ones(4), "ints": torch.ones(2)},
    ]
    series[0]["ints"] = series[0]["ints"].to(torch.int32)
    paths = write_series(tmp_path / "s", series)
    cli = run(*paths, "-o", "json")
    assert cli.exit_code == 0 and "3 of 4 tensors skipped" in cli.stderr
    assert [s["name"] for s in json.loads(cli.stdout)["skipped"]] == ["ints", "only0", "shape"]
    report = trajectory(paths)
    assert [layer.name for layer in report.layers] == ["w"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert reasons == {
        "only0": "missing from C2",
        "shape": "shape mismatch: C0 [3], C2 [4]",
        "ints": "not a floating dtype (I32)",
    }


def test_too_few_checkpoints_or_nothing_to_follow(tmp_path):
    paths = write_series(tmp_path / "s", [{"w": torch.ones(2)}] * 3)
    with pytest.raises(UsageError):
        trajectory(paths[:2])
    with pytest.raises(InputError, match="no tensors selected"):
        trajectory(paths, include="nothing")
    renamed = write_series(tmp_path / "r", [{"module.w": torch.ones(2)}] * 3)
    with pytest.raises(InputError, match="try --strip-prefix"):
        trajectory([paths[0], renamed[1], renamed[2]])
    assert trajectory(renamed, strip_prefix=["module."]).layers[0].name == "w"


def test_per_step_holds_the_pairwise_analyze_records(tmp_path):
    series = _random_series(4, checkpoints=4)
    for s in series:  # all finite, so the trajectory's steps and the pairs count the same elements
        for v in s.values():
            v.nan_to_num_(0.0, 0.0, 0.0)
    paths = write_series(tmp_path / "s", series)
    report = trajectory(paths, formats=["e4m3fn"], per_step=True)
    assert [s.step for s in report.per_step] == [1, 2, 3]
    for layer in report.layers:
        pairwise = [
            next(r for r in step.layers if r.name == layer.name).metrics.flips
            for step in report.per_step
        ]
        assert tuple(pairwise) == layer.metrics.flips_per_step
    data = report.to_dict()
    jsonschema.validate(data, SCHEMA)
    assert data["per_step"][0]["before"] == str(paths[0])
    table = run(*paths, "--per-step", "-q").stdout
    assert "Per step (analyze of C(t-1) -> C(t), all tensors)" in table
    assert max(len(line) for line in table.splitlines()) <= 80


def test_records_json_and_schema(tmp_path):
    paths = write_series(tmp_path / "s", _random_series(5, checkpoints=3))
    report = trajectory(paths, formats=["e4m3fn", "bf16"])
    layer = report.layers[0]
    assert isinstance(layer, TrajectoryLayer)
    assert list(layer.to_dict()) == ["name", "format", "dtype", "shape", "scale", *METRIC_KEYS]
    assert list(report.summary[0].to_dict()) == ["format", "tensors", *METRIC_KEYS, "worst"]
    data = report.to_dict()
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.validate(data, SCHEMA)
    assert data["layers"][0]["scale"]["mode"] == "tensor"
    assert len(data["layers"][0]["scale"]["values"]) == 3
    broken = json.loads(json.dumps(data))
    broken["layers"][0]["oscillation_rate"] = 1.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)
    cli = CliRunner().invoke(app, ["schema", "--trajectory"])
    assert json.loads(cli.stdout) == SCHEMA


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def series_paths(tmp_path) -> list[Path]:
    return write_series(tmp_path / "cli", _random_series(6, checkpoints=5))


@pytest.mark.parametrize("output", ["json", "jsonl", "csv", "markdown", "table"])
def test_cli_outputs(series_paths, output):
    result = run(*series_paths, "-f", "e4m3fn", "-f", "e2m1fn", "-o", output, "-q")
    assert result.exit_code == 0, result.output
    out = result.stdout
    if output == "json":
        data = json.loads(out)
        jsonschema.validate(data, SCHEMA)
        assert data["schema"] == "altgrad.trajectory/1"
        assert [s["format"] for s in data["summary"]] == ["e4m3fn", "e2m1fn"]
    elif output == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        assert len(rows) == 4 and rows[0]["steps"] == 4
    elif output == "csv":
        lines = out.splitlines()
        assert lines[0] == "name,format,dtype,shape," + ",".join(METRIC_KEYS)
        assert len(lines) == 5
    elif output == "markdown":
        assert out.startswith("# altgrad trajectory (4 steps)") and "| `a.weight` | e4m3fn |" in out
    else:
        assert "Trajectory over 4 steps (5 checkpoints)" in out and "all 2" in out
        assert max(len(line) for line in out.splitlines()) <= 80


def test_cli_rules_junit_and_exit_codes(series_paths, tmp_path):
    junit = tmp_path / "t.xml"
    failing = run(
        *series_paths, "-o", "json", "--fail-if", "oscillation_rate >= 0", "--junit", junit
    )
    assert failing.exit_code == 1
    assert "FAIL oscillation_rate >= 0" in failing.stderr
    data = json.loads(failing.stdout)
    assert data["checks"]["failures"] == 2 and "<failure" in junit.read_text()
    passing = run(*series_paths, "-o", "json", "--fail-if", "summary.frozen_frac > 1")
    assert passing.exit_code == 0
    assert run(*series_paths[:2]).exit_code == 2
    assert run(*series_paths, "--fail-if", "no_such_key > 1").exit_code == 2
    assert run(*series_paths, "-f", "e9m9").exit_code == 2
    assert run(series_paths[0], series_paths[1], tmp_path / "missing.safetensors").exit_code == 3
    ranked = run(*series_paths, "-o", "jsonl", "--sort", "flip_backs", "--top", "1")
    rows = [json.loads(line) for line in ranked.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["flip_backs"] == max(
        r["flip_backs"] for r in json.loads(passing.stdout)["layers"]
    )
    assert run(*series_paths, "--sort", "stall_ratio").exit_code == 2
    saved = tmp_path / "t.json"
    assert run(*series_paths, "-o", "json", "--out", saved).exit_code == 0
    check = CliRunner().invoke(app, ["check", str(saved), "--fail-if", "oscillation_rate > 2"])
    assert check.exit_code == 0, check.output


# ----------------------------------------------------------------------------- the sample


def test_sample_trajectory_regenerates_byte_for_byte(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_trajectory", ROOT / "sample_checkpoints" / "make_trajectory.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    shipped = sorted((ROOT / "sample_checkpoints" / "trajectory").glob("*.safetensors"))
    assert len(shipped) >= 4
    for path in shipped:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_sample_trajectory_oscillates_under_fp4():
    paths = sorted((ROOT / "sample_checkpoints" / "trajectory").glob("*.safetensors"))
    report = trajectory(paths, formats=["e2m1fn", "e4m3fn", "bf16"])
    rates = {s.format: s.metrics.oscillation_rate for s in report.summary}
    # the coarser the grid, the more of its flips come straight back
    assert rates["e2m1fn"] > rates["e4m3fn"] > rates["bf16"]
    assert rates["e2m1fn"] > 0.25


def test_trajectory_html_and_render_of_a_saved_trajectory(tmp_path):
    pytest.importorskip("plotly", reason="--output html needs altgrad-cli[html]")
    paths = write_series(tmp_path / "s", _random_series(5, checkpoints=3))
    saved = tmp_path / "t.json"
    assert run(*paths, "-o", "json", "--out", saved, "-q").exit_code == 0
    html = run(*paths, "-o", "html", "-q")
    assert html.exit_code == 0 and "<html" in html.stdout and "oscillation" in html.stdout.lower()
    from altgrad_cli.cli.app import app as root

    again = CliRunner().invoke(root, ["render", str(saved), "-o", "json"])
    assert again.exit_code == 0 and again.stdout == saved.read_text()
    rendered = CliRunner().invoke(root, ["render", str(saved), "-o", "html"])
    assert rendered.exit_code == 0 and rendered.stdout == html.stdout
