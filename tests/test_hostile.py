"""Hostile input (issue 13), one test (or more) per class: never lose a file, never read
outside, never hang, never blow up, text is data, fail closed on partial data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from hostile import cli, no_hang, one_line, pair, stderr_lines, write_raw
from safetensors.torch import save_file

from altgrad_cli import analyze
from altgrad_cli.errors import InputError, UsageError
from altgrad_cli.io.checkpoint import Checkpoint
from altgrad_cli.report.checks import evaluate, parse_rule
from altgrad_cli.report.render.json_out import render_json

ROOT = Path(__file__).resolve().parent.parent


def _strict(text: str):
    def bad(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=bad)


@pytest.fixture
def report_file(tmp_path) -> Path:
    b, a, g = pair(tmp_path, grads=("w", "b"))
    path = tmp_path / "report.json"
    path.write_text(render_json(analyze(b, a, grads=g)))
    return path


# ----------------------------------------------------------------------------- data loss


@pytest.mark.parametrize("option", ["--out", "--junit"])
def test_output_onto_an_input_is_refused_before_reading(tmp_path, option):
    before, after = pair(tmp_path)
    corrupt = write_raw(tmp_path / "corrupt.safetensors", b"{not json")
    original = before.read_bytes()
    rule = ["--fail-if", "flips > 1e9"] if option == "--junit" else []
    # AFTER is corrupt: exit 2 (not 3) shows the output was checked before anything was read
    result = cli("analyze", before, corrupt, "-o", "json", option, before, *rule)
    one_line(result, 2, "refusing to overwrite", str(before))
    assert before.read_bytes() == original


def test_output_through_symlink_or_hard_link_onto_an_input_is_refused(tmp_path):
    before, after = pair(tmp_path)
    original = after.read_bytes()
    (tmp_path / "soft.json").symlink_to(after)
    os.link(after, tmp_path / "hard.json")
    for out in ("soft.json", "hard.json"):
        one_line(cli("analyze", before, after, "-o", "json", "--out", tmp_path / out), 2, out)
    assert after.read_bytes() == original


def test_output_onto_a_shard_of_a_sharded_input_or_a_saved_report(tmp_path, report_file):
    folder = tmp_path / "sharded"
    folder.mkdir()
    b, a = pair(tmp_path)
    save_file({"w": torch.ones(3)}, str(folder / "m-1.safetensors"))
    shard = (folder / "m-1.safetensors").read_bytes()
    one_line(cli("analyze", folder, folder, "--out", folder / "m-1.safetensors"), 2, "m-1")
    assert (folder / "m-1.safetensors").read_bytes() == shard
    saved = report_file.read_bytes()
    result = cli("check", report_file, "--fail-if", "flips > 1", "--junit", report_file)
    one_line(result, 2, "refusing to overwrite")
    assert report_file.read_bytes() == saved
    same = cli(
        "analyze",
        b,
        a,
        "--out",
        tmp_path / "x",
        "--junit",
        tmp_path / "x",
        "--fail-if",
        "flips > 1",
    )
    one_line(same, 2, "same file")


def test_out_onto_a_symlink_writes_through_to_its_target(tmp_path):
    before, after = pair(tmp_path)
    target = tmp_path / "reports" / "latest.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert cli("analyze", before, after, "-o", "json", "--out", link).exit_code == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert _strict(target.read_text())["schema"] == "altgrad.report/2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.json"]  # no temp left
    # a device cannot be replaced: it is written to, and stays a device
    assert cli("analyze", before, after, "-o", "json", "--out", "/dev/null").exit_code == 0
    assert Path("/dev/null").is_char_device()


# ----------------------------------------------------------------------------- reading outside


def _index(folder: Path, weight_map: dict) -> Path:
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps({"weight_map": weight_map}))
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_index_shards_must_stay_inside_the_index_folder(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    save_file({"w": torch.ones(3)}, str(outside / "x.safetensors"))
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    shard = {
        "dotdot": "../../outside/x.safetensors",
        "absolute": str(outside / "x.safetensors"),
        "symlink": "link.safetensors",
    }[kind]
    (folder / "link.safetensors").symlink_to(outside / "x.safetensors")
    _index(folder, {"w": shard})
    one_line(cli("analyze", folder, folder), 3, "model.safetensors.index.json", repr(shard))


# ----------------------------------------------------------------------------- disagreements


def _shards(folder: Path, shards: dict[str, list[str]]) -> None:
    folder.mkdir(exist_ok=True)
    for file, names in shards.items():
        save_file({n: torch.ones(2) for n in names}, str(folder / file))


def test_tensor_in_another_shard_than_the_index_says(tmp_path):
    folder = tmp_path / "m"
    _shards(folder, {"1.safetensors": ["a", "b"], "2.safetensors": ["c"]})
    _index(folder, {"a": "1.safetensors", "b": "2.safetensors", "c": "2.safetensors"})
    one_line(cli("analyze", folder, folder), 3, "'b'", "1.safetensors", "2.safetensors")


def test_tensor_the_index_promises_but_its_shard_lacks(tmp_path):
    folder = tmp_path / "m"
    _shards(folder, {"1.safetensors": ["a"]})
    _index(folder, {"a": "1.safetensors", "ghost": "1.safetensors"})
    one_line(cli("analyze", folder, folder), 3, "'ghost'", "lacks it")


def test_tensor_in_two_files_of_an_index_less_folder(tmp_path):
    folder = tmp_path / "m"
    _shards(folder, {"1.safetensors": ["a", "b"], "2.safetensors": ["b"]})
    one_line(cli("analyze", folder, folder), 3, "'b'", "1.safetensors", "2.safetensors")


def test_two_names_that_collapse_after_strip_prefix(tmp_path):
    b = tmp_path / "b.safetensors"
    save_file({"model.w": torch.ones(2), "w": torch.ones(2)}, str(b))
    one_line(cli("analyze", b, b, "--strip-prefix", "model."), 3, "'model.w'", "'w'")


def test_a_header_that_lists_one_name_twice_is_corrupt(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = f'{{"w": {entry}, "w": {entry}}}'.encode()
    path = write_raw(tmp_path / "dup.safetensors", raw, b"\0" * 4)
    one_line(cli("analyze", path, path), 3, "dup.safetensors", "'w' appears twice")


# ----------------------------------------------------------------------------- hangs


@pytest.mark.parametrize("role", ["before", "grads", "index", "report", "baseline"])
def test_fifo_inputs_are_refused_not_waited_on(tmp_path, report_file, role):
    before, after = pair(tmp_path)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    if role == "index":
        folder = tmp_path / "m"
        folder.mkdir()
        os.mkfifo(folder / "model.safetensors.index.json")
        result = cli("analyze", folder, after)
    elif role in ("report", "baseline"):
        args = (
            [fifo, "--fail-if", "flips > 1"]
            if role == "report"
            else [report_file, "--fail-if", "flips > baseline", "--baseline", fifo]
        )
        result = cli("check", *args)
    else:
        args = [fifo, after] if role == "before" else [before, after, "--grads", fifo]
        result = cli("analyze", *args)
    one_line(result, 3, "FIFO")


def test_character_devices_are_refused(tmp_path, report_file):
    before, _ = pair(tmp_path)
    one_line(cli("analyze", "/dev/zero", before), 3, "/dev/zero", "character device")
    one_line(cli("check", "/dev/zero", "--fail-if", "flips > 1"), 3, "character device")


def test_json_inputs_are_size_capped(tmp_path, report_file, monkeypatch):
    from altgrad_cli.io import files

    monkeypatch.setattr(files, "MAX_JSON_BYTES", 100)
    one_line(cli("check", report_file, "--fail-if", "flips > 1"), 3, "limit")


def test_user_regexes_cannot_backtrack_exponentially(tmp_path):
    name = "a" * 41
    path = tmp_path / "x.safetensors"
    save_file({name: torch.ones(2), "b": torch.ones(2)}, str(path))
    with no_hang(30):
        result = cli("analyze", path, path, "--include", "(a+)+$", "-o", "json")
    assert result.exit_code == 0
    assert [r["name"] for r in _strict(result.stdout)["layers"]] == [name]
    # what needs a backtracking engine is a usage error, one line
    one_line(cli("analyze", path, path, "--exclude", r"(a)\1"), 2, "--exclude")
    one_line(cli("analyze", path, path, "--include", "(?=a)"), 2, "--include")


def test_rule_numbers_parse_in_linear_time():
    with no_hang(30):
        for text in ("x > " + "1" * 12_000 + "x", "x > " + "1" * 900):
            with pytest.raises(UsageError):
                parse_rule(text)
        assert parse_rule("x > " + "9" * 300).number == float("9" * 300)


@pytest.mark.parametrize(
    "args",
    [
        ["--scaling", "block:100000000"],
        ["--scaling", "block:" + "9" * 5000],
        ["--chunk-size", str(10**12)],
        ["--threads", "100000"],
        ["-f", "e" + "1" * 5000 + "m3"],
    ],
)
def test_nonsense_sizes_are_usage_errors(tmp_path, args):
    before, after = pair(tmp_path)
    one_line(cli("analyze", before, after, *args), 2)


def test_a_block_longer_than_a_row_is_the_row_and_costs_no_padding(tmp_path, monkeypatch):
    largest = [0]
    real_pad = torch.nn.functional.pad

    def pad(tensor, *args, **kwargs):
        out = real_pad(tensor, *args, **kwargs)
        largest[0] = max(largest[0], out.numel())
        return out

    monkeypatch.setattr(torch.nn.functional, "pad", pad)
    gen = torch.Generator().manual_seed(1)
    before = torch.randn(300, 1, generator=gen)
    after = before + 0.01 * torch.randn(300, 1, generator=gen)
    save_file({"w": before}, str(tmp_path / "b.safetensors"))
    save_file({"w": after}, str(tmp_path / "a.safetensors"))
    reports = [
        analyze(tmp_path / "b.safetensors", tmp_path / "a.safetensors", scaling=s)
        for s in ("block:65536", "block:1")
    ]
    # one element per row: each element is its own block whatever N (SPEC: blocks run along rows)
    assert reports[0].layers[0].metrics == reports[1].layers[0].metrics
    assert largest[0] <= 300  # nothing padded to 65,536 elements a row


def test_header_size_is_capped(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes((64 * 1024 * 1024).to_bytes(8, "little") + b"{}")
    one_line(cli("analyze", path, path), 3, "huge.safetensors", "limit")


# ----------------------------------------------------------------------------- faults in a run


def test_a_file_truncated_before_a_tensor_is_read_is_an_input_error(tmp_path):
    before, after = pair(tmp_path)
    ckpt = Checkpoint(after)
    ckpt.tensor("b")  # maps the file
    os.truncate(after, 100)
    with pytest.raises(InputError, match="truncated while reading"):
        ckpt.tensor("w")  # checked before a view is made: no SIGBUS later


def test_a_file_truncated_while_mapped_exits_3_and_keeps_out(tmp_path):
    before, after = pair(tmp_path)
    big = {"w": torch.randn(512, 512)}
    save_file(big, str(after))
    save_file({"w": big["w"] + 1}, str(before))
    out = tmp_path / "report.json"
    out.write_text("previous report")
    script = textwrap.dedent(
        f"""
        import os, sys
        import altgrad_cli.pipeline as pipeline
        real = pipeline.accumulate_tensor
        def truncating(before, after, *args, **kwargs):
            os.truncate({str(after)!r}, 200)  # the views exist: their pages are now gone
            return real(before, after, *args, **kwargs)
        pipeline.accumulate_tensor = truncating
        sys.argv = ["altgrad", "analyze", {str(before)!r}, {str(after)!r}, "-q", "-o", "json",
                    "--out", {str(out)!r}, "--threads", "1"]
        from altgrad_cli.cli.app import main
        main()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and str(after) in lines[0] and "truncated" in lines[0], lines
    assert out.read_text() == "previous report"


