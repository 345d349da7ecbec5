"""The HTML report: sections iff their data, offline, deterministic, bounded size; `altgrad render`."""

from __future__ import annotations

import json
import random
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from altgrad_cli.cli.app import app
from altgrad_cli.errors import MissingExtraError
from altgrad_cli.report.render.columns import fmt_number
from altgrad_cli.report.render.html import render_html

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_checkpoints"
GRID_STEP_BINS = ["0", "1", "2", "3", "4-7", "8-15", "16+"]
ALL_SECTIONS = {
    "run",
    "checks",
    "summary",
    "whatif",
    "heatmap",
    "histograms",
    "blocks",
    "stored",
    "layers",
    "skipped",
}


# ---- synthetic reports: every key the analyze and trajectory reports carry -----------------


def _metrics(rng: random.Random, numel: int, block: bool) -> dict:
    updates = rng.randint(numel // 2, numel)
    flips_on = rng.randint(0, updates)
    hist = {k: rng.randint(0, numel) for k in GRID_STEP_BINS}
    record = {
        "numel": numel,
        "nonfinite": 0,
        "updates": updates,
        "update_source": "grads",
        "flips": flips_on + 1,
        "flips_on_updates": flips_on,
        "flips_without_update": 1,
        "flip_rate": (flips_on + 1) / numel,
        "stall_ratio": 1 - flips_on / updates,
        "grid_steps": {"mean": rng.random() * 3, "max": rng.randint(1, 200), "histogram": hist},
        "ulp": {
            "mean": rng.random() * 1e6,
            "median": rng.randint(0, 10**6),
            "max": rng.randint(10**6, 10**9),
            "zero_frac": rng.random() * 0.1,
        },
        "stiffness": {
            "mean": rng.random() * 1e-3,
            "min": 1e-7,
            "max": 1e-2,
            "histogram": {str(k): rng.randint(0, numel) for k in range(-20, -5)} | {"zero": 3},
        },
        "grid_alignment": {
            "mean": rng.random() * 1e-3,
            "max": 1e-2,
            "std": 1e-4,
            "on_grid_frac": rng.random() * 0.01,
            "rel_mean": rng.random() * 0.5,
        },
        "grad_stiffness": {
            "correlation": rng.random() - 0.5,
            "ratio_mean": rng.random() * 5,
            "below_frac": rng.random(),
        },
        "update_stiffness": {
            "ratio_mean": rng.random() * 2,
            "below_half_frac": rng.random(),
            "predicted_vs_actual": {
                "predicted_flip": {"flipped": 1, "not_flipped": 2},
                "predicted_stall": {"flipped": 3, "not_flipped": 4},
            },
        },
        "stored": {
            "rne_moved": flips_on // 2,
            "rne_lost_frac": 1 - (flips_on // 2) / updates,
            "lost_mass_frac": rng.random(),
            "sr_expected_moved": rng.random() * flips_on,
            "sr_moved_std": rng.random() * 10,
        },
        "overflow_frac": rng.random() * 1e-3,
        "underflow_frac": rng.random() * 1e-2,
    }
    if block:
        record["blocks"] = {
            "count": numel // 32,
            "min": 2.0**-12,
            "max": 2.0**-3,
            "log2_histogram": {str(k): rng.randint(0, numel // 32) for k in range(-12, -2)},
            "log2_std": rng.random() * 2,
            "clipped_frac": rng.random() * 0.1,
            "deadzone_frac": rng.random() * 0.05,
            "scale_changed_frac": 0.0,
        }
    return record


def analyze_report(
    tensors: int = 6,
    recipes: tuple[str, ...] = ("e4m3fn", "e4m3fn@block:32:floor", "nvfp4"),
    checks: bool = True,
    skipped: bool = True,
    stored: bool = True,
) -> dict:
    """An analyze-shaped report dict with every metric group, blocks on block recipes."""
    rng = random.Random(17)
    names = [f"model.layers.{i // 4}.mlp.proj_{i % 4}.weight" for i in range(tensors)]
    layers = []
    for name in names:
        numel = rng.choice([4096, 16384, 65536])
        for recipe in recipes:
            block = "@block" in recipe or recipe == "nvfp4"
            record = {
                "name": name,
                "format": recipe,
                "dtype": "BF16",
                "shape": [numel // 64, 64],
                "scale": {"mode": "tensor", "value": 0.001},
                **_metrics(rng, numel, block),
            }
            if not stored:
                del record["stored"]
            layers.append(record)
    summary = []
    for recipe in recipes:
        block = "@block" in recipe or recipe == "nvfp4"
        record = {"format": recipe, "tensors": tensors, **_metrics(rng, 10**6, block)}
        if not stored:
            del record["stored"]
        record["worst"] = [
            {"name": names[0], "stall_ratio": 0.9, "updates": 10, "flips": 1},
        ]
        summary.append(record)
    report = {
        "schema": "altgrad.report/2",
        "inputs": {"before": "run/step_1000", "after": "run/step_1001", "grads": "run/grads"},
        "options": {"formats": list(recipes), "scaling": "tensor", "rescale": False},
        "formats": [],
        "layers": layers,
        "summary": summary,
        "skipped": [{"name": "model.embed.int_ids", "reason": "integer dtype I64"}]
        if skipped
        else [],
    }
    if checks:
        report["checks"] = {
            "rules": ["stall_ratio > 0.9"],
            "passed": False,
            "failures": 1,
            "results": [
                {
                    "rule": "stall_ratio > 0.9",
                    "target": names[0],
                    "format": recipes[0],
                    "value": 0.95,
                    "threshold": 0.9,
                    "status": "fail",
                    "message": "",
                },
                {
                    "rule": "stall_ratio > 0.9",
                    "target": "summary",
                    "format": recipes[0],
                    "value": 0.5,
                    "threshold": 0.9,
                    "status": "pass",
                    "message": "",
                },
            ],
        }
    return report


def trajectory_report(tensors: int = 4, steps: int = 5) -> dict:
    """A trajectory-shaped report: per (tensor, recipe) flips per step and oscillation."""
    rng = random.Random(5)
    layers = []
    for i in range(tensors):
        for recipe in ("e4m3fn", "nvfp4"):
            numel = 4096
            flips = [rng.randint(0, numel) for _ in range(steps)]
            layers.append(
                {
                    "name": f"block.{i}.weight",
                    "format": recipe,
                    "dtype": "F32",
                    "shape": [64, 64],
                    "numel": numel,
                    "steps": steps,
                    "flips_per_step": flips,
                    "ever_flipped_frac": rng.random(),
                    "frozen_frac": rng.random(),
                    "net_flipped_frac": rng.random(),
                    "flip_backs": rng.randint(0, 100),
                    "oscillation_rate": rng.random(),
                    "path_efficiency": rng.random(),
                    "frozen_run_mean": rng.random() * steps,
                }
            )
    return {
        "schema": "altgrad.trajectory/1",
        "inputs": {"checkpoints": [f"ckpt/step_{t}" for t in range(steps + 1)]},
        "options": {"formats": ["e4m3fn", "nvfp4"], "fixed_scale": False},
        "formats": [],
        "layers": layers,
        "summary": [],
        "skipped": [],
    }


def sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([a-z]+)"', page))


def section(page: str, sid: str) -> str:
    start = page.index(f'<section id="{sid}"')
    return page[start : page.index("</section>", start)]


def plots_in(page: str, sid: str) -> int:
    return section(page, sid).count('class="plot"')


# ---- structure ----------------------------------------------------------------------------


def test_every_section_for_a_report_with_all_data():
    page = render_html(analyze_report())
    assert sections(page) == ALL_SECTIONS
    assert plots_in(page, "heatmap") == 1
    assert section(page, "heatmap") and page.count('"type":"heatmap"') == 2  # stall, flips
    assert plots_in(page, "histograms") == 2  # stiffness and grid steps
    assert plots_in(page, "blocks") == 1
    assert plots_in(page, "whatif") == 1
    # the stored table shows every stored key, and block rows only for block recipes
    stored = section(page, "stored")
    for header in ("RNE moved", "RNE lost", "lost mass", "SR expected moved", "SR std"):
        assert f">{header}</th>" in stored
    blocks = section(page, "blocks")
    assert "nvfp4" in blocks and "e4m3fn@block:32:floor" in blocks
    assert "<td>e4m3fn</td>" not in blocks
    assert "FAIL" in section(page, "checks") and "badge fail" in section(page, "run")
    # every plot div has a figure drawn into it, once
    ids = re.findall(r'<div class="plot" id="(plot-\d+)"', page)
    assert ids == [f"plot-{i}" for i in range(1, len(ids) + 1)]
    assert re.findall(r'Plotly\.newPlot\("(plot-\d+)"', page) == ids


def test_no_section_without_its_data():
    report = analyze_report(recipes=("e4m3fn",), checks=False, skipped=False, stored=False)
    page = render_html(report)
    assert sections(page) == {"run", "summary", "heatmap", "histograms", "layers"}
    for absent in ("RNE", "Block scales", "What-if", "Checks", "Skipped", "Trajectory"):
        assert f"<h2>{absent}" not in page
    empty = {"schema": "altgrad.report/2", "inputs": {}, "options": {}, "layers": []}
    assert sections(render_html(empty)) == {"run"}


def test_trajectory_sections():
    page = render_html(trajectory_report())
    assert sections(page) == {"run", "trajectory", "layers"}
    traj = section(page, "trajectory")
    # flips per step (all tensors), oscillation per layer, flips per step per tensor
    assert traj.count('class="plot"') == 3
    assert ">oscillation</th>" in section(page, "layers")
    # the all-tensor series is the sum over tensors, step by step
    report = trajectory_report()
    total = [
        sum(r["flips_per_step"][t] for r in report["layers"] if r["format"] == "e4m3fn")
        for t in range(5)
    ]
    assert f'"y":{json.dumps(total, separators=(",", ":"))}' in page


def test_layers_worst_first_and_values_kept():
    report = analyze_report(tensors=8)
    page = render_html(report)
    worst = {}
    for r in report["layers"]:
        worst[r["name"]] = max(worst.get(r["name"], 0.0), r["stall_ratio"])
    expected = sorted(worst, key=lambda n: (-worst[n], n))
    table = section(page, "layers")
    shown = list(dict.fromkeys(re.findall(r'<td class="m">([^<]+)</td>', table)))
    assert shown == expected
    # the heat map's rows follow the same order and hold the exact values
    m = re.search(r'"z":(\[\[.*?\]\]),"x":(\[[^\]]*\]),"y":(\[[^\]]*\])', page)
    z, x, y = (json.loads(g) for g in m.groups())
    assert y == expected
    by = {(r["name"], r["format"]): r["stall_ratio"] for r in report["layers"]}
    assert z == [[by[(n, f)] for f in x] for n in y]
    # a sortable cell keeps a finer key than the text it rounds (the JS sorts by it)
    v = report["layers"][0]["stall_ratio"]
    assert f'data-v="{v:.6g}">{fmt_number(v)}<' in page


# ---- offline, deterministic, size -----------------------------------------------------------


class _Refs(HTMLParser):
    """Every URL-bearing attribute and every <script>/<link> tag of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        for name in ("src", "href", "action", "srcset", "poster", "data", "formaction"):
            if attrs.get(name) is not None:
                self.urls.append(attrs[name])


REMOTE = re.compile(r"^\s*(https?:|//|ftp:|wss?:)", re.I)


@pytest.mark.parametrize("make", [analyze_report, trajectory_report])
def test_offline(make):
    from plotly.offline import get_plotlyjs

    page = render_html(make())
    refs = _Refs()
    refs.feed(page)
    assert [u for u in refs.urls if REMOTE.match(u)] == []
    assert all(u.startswith("#") for u in refs.urls)  # only in-page links
    assert not [t for t, a in refs.tags if t == "script" and "src" in a]
    assert not [t for t, a in refs.tags if t in ("link", "iframe", "img", "object", "embed")]
    # the browser is told to refuse any request, whatever a script tries
    csp = [a["content"] for t, a in refs.tags if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "connect-src 'none'" in csp[0]
    # outside plotly's own bundle (whose map-tile and logo URLs only map plots would use),
    # no URL at all: no remote font, stylesheet, image or url()
    ours = page.replace(get_plotlyjs(), "")
    assert len(ours) < len(page) - 1_000_000
    assert re.findall(r"https?://|url\(|@import", ours) == []


def test_deterministic_bytes():
    report = analyze_report()
    first = render_html(report)
    assert render_html(json.loads(json.dumps(report))) == first
    assert not re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", first)  # no uuid div ids


def test_size_200_tensors_4_recipes():
    recipes = ("e4m3fn", "e5m2", "e4m3fn@block:32:floor", "nvfp4")
    page = render_html(analyze_report(tensors=200, recipes=recipes))
    assert sections(page) == ALL_SECTIONS
    assert len(page.encode()) <= 6_000_000


def test_text_is_escaped():
    report = analyze_report(tensors=1, recipes=("e4m3fn",))
    report["layers"][0]["name"] = "<script>alert(1)</script>"
    report["inputs"]["before"] = '"><img src=x>'
    page = render_html(report)
    assert "<script>alert(1)" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # in a plot label the name is entities (plotly reads tags in labels), and the figure script
    # holds no `<` at all, so no data can end it
    assert '"y":["&lt;script&gt;alert(1)&lt;/script&gt;"]' in page
    plots = page[page.rindex("<script>") + len("<script>") : page.rindex("</script>")]
    assert "Plotly.newPlot" in plots and "<" not in plots


def test_missing_plotly_is_one_line_exit_3(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    with pytest.raises(MissingExtraError, match=r"altgrad-cli\[html\]"):
        render_html(analyze_report())
    path = tmp_path / "r.json"
    path.write_text(json.dumps(analyze_report()))
    result = CliRunner().invoke(app, ["render", str(path), "-o", "html"])
    assert result.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "altgrad-cli[html]" in lines[0]
    # analyze says so before it reads a single tensor
    missing = tmp_path / "missing.safetensors"
    result = CliRunner().invoke(app, ["analyze", str(missing), str(missing), "-o", "html"])
    assert result.exit_code == 3 and "altgrad-cli[html]" in result.stderr
    assert "missing.safetensors" not in result.stderr


# ---- altgrad render ---------------------------------------------------------------------------


def _analyze(*extra: str) -> str:
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(SAMPLE / "before.safetensors"),
            str(SAMPLE / "after.safetensors"),
            "--grads",
            str(SAMPLE / "grads.safetensors"),
            "-f",
            "e4m3fn",
            "-f",
            "e2m1fn",
            *extra,
        ],
    )
    assert result.exit_code in (0, 1), result.output
    return result.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("render") / "report.json"
    path.write_text(_analyze("-o", "json", "--fail-if", "stall_ratio > 0.95"), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "markdown", "table", "html"])
def test_render_round_trip(saved, fmt):
    """render of the saved JSON gives the same bytes as analyze printed in that format."""
    direct = _analyze("-o", fmt, "--fail-if", "stall_ratio > 0.95")
    result = CliRunner().invoke(app, ["render", str(saved), "-o", fmt])
    assert result.exit_code == 0, result.output
    assert result.stdout == direct
    if fmt == "json":
        assert result.stdout == saved.read_text(encoding="utf-8")


def test_render_out_file(saved, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["render", str(saved), "-o", "html", "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    "content, problem",
    [
        (json.dumps({"schema": "altgrad.report/0", "layers": []}), "schema 'altgrad.report/0'"),
        (json.dumps({"layers": []}), "no schema"),
        (json.dumps([1, 2]), "no schema"),
        ("{not json", "not a valid JSON report"),
        ('{"schema": "altgrad.report/2", "x": NaN}', "NaN is not JSON"),
        (json.dumps({"schema": "altgrad.report/2", "layers": [{}]}), "malformed report"),
    ],
)
def test_render_foreign_json_exit_3(tmp_path, content, problem):
    path = tmp_path / "foreign.json"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(app, ["render", str(path), "-o", "csv"])
    assert result.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and str(path) in lines[0]


def test_render_missing_file_exit_3(tmp_path):
    result = CliRunner().invoke(app, ["render", str(tmp_path / "nope.json")])
    assert result.exit_code == 3
    assert "no such file" in result.stderr
