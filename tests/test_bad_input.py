"""Bad input: one line naming the file and the problem, exit 3, no traceback, nothing lost."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli import AltgradError, analyze
from altgrad_cli.cli.app import app


def run(*args):
    return CliRunner().invoke(app, ["analyze", *map(str, args)])


def _one_line_error(result, *fragments):
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.safetensors"
    save_file(
        {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7, "b": torch.ones(4)},
        str(path),
    )
    return path


def _write_raw(
    path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None
) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_missing_path(tmp_path, good):
    _one_line_error(run(tmp_path / "nope.safetensors", good), "nope.safetensors", "no such file")


def test_directory_without_safetensors(tmp_path, good):
    (tmp_path / "empty").mkdir()
    _one_line_error(run(tmp_path / "empty", good), "empty", "no *.safetensors")


def test_zero_byte_file(tmp_path, good):
    (tmp_path / "zero.safetensors").write_bytes(b"")
    _one_line_error(run(tmp_path / "zero.safetensors", good), "zero.safetensors", "0 bytes")


def test_truncated_file(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    _one_line_error(run(tmp_path / "cut.safetensors", good), "cut.safetensors", "outside the data")


def test_header_length_beyond_file(tmp_path, good):
    path = _write_raw(tmp_path / "long.safetensors", {"w": {}}, length=10_000)
    _one_line_error(run(path, good), "long.safetensors", "header length 10000 goes beyond the file")


def test_corrupt_header_json(tmp_path, good):
    path = _write_raw(tmp_path / "json.safetensors", b'{"w": {"dtype": ')
    _one_line_error(run(path, good), "json.safetensors", "corrupt header JSON")


def test_offsets_outside_the_data(tmp_path, good):
    path = _write_raw(
        tmp_path / "off.safetensors",
        {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
        b"\0" * 4,
    )
    _one_line_error(run(path, good), "off.safetensors", "outside the data")


def test_overlapping_offsets(tmp_path, good):
    header = {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    path = _write_raw(tmp_path / "overlap.safetensors", header, b"\0" * 12)
    _one_line_error(run(path, good), "overlap.safetensors", "overlap")


def test_unknown_dtype(tmp_path, good):
    path = _write_raw(
        tmp_path / "dt.safetensors",
        {"w": {"dtype": "F12", "shape": [1], "data_offsets": [0, 2]}},
        b"\0\0",
    )
    _one_line_error(run(path, good), "dt.safetensors", "unknown dtype 'F12'")


def test_huge_claimed_tensor_rejected_before_allocating(tmp_path, good):
    header = {"w": {"dtype": "F32", "shape": [1 << 40, 1 << 20], "data_offsets": [0, 16]}}
    path = _write_raw(tmp_path / "huge.safetensors", header, b"\0" * 16)
    _one_line_error(run(path, good), "huge.safetensors", "needs", "offsets hold 16")


def test_index_naming_a_missing_shard(tmp_path, good):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001.safetensors"}})
    )
    _one_line_error(
        run(folder, good), "model.safetensors.index.json", "missing shard 'model-00001.safetensors'"
    )


def test_permission_denied(tmp_path, good, monkeypatch):
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(good.read_bytes())
    real_open = os.open

    def guarded(file, *args, **kwargs):  # root ignores chmod, so deny the way the OS would
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)
    _one_line_error(run(locked, good), "locked.safetensors", "permission denied")


def test_debug_shows_the_traceback(tmp_path, good):
    # The traceback is printed and the exit code stays 3 (it was 1: the error escaped the app).
    result = CliRunner().invoke(app, ["analyze", str(tmp_path / "nope"), str(good), "--debug"])
    assert result.exit_code == 3
    assert isinstance(result.exception.__context__, AltgradError)
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")


# ----------------------------------------------------------------------------- reported, not errors


def test_mismatches_and_integers_are_skipped_not_errors(tmp_path):
    # one tensor pairs: a run where every tensor is skipped is an input error (below)
    save_file(
        {
            "ok": torch.ones(2),
            "a": torch.ones(2),
            "i": torch.ones(2, dtype=torch.int32),
            "h": torch.ones(2),
        },
        str(tmp_path / "b.safetensors"),
    )
    save_file(
        {
            "ok": torch.ones(2),
            "a": torch.ones(3),
            "i": torch.ones(2, dtype=torch.int32),
            "h": torch.ones(2, dtype=torch.float16),
        },
        str(tmp_path / "a.safetensors"),
    )
    result = run(tmp_path / "b.safetensors", tmp_path / "a.safetensors", "-o", "json")
    assert result.exit_code == 0
    reasons = {s["name"]: s["reason"] for s in json.loads(result.stdout)["skipped"]}
    assert reasons == {
        "a": "shape mismatch: before [2], after [3]",
        "i": "not a floating dtype (I32)",
        "h": "dtype mismatch: before F32, after F16",
    }


def test_nonfinite_empty_scalar_and_zero_tensors_are_reported(tmp_path):
    before = {
        "nan": torch.tensor([float("nan"), 1.0, float("inf")]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(0.5),
        "zeros": torch.zeros(3),
        "allnan": torch.full((2,), float("nan")),
    }
    after = {k: v.clone() for k, v in before.items()}
    after["scalar"] = torch.tensor(0.25)  # 0.75 would saturate onto 0.5's code under its scale
    save_file(before, str(tmp_path / "b.safetensors"))
    save_file(after, str(tmp_path / "a.safetensors"))
    result = run(tmp_path / "b.safetensors", tmp_path / "a.safetensors", "-o", "json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["nan"]["nonfinite"] == 2 and layers["nan"]["numel"] == 3
    assert layers["allnan"]["nonfinite"] == 2
    assert layers["empty"]["numel"] == 0 and layers["scalar"]["flips"] == 1
    assert layers["zeros"]["stiffness"]["histogram"] == {"zero": 3}


# ----------------------------------------------------------------------------- --out is never lost


def test_failed_run_leaves_existing_out_untouched(tmp_path, good, monkeypatch):
    out = tmp_path / "report.json"
    assert run(good, good, "-o", "json", "--out", out).exit_code == 0
    original = out.read_bytes()
    pipeline = importlib.import_module(
        "altgrad_cli.pipeline"
    )  # the package attribute is the function

    real = pipeline.accumulate_tensor
    calls = {"n": 0}

    def corrupt_late(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second tensor turns out to be unreadable
            from altgrad_cli.errors import InputError

            raise InputError(good, "truncated while reading")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "accumulate_tensor", corrupt_late)
    result = run(good, good, "-o", "json", "--out", out)
    assert result.exit_code == 3 and calls["n"] == 2
    assert out.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "report.json"]


# ----------------------------------------------------------------------------- fuzz

FUZZ_EXAMPLES = int(os.environ.get("ALTGRAD_FUZZ_EXAMPLES", "2000"))


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)
def test_fuzzed_checkpoints_never_crash(tmp_path_factory, edits, cut):
    folder = tmp_path_factory.mktemp("fuzz")
    good = folder / "good.safetensors"
    save_file(
        {"w": torch.linspace(-1, 1, 24).reshape(4, 6), "b": torch.ones(6, dtype=torch.bfloat16)},
        str(good),
    )
    data = bytearray(good.read_bytes())
    for position, byte in edits:
        data[position % len(data)] = byte
    if cut is not None:
        data = data[: min(cut, len(data))]
    bad = folder / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with contextlib.suppress(AltgradError):
        analyze(bad, good, grads=bad, formats=["e4m3fn", "E0M7"])


def test_every_tensor_skipped_is_an_input_error(tmp_path):
    before, after = tmp_path / "b.safetensors", tmp_path / "a.safetensors"
    weights = {f"layer{i}.weight": torch.randn(4, 4) for i in range(3)}
    save_file(weights, str(before))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(after))
    result = run(before, after)
    assert result.exit_code == 3, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "all 3 tensors were skipped" in line
    assert "3 of them: dtype mismatch: before F32, after BF16" in line


def test_some_tensors_skipped_say_so_on_stderr(tmp_path):
    before, after = tmp_path / "b.safetensors", tmp_path / "a.safetensors"
    save_file(
        {"w": torch.randn(4), "only_b": torch.randn(2), "step": torch.tensor([1])}, str(before)
    )
    save_file({"w": torch.randn(4), "step": torch.tensor([2])}, str(after))
    result = run(before, after, "-o", "json")
    assert result.exit_code == 0
    assert (
        "altgrad: 2 of 3 tensors skipped (1 only in before, 1 not a floating dtype)"
        in result.stderr
    )
    json.loads(result.stdout)  # stdout stays clean JSON