def test_output_write_failures_are_one_line(tmp_path, monkeypatch):
    before, after = pair(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(
        cli("analyze", before, after, "--out", blocker / "sub" / "r.json"), 2, "is not a folder"
    )
    env = {"GITHUB_STEP_SUMMARY": str(tmp_path / "missing" / "summary.md")}
    result = cli("analyze", before, after, "--fail-if", "flips > 1e9", env=env)
    one_line(result, 2, "GITHUB_STEP_SUMMARY", "does not exist")
    long_name = tmp_path / ("r" * 250 + ".json")  # 255 bytes: legal, the temp name must be short
    assert cli("analyze", before, after, "-o", "json", "--out", long_name).exit_code == 0
    assert _strict(long_name.read_text())["schema"] == "altgrad.report/2"

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    out = tmp_path / "r.json"
    out.write_text("keep")
    one_line(cli("analyze", before, after, "--out", out), 3, "r.json", "read-only file system")
    assert out.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- text is data


def test_markup_in_names_rules_and_paths_is_printed_literally(tmp_path):
    path = tmp_path / "[red]x[bold].safetensors"
    save_file({"[red]w[/red]": torch.ones(4) / 3, "[/]": torch.ones(4)}, str(path))
    table = cli("analyze", path, path, "-q")
    assert table.exit_code == 0, table.output
    assert "[red]w[/red]" in table.stdout and "[/]" in table.stdout
    one_line(cli("analyze", tmp_path / "[/]nope", path), 3, "[/]nope")
    one_line(cli("analyze", path, path, "--fail-if", "[/] > 1"), 2, "[/] > 1")


def test_control_characters_are_escaped_in_every_output(tmp_path):
    path = tmp_path / "c.safetensors"
    name = "evil\x1b[31m\nname\x07"
    save_file({name: torch.ones(4) / 3}, str(path))
    for output in ("table", "markdown", "csv"):
        result = cli("analyze", path, path, "-q", "-o", output)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout, output
        assert "evil\\x1b[31m\\x0aname\\x07" in result.stdout.replace("\n", ""), output
    junit = tmp_path / "j.xml"
    result = cli("analyze", path, path, "--fail-if", "flips >= 0", "--junit", junit)
    assert result.exit_code == 1
    assert all("\x1b" not in line for line in stderr_lines(result))
    case = ET.parse(junit).getroot().find("./testsuite/testcase")
    assert "evil\\x1b[31m\\x0aname\\x07" in case.get("name")
    assert json.loads(cli("analyze", path, path, "-o", "json").stdout)["layers"][0]["name"] == name
    bad = tmp_path / "new\nline.safetensors"
    one_line(cli("analyze", bad, path), 3, "new\\x0aline")


@pytest.mark.parametrize("value", ["nan", "-inf", "inf", "-1"])
def test_non_finite_or_negative_grad_eps_is_a_usage_error(tmp_path, value):
    before, after = pair(tmp_path)
    one_line(cli("analyze", before, after, "--grad-eps", value), 2, "--grad-eps")


@pytest.mark.parametrize("rule", ["flips > 1e999", "flips > -1e999", "flips > baseline * 1e999"])
def test_rule_numbers_beyond_a_float_are_usage_errors(rule):
    with pytest.raises(UsageError, match="beyond the range"):
        parse_rule(rule)


def test_check_json_stays_strict_when_a_threshold_overflows(report_file):
    result = cli(
        "check", report_file, "--fail-if", "summary.numel > baseline * 1e308",
        "--baseline", report_file, "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # an infinite threshold fails closed
    checks = _strict(result.stdout)
    assert checks["results"][0]["threshold"] is None
    assert checks["results"][0]["message"] == "not a finite number"


def test_deep_json_and_huge_integers_are_input_errors(tmp_path, report_file):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    one_line(cli("check", deep, "--fail-if", "flips > 1"), 3, "deep.json")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text('{"weight_map":' + "[" * 100_000)
    one_line(cli("analyze", folder, folder), 3, "index.json")
    header = write_raw(
        tmp_path / "h.safetensors", b'{"w": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    )
    one_line(cli("analyze", header, header), 3, "h.safetensors")
    offsets = '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 1' + "0" * 5000 + "]}}"
    big = write_raw(tmp_path / "big.safetensors", offsets.encode())
    one_line(cli("analyze", big, big), 3, "big.safetensors")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(layers=5),
        lambda r: r.update(layers=[{}]),
        lambda r: r["layers"][0].update(stall_ratio="0.5"),
        lambda r: r["summary"][0].update(flips=True),
        lambda r: r.update(summary=None),
    ],
)
def test_saved_report_with_the_wrong_shape_is_an_input_error(tmp_path, report_file, mutate):
    report = json.loads(report_file.read_text())
    mutate(report)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(report))
    one_line(cli("check", path, "--fail-if", "stall_ratio > 0.5"), 3, "bad.json")
    one_line(
        cli("check", report_file, "--fail-if", "stall_ratio > baseline", "--baseline", path),
        3,
        "bad.json",
    )


