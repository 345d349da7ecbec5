"""`altgrad analyze` end to end on tiny checkpoints written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from altgrad_cli.cli.app import app
from altgrad_cli.io.capture import capture_step
from altgrad_cli.report.schema import report_schema

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = report_schema()


def run(*args: str):
    return CliRunner().invoke(app, ["analyze", *map(str, args)], env={"COLUMNS": "200"})


def _tensors(seed: int = 0, dtype=torch.float32) -> tuple[dict, dict, dict]:
    g = torch.Generator().manual_seed(seed)
    before = {
        "layer.0.weight": torch.randn(16, 8, generator=g) * 0.02,
        "layer.0.bias": torch.randn(16, generator=g) * 0.02,
        "layer.1.weight": torch.randn(4, 16, generator=g) * 0.5,
    }
    grads = {k: torch.randn(v.shape, generator=g) * 1e-3 for k, v in before.items()}
    after = {k: v - 1e-3 * torch.sign(grads[k]) for k, v in before.items()}
    cast = lambda d: {k: v.to(dtype) for k, v in d.items()}  # noqa: E731
    return cast(before), cast(after), cast(grads)


@pytest.fixture
def ckpt(tmp_path):
    """Write before/after/grads files and return their paths."""

    def make(dtype=torch.float32, prefix: str = "", name: str = "run"):
        folder = tmp_path / name
        folder.mkdir()
        paths = []
        for label, tensors in zip(["before", "after", "grads"], _tensors(dtype=dtype), strict=True):
            path = folder / f"{label}.safetensors"
            save_file({prefix + k: v for k, v in tensors.items()}, str(path))
            paths.append(path)
        return paths

    return make


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("output", ["json", "jsonl", "csv", "markdown", "table"])
def test_every_output_format(ckpt, output):
    before, after, grads = ckpt()
    result = run(before, after, "--grads", grads, "-o", output)
    assert result.exit_code == 0, result.output
    out = result.stdout
    if output == "json":
        jsonschema.validate(json.loads(out), SCHEMA)
    elif output == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["name"] for r in rows] == ["layer.0.bias", "layer.0.weight", "layer.1.weight"]
    elif output == "csv":
        lines = out.splitlines()
        assert lines[0].startswith("name,format,dtype,shape,updates,flips") and len(lines) == 4
    elif output == "markdown":
        assert out.startswith("# altgrad report") and "| `layer.0.weight` | e4m3fn |" in out
    else:
        assert "Stall and flips" in out and "all 3 tensors" in out and "Stiffness histogram" in out


def test_json_is_deterministic_and_stdout_only_json(ckpt):
    before, after, grads = ckpt()
    first = run(before, after, "--grads", grads, "-o", "json")
    second = run(before, after, "--grads", grads, "-o", "json")
    assert first.stdout == second.stdout
    report = json.loads(first.stdout)
    assert report["schema"] == "altgrad.report/2"
    summary = report["summary"][0]
    assert summary["flips"] == sum(layer["flips"] for layer in report["layers"])
    assert summary["updates"] == sum(layer["updates"] for layer in report["layers"])


def _layers(report: dict) -> list:
    return report["layers"]


def test_sharded_folder_and_index_equal_single_file(ckpt, tmp_path):
    before, after, grads = ckpt()
    single = _json(run(before, after, "--grads", grads, "-o", "json"))
    tensors = _tensors()
    for label, side in zip(["before", "after", "grads"], tensors, strict=True):
        folder = tmp_path / f"sharded_{label}"
        folder.mkdir()
        names = sorted(side)
        shards = {
            "model-00001-of-00002.safetensors": names[:1],
            "model-00002-of-00002.safetensors": names[1:],
        }
        weight_map = {}
        for shard, keys in shards.items():
            save_file({k: side[k] for k in keys}, str(folder / shard))
            weight_map.update({k: shard for k in keys})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    sb, sa, sg = (tmp_path / f"sharded_{x}" for x in ["before", "after", "grads"])
    from_folder = _json(run(sb, sa, "--grads", sg, "-o", "json"))
    idx = "model.safetensors.index.json"
    from_index = _json(run(sb / idx, sa / idx, "--grads", sg / idx, "-o", "json"))
    assert _layers(from_folder) == _layers(single) == _layers(from_index)
    (sb / idx).unlink()  # a folder without an index: every *.safetensors in it
    assert _layers(_json(run(sb, sa, "--grads", sg, "-o", "json"))) == _layers(single)


def test_strip_prefix_and_hint(ckpt, tmp_path):
    before, _, _ = ckpt(name="plain")
    _, after, grads = ckpt(prefix="module.", name="ddp")
    result = run(before, after, "--grads", grads)
    assert (
        result.exit_code == 3 and "--strip-prefix" in result.stderr and "module." in result.stderr
    )
    report = _json(run(before, after, "--grads", grads, "--strip-prefix", "module.", "-o", "json"))
    assert [layer["name"] for layer in report["layers"]] == [
        "layer.0.bias",
        "layer.0.weight",
        "layer.1.weight",
    ]


def test_skipped_names_with_reasons(tmp_path):
    before = {
        "a": torch.ones(3),
        "b": torch.ones(3),
        "steps": torch.tensor([1, 2]),
        "only_b": torch.ones(1),
    }
    after = {
        "a": torch.ones(3) * 2,
        "b": torch.ones(4),
        "steps": torch.tensor([2, 3]),
        "only_a": torch.ones(1),
    }
    save_file(before, str(tmp_path / "b.safetensors"))
    save_file(after, str(tmp_path / "a.safetensors"))
    report = _json(run(tmp_path / "b.safetensors", tmp_path / "a.safetensors", "-o", "json"))
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "b": "shape mismatch: before [3], after [4]",
        "steps": "not a floating dtype (I64)",
        "only_b": "only in before",
        "only_a": "only in after",
    }
    assert [layer["name"] for layer in report["layers"]] == ["a"]
    assert report["layers"][0]["update_source"] == "delta"


@pytest.mark.parametrize(
    ("dtype", "tag"),
    [
        (torch.bfloat16, "BF16"),
        (torch.float16, "F16"),
        (torch.float8_e4m3fn, "F8_E4M3"),
        (torch.float8_e5m2, "F8_E5M2"),
        (torch.float64, "F64"),
    ],
)
def test_storage_dtypes(ckpt, dtype, tag):
    before, after, grads = ckpt(dtype=dtype)
    report = _json(run(before, after, "--grads", grads, "-o", "json"))
    assert {layer["dtype"] for layer in report["layers"]} == {tag}
    jsonschema.validate(report, SCHEMA)


def test_include_exclude(ckpt):
    before, after, grads = ckpt()
    inc = _json(run(before, after, "--include", r"weight$", "-o", "json"))
    assert [layer["name"] for layer in inc["layers"]] == ["layer.0.weight", "layer.1.weight"]
    exc = _json(run(before, after, "--exclude", r"^layer\.0", "-o", "json"))
    assert [layer["name"] for layer in exc["layers"]] == ["layer.1.weight"]
    assert run(before, after, "--include", "(").exit_code == 2


def test_several_formats_in_one_run(ckpt):
    before, after, grads = ckpt()
    report = _json(
        run(
            before,
            after,
            "--grads",
            grads,
            "-f",
            "e4m3fn",
            "-f",
            "E0M7",
            "-f",
            "e2m1fn",
            "-o",
            "json",
        )
    )
    assert [s["format"] for s in report["summary"]] == ["e4m3fn", "E0M7", "e2m1fn"]
    assert len(report["layers"]) == 9
    table = run(before, after, "--grads", grads, "-f", "e4m3fn", "-f", "mxfp4").stdout
    assert "Stall ratio by recipe" in table and "What if" in table
    assert "Block scales, e2m1fn@block:32:floor" in table


def test_chunk_size_does_not_change_the_numbers(ckpt):
    before, after, grads = ckpt()
    args = (before, after, "--grads", grads, "-o", "json", "--scaling", "block:4")
    one = _json(run(*args))
    many = _json(run(*args, "--chunk-size", "8"))
    for x, y in zip(one["layers"], many["layers"], strict=True):
        assert (
            x["flips"] == y["flips"] and x["ulp"] == y["ulp"] and x["grid_steps"] == y["grid_steps"]
        )
        assert x["stiffness"]["mean"] == pytest.approx(y["stiffness"]["mean"], rel=1e-12)


def test_thread_count_does_not_change_a_byte(ckpt):
    before, after, grads = ckpt()
    args = (before, after, "--grads", grads, "-o", "json", "-f", "e4m3fn", "-f", "E0M7")
    small = ("--chunk-size", "16")  # many chunks, so the workers really share them
    one = run(*args, *small, "--threads", "1")
    three = run(*args, *small, "--threads", "3")
    assert one.exit_code == 0 and one.stdout == three.stdout
    assert run(*args, "--threads", "0").exit_code == 2


def test_out_file_sort_and_top(ckpt, tmp_path):
    before, after, grads = ckpt()
    out = tmp_path / "report.json"
    result = run(
        before,
        after,
        "--grads",
        grads,
        "-o",
        "json",
        "--out",
        out,
        "--sort",
        "stall_ratio",
        "--top",
        "2",
    )
    assert result.exit_code == 0 and result.stdout == ""
    layers = json.loads(out.read_text())["layers"]
    assert len(layers) == 2 and layers[0]["stall_ratio"] >= layers[1]["stall_ratio"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert run(before, after, "--sort", "nonsense").exit_code == 2


def test_usage_errors_exit_2(ckpt):
    before, after, _ = ckpt()
    assert run(before, after, "-f", "e9m9").exit_code == 2
    assert run(before, after, "--chunk-size", "0").exit_code == 2
    bad = run(before, after, "--scaling", "block:0")
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_missing_input_exits_3_without_traceback(tmp_path):
    result = run(tmp_path / "nope.safetensors", tmp_path / "nope2.safetensors")
    assert result.exit_code == 3
    assert (
        "nope.safetensors: no such file or directory" in result.stderr
        and "Traceback" not in result.output
    )


def test_capture_helper_writes_three_files_and_handles_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.tensor([1, 2, 3])).sum().backward()
    with capture_step(model, tmp_path / "step"):
        opt.step()
    report = _json(
        run(
            tmp_path / "step/before.safetensors",
            tmp_path / "step/after.safetensors",
            "--grads",
            tmp_path / "step/grads.safetensors",
            "-o",
            "json",
        )
    )
    assert [layer["name"] for layer in report["layers"]] == ["0.weight"]
    assert report["layers"][0]["updates"] > 0


def test_readme_first_command_runs_on_sample_checkpoints():
    readme = (ROOT / "README.md").read_text()
    assert "altgrad analyze sample_checkpoints/before.safetensors" in readme.splitlines()[3]
    s = ROOT / "sample_checkpoints"
    result = run(
        s / "before.safetensors", s / "after.safetensors", "--grads", s / "grads.safetensors"
    )
    assert result.exit_code == 0 and "Stall and flips" in result.stdout
    assert sum(p.stat().st_size for p in s.glob("*.safetensors")) < 2 * 1024 * 1024
