"""Property-based fuzz of hostile inputs: safetensors headers, sharded indexes, rules and saved
reports. Whatever the input: exit 0, 1, 2 or 3; no traceback, no "internal error"; one stderr
line for an error; and no hang (a generous alarm, not a timing assertion)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile import cli, pair, stderr_lines, write_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from altgrad_cli import analyze
from altgrad_cli.report.render.json_out import render_json

FUZZ = settings(
    max_examples=int(__import__("os").environ.get("ALTGRAD_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TEXT = st.text(
    alphabet=st.sampled_from(list("ab.w_[]/\\0123456789eE+-*<>=! \x00\x1b\n\t`|\u202e")),
    max_size=40,
)
NUMBER = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 4, -1, 2**63, 2**64 + 1]),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBER, TEXT),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=20,
)


def _assert_contained(result) -> None:
    assert result.exit_code in (0, 1, 2, 3), (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = stderr_lines(result)
    if result.exit_code in (2, 3):
        assert len(lines) == 1, lines
    else:  # a run that finished: rule failures and at most one warning per kind
        assert all(line.startswith(("FAIL ", "altgrad: ")) for line in lines), lines


ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I8", "F8_E4M3", "X", 3]),
        "shape": st.one_of(st.lists(st.integers(-1, 5), max_size=3), JSON),
        "data_offsets": st.one_of(st.lists(st.integers(-2, 80), min_size=2, max_size=2), JSON),
    }
)
HEADER = st.one_of(
    st.dictionaries(TEXT, st.one_of(ENTRY, JSON), max_size=4),
    JSON,
)


@FUZZ
@given(
    header=HEADER, data=st.binary(max_size=80), raw=st.booleans(), garbage=st.binary(max_size=30)
)
def test_fuzzed_headers(tmp_path_factory, header, data, raw, garbage):
    tmp = tmp_path_factory.mktemp("h")
    body = garbage if raw else json.dumps(header).encode()
    path = write_raw(tmp / "x.safetensors", body, data)
    _assert_contained(cli("analyze", path, path, "-q", "-o", "json"))


@FUZZ
@given(
    weight_map=st.one_of(
        st.dictionaries(
            st.sampled_from(["w", "b", "c", "model.w"]),
            st.sampled_from(
                [
                    "1.safetensors",
                    "2.safetensors",
                    "../1.safetensors",
                    "/etc/passwd",
                    "",
                    ".",
                    "missing.safetensors",
                    "sub/../1.safetensors",
                    "link.safetensors",
                ]
            ),  # fmt: skip
            max_size=4,
        ),
        JSON,
    ),
    wrap=st.booleans(),
    strip=st.sampled_from([[], ["model."], ["w"]]),
)
def test_fuzzed_indexes(tmp_path_factory, weight_map, wrap, strip):
    import torch
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("i")
    folder = tmp / "m"
    folder.mkdir()
    save_file({"w": torch.ones(2), "model.w": torch.ones(2)}, str(folder / "1.safetensors"))
    save_file({"b": torch.ones(2)}, str(folder / "2.safetensors"))
    (folder / "link.safetensors").symlink_to(folder / "1.safetensors")
    index = {"weight_map": weight_map} if wrap else weight_map
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    args = [a for p in strip for a in ("--strip-prefix", p)]
    _assert_contained(cli("analyze", folder, folder, "-q", "-o", "json", *args))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("r")
    b, a, g = pair(tmp, grads=("w",))
    path = tmp / "report.json"
    path.write_text(render_json(analyze(b, a, grads=g)))
    return path


RULE = st.one_of(
    TEXT,
    st.builds(
        lambda key, op, value: f"{key} {op} {value}",
        st.sampled_from(["stall_ratio", "summary.flips", "ulp.median", "numel", "x", "[/]"]),
        st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "=>", ""]),
        st.one_of(
            NUMBER.map(str),
            st.sampled_from(["1e999", "nan", "baseline", "baseline * 1e308", "9" * 5000]),
            TEXT,
        ),
    ),
)


@FUZZ
@given(rules=st.lists(RULE, min_size=1, max_size=3), layer=st.one_of(st.none(), TEXT))
def test_fuzzed_rules(saved, rules, layer):
    args = [a for r in rules for a in ("--fail-if", r)]
    if layer is not None:
        args += ["--layer", layer]
    _assert_contained(cli("check", saved, *args, "--baseline", saved, "-o", "json"))


def _mutate(report, path: list, value):
    node = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _paths(node, prefix=()):
    yield list(prefix)
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from _paths(child, (*prefix, i))


@FUZZ
@given(data=st.data(), value=JSON, as_baseline=st.booleans())
def test_fuzzed_saved_reports(tmp_path_factory, saved, data, value, as_baseline):
    report = json.loads(saved.read_text())
    paths = [p for p in _paths(report) if p]
    path = data.draw(st.sampled_from(paths))
    _mutate(report, path, value)
    bad = tmp_path_factory.mktemp("m") / "bad.json"
    bad.write_text(json.dumps(report))
    if as_baseline:
        result = cli("check", saved, "--fail-if", "stall_ratio > baseline", "--baseline", bad)
    else:
        result = cli(
            "check", bad, "--fail-if", "stall_ratio > 0.5", "--fail-if", "summary.flips < 0"
        )
    _assert_contained(result)