def test_nan_literal_in_a_saved_report_is_an_input_error(tmp_path, report_file):
    text = report_file.read_text().replace('"stall_ratio": ', '"stall_ratio": NaN, "x": ', 1)
    path = tmp_path / "nan.json"
    path.write_text(text)
    one_line(cli("check", path, "--fail-if", "stall_ratio > 0.5"), 3, "nan.json")


# ----------------------------------------------------------------------------- partial data


def test_missing_gradients_are_recorded_per_tensor_and_said_once(tmp_path):
    before, after, grads = pair(tmp_path, names=("w", "b", "c"), grads=("w",))
    result = cli("analyze", before, after, "--grads", grads, "-o", "json")
    assert result.exit_code == 0
    lines = stderr_lines(result)
    assert len(lines) == 1 and "2 of 3 tensors have no gradient" in lines[0], lines
    report = _strict(result.stdout)
    sources = {r["name"]: r["update_source"] for r in report["layers"]}
    assert sources == {"w": "grads", "b": "delta", "c": "delta"}
    assert report["summary"][0]["update_source"] == "mixed"
    # the tensors without a gradient are analysed exactly as in a run without --grads
    plain = _strict(cli("analyze", before, after, "-o", "json").stdout)
    no_grad = {r["name"]: r for r in plain["layers"]}
    for record in report["layers"]:
        if record["name"] != "w":
            assert record["updates"] == no_grad[record["name"]]["updates"]
            assert record["flips"] == no_grad[record["name"]]["flips"]
    # the summary's counts are the sum over tensors, whatever their source
    assert report["summary"][0]["updates"] == sum(r["updates"] for r in report["layers"])
    complete = _strict(cli("analyze", before, after, "--grads", before, "-o", "json").stdout)
    assert complete["summary"][0]["update_source"] == "grads"


def test_baseline_sharing_no_tensor_fails_closed(tmp_path, report_file):
    other = json.loads(report_file.read_text())
    for layer in other["layers"]:
        layer["name"] = "other." + layer["name"]
    other["summary"] = []
    path = tmp_path / "other.json"
    path.write_text(json.dumps(other))
    result = cli("check", report_file, "--fail-if", "stall_ratio > baseline", "--baseline", path)
    one_line(result, 3, "shares no tensor")


def test_comparisons_with_nan_fail_closed(report_file):
    report = json.loads(report_file.read_text())
    report["layers"][0]["stall_ratio"] = math.nan
    for op in ("<", "<=", ">", ">=", "==", "!="):
        results = evaluate(report, [parse_rule(f"stall_ratio {op} 0.5")])
        assert results[0].status == "fail" and results[0].to_dict()["value"] is None
