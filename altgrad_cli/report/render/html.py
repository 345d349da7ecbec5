"""HTML: one self-contained, offline page drawn from the report's JSON form, plots by plotly.js.

It reads the dict that `--output json` prints (so a saved report renders the same as a fresh one,
and new metric groups need no new report type here), and shows a section only when the report
holds its data. plotly's JavaScript is inlined and a Content-Security-Policy forbids every network
request, so the page opens the same on a laptop in a train and in a CI artifact viewer. Figures
get fixed div ids and no timestamp is written: the same report gives the same bytes.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any

from altgrad_cli.errors import MissingExtraError
from altgrad_cli.report.render.columns import fmt_number

Record = dict[str, Any]

# Colours: one per recipe, in report order (plotly's qualitative default, colour-blind friendly
# enough for up to 10 recipes); heat maps run white (good) to dark red (stalled).
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
HEAT = [[0.0, "#fff7ec"], [0.5, "#fc8d59"], [1.0, "#7f0000"]]
MOVE = [[0.0, "#f7fbff"], [0.5, "#6baed6"], [1.0, "#08306b"]]  # flip rate: more is movement
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
PLOT_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"scale": 2},
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines"],
}

# Every request is refused by the browser itself, not only absent from the markup.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)

# (header, dotted key, what it means) of the per-layer table; a column shows iff some row has it.
LAYER_COLUMNS = [
    ("updates", "updates", "elements the step updated"),
    ("flips", "flips", "elements whose code changed"),
    ("flip rate", "flip_rate", "flips / numel"),
    ("stall ratio", "stall_ratio", "1 − flips on updates / updates"),
    ("steps mean", "grid_steps.mean", "mean |code change|"),
    ("ulp median", "ulp.median", "median storage ULPs moved"),
    ("on grid", "grid_alignment.on_grid_frac", "share of BEFORE exactly on the grid"),
    ("err/S", "grid_alignment.rel_mean", "mean grid error over the grid step"),
    ("|g|/S", "grad_stiffness.ratio_mean", "mean |grad| over the grid step"),
    ("|Δ|/S", "update_stiffness.ratio_mean", "mean |update| over the grid step"),
    ("overflow", "overflow_frac", "share that clips"),
    ("underflow", "underflow_frac", "non-zero share that rounds to 0"),
]
SUMMARY_COLUMNS = [("tensors", "tensors", "tensors analysed"), ("numel", "numel", "elements")] + [
    c for c in LAYER_COLUMNS if c[1] != "ulp.median"
]
STORED_COLUMNS = [
    ("updates", "updates", "elements the step updated"),
    ("RNE moved", "stored.rne_moved", "stored weights a round-to-nearest update moves"),
    ("RNE lost", "stored.rne_lost_frac", "1 − RNE moved / updates"),
    ("lost mass", "stored.lost_mass_frac", "share of Σ|Δ| that round-to-nearest throws away"),
    ("SR expected moved", "stored.sr_expected_moved", "expected moves under stochastic rounding"),
    ("SR std", "stored.sr_moved_std", "standard deviation of that count"),
]
BLOCK_COLUMNS = [
    ("scales", "blocks.count", "element scales (groups)"),
    ("min s", "blocks.min", "smallest scale"),
    ("max s", "blocks.max", "largest scale"),
    ("log2 s std", "blocks.log2_std", "spread of log2 s"),
    ("clipped", "blocks.clipped_frac", "groups whose largest element saturates"),
    ("dead zone", "blocks.deadzone_frac", "non-zero elements that round to 0"),
    ("scale changed", "blocks.scale_changed_frac", "groups whose scale moved (--rescale)"),
]
WHATIF_COLUMNS = [
    ("stall ratio", "stall_ratio", "1 − flips on updates / updates"),
    ("flip rate", "flip_rate", "flips / numel"),
    ("steps mean", "grid_steps.mean", "mean |code change|"),
    ("on grid", "grid_alignment.on_grid_frac", "share of BEFORE on the grid"),
    ("err/S", "grid_alignment.rel_mean", "mean grid error over the grid step"),
    ("overflow", "overflow_frac", "share that clips"),
    ("underflow", "underflow_frac", "non-zero share that rounds to 0"),
    ("RNE lost", "stored.rne_lost_frac", "stored weights: updates round-to-nearest loses"),
    ("lost mass", "stored.lost_mass_frac", "stored weights: share of Σ|Δ| lost"),
    ("clipped blocks", "blocks.clipped_frac", "groups whose largest element saturates"),
    ("dead zone", "blocks.deadzone_frac", "non-zero elements that round to 0"),
    ("scale changed", "blocks.scale_changed_frac", "groups whose scale moved"),
]
TRAJECTORY_COLUMNS = [
    ("steps", "steps", "checkpoint pairs"),
    ("ever flipped", "ever_flipped_frac", "share whose code changed at least once"),
    ("frozen", "frozen_frac", "share that never changed"),
    ("net flipped", "net_flipped_frac", "share whose last code differs from the first"),
    ("flip-backs", "flip_backs", "codes returning to where they were a step earlier"),
    ("oscillation", "oscillation_rate", "flip-backs / flips of steps 2 … n"),
    ("path efficiency", "path_efficiency", "net code distance / path length"),
    ("frozen run", "frozen_run_mean", "mean longest run of steps without a flip"),
]
GRID_STEP_BINS = ["0", "1", "2", "3", "4-7", "8-15", "16+"]


def render_html(report: Record) -> str:
    """The report's JSON form (`Report.to_dict()` or a loaded file) as one HTML page."""
    plotly_js = _plotly_js()
    page = _Page(report)
    body = "\n".join(part for part in page.sections() if part)
    title = "altgrad " + ("trajectory" if page.is_trajectory else "report")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}: {_e(page.subtitle)}</title>\n"
        f"<style>{STYLE}</style>\n"
        f"<script>{plotly_js}</script>\n"
        "</head>\n<body>\n<main>\n"
        f"{body}\n"
        "</main>\n"
        f"<script>{SORT_JS}</script>\n"
        f"<script>\n{page.plot_script()}</script>\n"
        "</body>\n</html>\n"
    )


def require_plotly() -> None:
    """Fail before a long analysis, not after it, when the `html` extra is missing."""
    _plotly_js()


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as error:
        raise MissingExtraError(
            "--output html needs plotly: pip install 'altgrad-cli[html]'"
        ) from error
    return get_plotlyjs()


def _version() -> str:
    try:
        return metadata.version("altgrad-cli")
    except metadata.PackageNotFoundError:
        return "unknown"


def get(record: Record, key: str) -> Any:
    """A dotted key of a record, None when absent (sections tolerate missing metric groups)."""
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _num(v: Any) -> str:
    return _e(fmt_number(v)) if v is None or isinstance(v, (int, float)) else _e(v)


def _json(value: Any) -> str:
    """JSON for inside a <script>: strict (no NaN), with no `<` that could end the element."""
    return json.dumps(value, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")


def _label(text: str) -> str:
    """A tensor or recipe name as a plot label: plotly reads a few HTML tags in labels, and a
    name from a checkpoint is data, so its angle brackets become entities plotly displays."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Page:
    """The sections of one report, in reading order, and the plots they hold."""

    def __init__(self, report: Record) -> None:
        self.report = report
        self.layers: list[Record] = [r for r in report.get("layers") or [] if isinstance(r, dict)]
        self.summary: list[Record] = [r for r in report.get("summary") or [] if isinstance(r, dict)]
        self.recipes = _unique(
            [str(r.get("format")) for r in self.summary]
            + [str(r.get("format")) for r in self.layers]
        )
        self.is_trajectory = str(report.get("schema", "")).startswith("altgrad.trajectory") or any(
            "flips_per_step" in r for r in self.layers
        )
        self.figures: list[tuple[str, dict[str, Any]]] = []
        inputs = _dict(report.get("inputs"))
        if isinstance(inputs.get("checkpoints"), list) and inputs["checkpoints"]:
            names = [str(c) for c in inputs["checkpoints"]]
            self.subtitle = f"{names[0]} … {names[-1]} ({len(names)} checkpoints)"
        else:
            self.subtitle = f"{inputs.get('before', '?')} → {inputs.get('after', '?')}"
        self.layer_order = self._worst_first()

    # ---- helpers -------------------------------------------------------------------------

    def color(self, recipe: str) -> str:
        return PALETTE[self.recipes.index(recipe) % len(PALETTE)]

    def _worst_first(self) -> list[str]:
        """Tensor names, the worst (highest stall, or oscillation for trajectories) first."""
        key = "oscillation_rate" if self.is_trajectory else "stall_ratio"
        worst: dict[str, float] = {}
        for r in self.layers:
            v = get(r, key)
            name = str(r.get("name"))
            score = v if isinstance(v, (int, float)) else -1.0
            worst[name] = max(worst.get(name, -1.0), score)
        return sorted(worst, key=lambda n: (-worst[n], n))

    def rows_worst_first(self, records: Iterable[Record]) -> list[Record]:
        rank = {name: i for i, name in enumerate(self.layer_order)}
        order = {recipe: i for i, recipe in enumerate(self.recipes)}
        return sorted(
            records,
            key=lambda r: (rank.get(str(r.get("name")), 0), order.get(str(r.get("format")), 0)),
        )

    def figure(self, data: list[dict[str, Any]], layout: dict[str, Any]) -> str:
        """A div for one plot, with an id fixed by its position (plotly's own are random)."""
        div_id = f"plot-{len(self.figures) + 1}"
        base = {
            "font": {"family": FONT, "size": 12, "color": "#222"},
            "paper_bgcolor": "#fff",
            "plot_bgcolor": "#fff",
            "margin": {"l": 60, "r": 20, "t": 36, "b": 48},
            "hoverlabel": {"font": {"family": FONT}},
        }
        base.update(layout)
        self.figures.append((div_id, {"data": data, "layout": base}))
        height = int(base.get("height", 360))
        return f'<div class="plot" id="{div_id}" style="height:{height}px"></div>'

    def plot_script(self) -> str:
        lines = [
            f"var altgradConfig = {_json(PLOT_CONFIG)};",
            # printing lays the page out narrower: redraw each plot to the paper's width
            'window.addEventListener("beforeprint", function () {',
            '  document.querySelectorAll(".js-plotly-plot").forEach(function (d) {',
            "    Plotly.Plots.resize(d);",
            "  });",
            "});",
        ]
        for div_id, fig in self.figures:
            lines.append(
                f'Plotly.newPlot("{div_id}", {_json(fig["data"])}, {_json(fig["layout"])}, '
                "altgradConfig);"
            )
        return "\n".join(lines) + "\n"

    # ---- sections ------------------------------------------------------------------------

    def sections(self) -> list[str]:
        builders: list[Callable[[], str]] = [
            self.run_header,
            self.checks,
            self.summary_section,
            self.whatif,
            self.heatmap,
            self.trajectory,
            self.histograms,
            self.blocks,
            self.stored,
            self.layer_table,
            self.skipped,
        ]
        parts = [build() for build in builders]
        toc = [
            f'<a href="#{sid}">{_e(label)}</a>'
            for sid, label in TOC
            if any(p.startswith(f'<section id="{sid}"') for p in parts)
        ]
        nav = '<nav class="toc">' + " · ".join(toc) + "</nav>"
        return [parts[0], nav, *parts[1:]]

    def run_header(self) -> str:
        r = self.report
        inputs = _dict(r.get("inputs"))
        options = _dict(r.get("options"))
        rows = []
        for key, value in inputs.items():
            if isinstance(value, list):
                value = ", ".join(map(str, value))
            rows.append(f"<tr><th>{_e(key)}</th><td><code>{_e(value)}</code></td></tr>")
        opts = [
            f"<tr><th>{_e(k)}</th><td>{_e(_plain(v))}</td></tr>"
            for k, v in options.items()
            if v not in (None, [], "")
        ]
        formats = [f for f in r.get("formats") or [] if isinstance(f, dict)]
        fmt_text = ", ".join(
            f"{f.get('name')} (E{f.get('exponent_bits')}M{f.get('mantissa_bits')}, max {fmt_number(f.get('max'))})"
            for f in formats
        )
        if fmt_text:
            opts.append(f"<tr><th>format details</th><td>{_e(fmt_text)}</td></tr>")
        badge = ""
        checks = r.get("checks")
        if isinstance(checks, dict) and "passed" in checks:
            ok = bool(checks.get("passed"))
            failures = checks.get("failures")
            text = (
                "checks pass"
                if ok
                else "1 check fails"
                if failures == 1
                else f"{_e(failures)} checks fail"
            )
            badge = f' <a href="#checks" class="badge {"pass" if ok else "fail"}">{text}</a>'
        title = "altgrad trajectory" if self.is_trajectory else "altgrad report"
        return (
            '<section id="run" class="run">'
            f"<h1>{_e(title)}{badge}</h1>"
            f'<p class="sub">{_e(self.subtitle)}</p>'
            '<div class="cols">'
            f'<table class="kv"><caption>inputs</caption>{"".join(rows)}</table>'
            f'<table class="kv"><caption>options</caption>{"".join(opts)}</table>'
            "</div>"
            f'<p class="meta">report schema <code>{_e(r.get("schema", "?"))}</code> · '
            f"{len(self.layers)} records, {len(self.layer_order)} tensors, "
            f"{len(self.recipes)} recipe{'s' if len(self.recipes) != 1 else ''} · "
            f"rendered by altgrad {_e(_version())}</p>"
            "</section>"
        )

    def summary_section(self) -> str:
        if not self.summary:
            return ""
        if self.is_trajectory:
            columns = [c for c in TRAJECTORY_COLUMNS if _present(self.summary, c[1])]
        else:
            columns = [c for c in SUMMARY_COLUMNS if _present(self.summary, c[1])]
        table = _table(
            [("recipe", "format", "")] + columns,
            self.summary,
            first=lambda r: (
                f'<span class="dot" style="background:{self.color(str(r.get("format")))}"></span>{_e(r.get("format"))}'
            ),
            sortable=False,
        )
        worst = []
        for s in self.summary:
            items = [w for w in s.get("worst") or [] if isinstance(w, dict)]
            if not items:
                continue
            key = "oscillation_rate" if self.is_trajectory else "stall_ratio"
            text = ", ".join(
                f"<code>{_e(w.get('name'))}</code> {_num(w.get(key))}" for w in items[:5]
            )
            worst.append(f"<li><b>{_e(s.get('format'))}</b>: {text}</li>")
        worst_html = (
            f'<p class="note">Worst tensors by {"oscillation rate" if self.is_trajectory else "stall ratio"}:</p><ul class="worst">{"".join(worst)}</ul>'
            if worst
            else ""
        )
        return (
            '<section id="summary"><h2>Summary per recipe</h2>'
            '<p class="note">Counts summed over tensors, ratios recomputed from the sums.</p>'
            f"{table}{worst_html}</section>"
        )

    def whatif(self) -> str:
        if len(self.summary) < 2 or self.is_trajectory:
            return ""
        columns = [c for c in WHATIF_COLUMNS if _present(self.summary, c[1])]
        table = _table(
            [("recipe", "format", "")] + columns,
            self.summary,
            first=lambda r: (
                f'<span class="dot" style="background:{self.color(str(r.get("format")))}"></span>{_e(r.get("format"))}'
            ),
            sortable=False,
            best={"stall_ratio": min, "overflow_frac": min, "underflow_frac": min},
        )
        bars = []
        for header, key, _ in columns[:2]:
            bars.append(
                {
                    "type": "bar",
                    "name": header,
                    "x": [_label(str(s.get("format"))) for s in self.summary],
                    "y": [get(s, key) for s in self.summary],
                    "hovertemplate": f"%{{x}}<br>{header} %{{y:.4f}}<extra></extra>",
                }
            )
        fig = self.figure(
            bars,
            {
                "barmode": "group",
                "height": 250,
                "yaxis": {"title": {"text": "share"}, "rangemode": "tozero", "gridcolor": "#eee"},
                "legend": {"orientation": "h", "y": 1.12},
                "colorway": ["#d62728", "#1f77b4"],
            },
        )
        return (
            '<section id="whatif"><h2>What-if: the recipes side by side</h2>'
            '<p class="note">The same step under each recipe; the lowest stall ratio, overflow '
            "and underflow are bold.</p>"
            f"{table}{fig}</section>"
        )

    def heatmap(self) -> str:
        if not self.layers or self.is_trajectory:
            return ""
        maps = [
            (key, label, colors)
            for key, label, colors in (
                ("stall_ratio", "stall ratio", HEAT),
                ("flip_rate", "flip rate", MOVE),
            )
            if _present(self.layers, key)
        ]
        if not maps:
            return ""
        return (
            '<section id="heatmap"><h2>Layer × recipe</h2>'
            '<p class="note">Tensors ordered worst first (highest stall ratio in any recipe). '
            "Hover a cell for its numbers.</p>"
            f"{self._layer_recipe_map(maps)}</section>"
        )

    def _layer_recipe_map(
        self, maps: list[tuple[str, str, list[Any]]], hover_extra: bool = True
    ) -> str:
        """Heat maps of layer × recipe side by side in one figure, sharing the layer axis."""
        cells: dict[tuple[str, str], Record] = {
            (str(r.get("name")), str(r.get("format"))): r for r in self.layers
        }
        custom = [
            [
                [_count(get(cells.get((name, recipe)), k)) for k in ("flips", "updates", "numel")]
                for recipe in self.recipes
            ]
            for name in self.layer_order
        ]
        n = len(self.layer_order)
        small = n * len(self.recipes) <= 240
        tall = n > 40
        gap = 0.12 if len(maps) > 1 else 0.0
        width = (1.0 - gap * (len(maps) - 1)) / len(maps)
        traces: list[dict[str, Any]] = []
        layout: dict[str, Any] = {"annotations": []}
        longest = max((len(r) for r in self.recipes), default=0)
        for i, (key, label, colorscale) in enumerate(maps):
            axis = "" if i == 0 else str(i + 1)
            left = i * (width + gap)
            z = []
            for name in self.layer_order:
                row = []
                for recipe in self.recipes:
                    v = get(cells.get((name, recipe)), key)
                    row.append(v if isinstance(v, (int, float)) else None)
                z.append(row)
            trace: dict[str, Any] = {
                "type": "heatmap",
                "z": z,
                "x": [_label(r) for r in self.recipes],
                "y": [_label(name) for name in self.layer_order],
                "xaxis": f"x{axis}",
                "yaxis": "y",
                "zmin": 0,
                "colorscale": colorscale,
                "xgap": 1,
                "ygap": 1,
                "colorbar": {
                    "title": {"text": label, "side": "right"},
                    "thickness": 10,
                    "x": left + width + 0.005,
                    "xanchor": "left",
                    "len": min(1.0, 320 / (110 + 18 * n)),
                    "y": 1,
                    "yanchor": "top",
                },
                "hovertemplate": (
                    f"<b>%{{y}}</b><br>%{{x}}<br>{label} %{{z:.4f}}"
                    + (
                        "<br>flips %{customdata[0]} of %{customdata[1]} updates, "
                        "%{customdata[2]} elements"
                        if hover_extra
                        else ""
                    )
                    + "<extra></extra>"
                ),
            }
            if key in ("stall_ratio", "oscillation_rate"):
                trace["zmax"] = 1  # a ratio in [0, 1]: one colour, one stall, in any report
            if hover_extra:
                trace["customdata"] = custom
            if small:
                trace["texttemplate"] = "%{z:.2f}"
                trace["textfont"] = {"size": 11}
            traces.append(trace)
            layout[f"xaxis{axis}"] = {
                "domain": [left, left + width - 0.01],
                "type": "category",
                "tickangle": -30 if longest * len(self.recipes) > 40 * len(maps) else 0,
                "automargin": True,
                # a tall map names its recipes at the top, where the worst layers are
                "side": "top" if tall else "bottom",
            }
            layout["annotations"].append(
                {
                    "text": f"<b>{label}</b>",
                    "x": left,
                    "xref": "paper",
                    "xanchor": "left",
                    "y": 0 if tall else 1,
                    "yref": "paper",
                    "yanchor": "top" if tall else "bottom",
                    "yshift": -4 if tall else 4,
                    "showarrow": False,
                    "font": {"size": 13},
                }
            )
        layout.update(
            {
                "height": 130 + (14 if tall else 22) * n,
                "margin": {"l": 10, "r": 60, "t": 30, "b": 30 if tall else 10},
                "yaxis": {
                    "autorange": "reversed",
                    "type": "category",
                    "automargin": True,
                    # every layer named, not every other one
                    "tickmode": "linear",
                    "dtick": 1,
                    "tickfont": {"size": 10 if tall else 12},
                },
            }
        )
        return self.figure(traces, layout)

    def histograms(self) -> str:
        parts = []
        stiff = [s for s in self.summary if isinstance(get(s, "stiffness.histogram"), dict)]
        if any(get(s, "stiffness.histogram") for s in stiff):
            bins = sorted(
                {k for s in stiff for k in get(s, "stiffness.histogram") if k != "zero"},
                key=lambda k: int(k) if _is_int(k) else 0,
            )
            has_zero = any("zero" in get(s, "stiffness.histogram") for s in stiff)
            labels = [f"2^{k}" for k in bins] + (["zero"] if has_zero else [])
            keys = bins + (["zero"] if has_zero else [])
            traces = [
                self._share_bars(
                    str(s.get("format")),
                    labels,
                    [get(s, "stiffness.histogram").get(k, 0) for k in keys],
                )
                for s in stiff
            ]
            parts.append(
                "<h3>Stiffness S (the grid step at each weight)</h3>"
                '<p class="note">Share of weights per binade of S, all tensors; <i>zero</i>: '
                "weights that are exactly 0. An update smaller than S/2 cannot flip the weight.</p>"
                + self.figure(
                    traces,
                    _bar_layout("floor(log2 S)", 320),
                )
            )
        steps = [s for s in self.summary if isinstance(get(s, "grid_steps.histogram"), dict)]
        if steps:
            keys = [
                k for k in GRID_STEP_BINS if any(k in get(s, "grid_steps.histogram") for s in steps)
            ]
            keys += sorted(
                {k for s in steps for k in get(s, "grid_steps.histogram") if k not in keys}
            )
            traces = [
                self._share_bars(
                    str(s.get("format")),
                    keys,
                    [get(s, "grid_steps.histogram").get(k, 0) for k in keys],
                )
                for s in steps
            ]
            parts.append(
                "<h3>Grid steps moved</h3>"
                '<p class="note">Share of weights by |code(after) − code(before)|, all tensors; '
                "0 is a weight the step did not move on the grid.</p>"
                + self.figure(traces, _bar_layout("grid steps", 300))
            )
        if not parts:
            return ""
        return '<section id="histograms"><h2>Histograms</h2>' + "".join(parts) + "</section>"

    def _share_bars(self, recipe: str, labels: list[str], counts: list[Any]) -> dict[str, Any]:
        counts = [c if isinstance(c, (int, float)) else 0 for c in counts]
        total = sum(counts)
        return {
            "type": "bar",
            "name": _label(recipe),
            "x": labels,
            "y": [c / total if total else 0 for c in counts],
            "customdata": counts,
            "marker": {"color": self.color(recipe)},
            "hovertemplate": f"{_label(recipe)}<br>%{{x}}: %{{customdata:,}} (%{{y:.2%}})<extra></extra>",
        }

    def blocks(self) -> str:
        rows = [r for r in self.layers if isinstance(r.get("blocks"), dict)]
        if not rows:
            return ""
        by_recipe: dict[str, dict[str, int]] = {}
        summaries = {str(s.get("format")): s for s in self.summary}
        for recipe in self.recipes:
            hist = get(summaries.get(recipe, {}), "blocks.log2_histogram")
            if isinstance(hist, dict):
                by_recipe[recipe] = {k: v for k, v in hist.items()}
                continue
            merged: dict[str, int] = {}
            for r in rows:
                if r.get("format") == recipe:
                    for k, v in (get(r, "blocks.log2_histogram") or {}).items():
                        merged[k] = merged.get(k, 0) + (v if isinstance(v, int) else 0)
            if merged:
                by_recipe[recipe] = merged
        bins = sorted(
            {k for h in by_recipe.values() for k in h}, key=lambda k: int(k) if _is_int(k) else 0
        )
        traces = [
            self._share_bars(recipe, [f"2^{k}" for k in bins], [h.get(k, 0) for k in bins])
            for recipe, h in by_recipe.items()
        ]
        fig = (
            self.figure(traces, _bar_layout("floor(log2 s), element scale s", 300))
            if traces
            else ""
        )
        columns = [c for c in BLOCK_COLUMNS if _present(rows, c[1])]
        table = _table(
            [("tensor", "name", ""), ("recipe", "format", "")] + columns,
            self.rows_worst_first(rows),
        )
        return (
            '<section id="blocks"><h2>Block scales</h2>'
            '<p class="note">The element scales s of BEFORE under each block-scaled recipe: '
            "their spread, the groups whose largest element clips, and the elements lost to "
            "the dead zone.</p>"
            f"{fig}{table}</section>"
        )

    def stored(self) -> str:
        rows = [r for r in self.layers if isinstance(r.get("stored"), dict)]
        if not rows:
            return ""
        columns = [c for c in STORED_COLUMNS if _present(rows, c[1])]
        summary = [s for s in self.summary if isinstance(s.get("stored"), dict)]
        head = ""
        if summary:
            head = "<h3>All tensors</h3>" + _table(
                [("recipe", "format", "")] + columns, summary, sortable=False
            )
        return (
            '<section id="stored"><h2>Stored weights: no master copy</h2>'
            '<p class="note">What if the weights were kept in the format itself: round-to-nearest '
            "(RNE) updates that would not move the stored weight, the share of the step they "
            "throw away, and what stochastic rounding (SR) would move instead.</p>"
            f"{head}<h3>Per tensor</h3>"
            + _table(
                [("tensor", "name", ""), ("recipe", "format", "")] + columns,
                self.rows_worst_first(rows),
            )
            + "</section>"
        )

    def layer_table(self) -> str:
        if not self.layers:
            return ""
        source = TRAJECTORY_COLUMNS if self.is_trajectory else LAYER_COLUMNS
        columns = [c for c in source if _present(self.layers, c[1])]
        return (
            '<section id="layers"><h2>Tensors</h2>'
            '<p class="note">Worst first; click a column header to sort.</p>'
            + _table(
                [
                    ("tensor", "name", ""),
                    ("recipe", "format", ""),
                    ("dtype", "dtype", ""),
                    ("shape", "shape", ""),
                ]
                + columns,
                self.rows_worst_first(self.layers),
            )
            + "</section>"
        )

    def trajectory(self) -> str:
        rows = [r for r in self.layers if isinstance(r.get("flips_per_step"), list)]
        if not rows:
            return ""
        traces = []
        summaries = {str(s.get("format")): s for s in self.summary}
        for recipe in self.recipes:
            per_step = get(summaries.get(recipe, {}), "flips_per_step")
            if not isinstance(per_step, list):
                per_step = _sum_lists(
                    r["flips_per_step"] for r in rows if r.get("format") == recipe
                )
            if not per_step:
                continue
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": _label(recipe),
                    "x": list(range(1, len(per_step) + 1)),
                    "y": per_step,
                    "line": {"color": self.color(recipe)},
                    "hovertemplate": f"{_label(recipe)}<br>step %{{x}}: %{{y:,}} flips<extra></extra>",
                }
            )
        xaxis: dict[str, Any] = {"title": {"text": "step t (c_t vs c_t−1)"}, "gridcolor": "#eee"}
        if traces and len(traces[0]["x"]) <= 30:
            xaxis["dtick"] = 1
        parts = [
            '<section id="trajectory"><h2>Trajectory</h2>'
            "<h3>Flips per step, all tensors</h3>"
            + self.figure(
                traces,
                {
                    "height": 300,
                    "xaxis": xaxis,
                    "yaxis": {
                        "title": {"text": "flips"},
                        "rangemode": "tozero",
                        "gridcolor": "#eee",
                    },
                    "legend": {"orientation": "h", "y": 1.15},
                },
            )
        ]
        if _present(rows, "oscillation_rate"):
            parts.append(
                "<h3>Oscillation per layer</h3>"
                '<p class="note">flip-backs / flips (a code returning to where it was one step '
                "earlier); tensors ordered worst first.</p>"
                + self._layer_recipe_map(
                    [("oscillation_rate", "oscillation rate", HEAT)], hover_extra=False
                )
            )
        heat = self._step_map(rows)
        if heat:
            parts.append(heat)
        return "".join(parts) + "</section>"

    def _step_map(self, rows: list[Record]) -> str:
        """Flips per step per tensor as a share of its elements, the first recipe that has them."""
        recipe = next((x for x in self.recipes if any(r.get("format") == x for r in rows)), None)
        mine = {str(r.get("name")): r for r in rows if r.get("format") == recipe}
        names = [n for n in self.layer_order if n in mine]
        steps = max((len(mine[n]["flips_per_step"]) for n in names), default=0)
        if not names or not steps or len(names) * steps > 40_000:
            return ""
        z = []
        for n in names:
            numel = get(mine[n], "numel")
            flips = mine[n]["flips_per_step"]
            z.append(
                [
                    (f / numel if isinstance(numel, int) and numel else f)
                    if isinstance(f, (int, float))
                    else None
                    for f in flips
                ]
                + [None] * (steps - len(flips))
            )
        label = (
            "flips / elements"
            if all(isinstance(get(mine[n], "numel"), int) for n in names)
            else "flips"
        )
        return f"<h3>Flips per step per tensor, {_e(recipe)}</h3>" + self.figure(
            [
                {
                    "type": "heatmap",
                    "z": z,
                    "x": list(range(1, steps + 1)),
                    "y": [_label(n) for n in names],
                    "colorscale": HEAT,
                    "zmin": 0,
                    "colorbar": {"title": {"text": label}, "thickness": 12},
                    "hovertemplate": f"<b>%{{y}}</b><br>step %{{x}}<br>{label} %{{z:.4g}}<extra></extra>",
                }
            ],
            {
                "height": 110 + (22 if len(names) <= 40 else 14) * len(names),
                "margin": {"l": 10, "r": 10, "t": 20, "b": 48},
                "xaxis": {"title": {"text": "step"}},
                "yaxis": {"autorange": "reversed", "type": "category", "automargin": True},
            },
        )

    def checks(self) -> str:
        checks = self.report.get("checks")
        if not isinstance(checks, dict):
            return ""
        results = [r for r in checks.get("results") or [] if isinstance(r, dict)]
        order = {"fail": 0, "skip": 1, "pass": 2}
        results.sort(key=lambda r: order.get(str(r.get("status")), 3))
        rules = "".join(f"<li><code>{_e(rule)}</code></li>" for rule in checks.get("rules") or [])
        ok = bool(checks.get("passed"))
        counts = {s: sum(r.get("status") == s for r in results) for s in ("pass", "fail", "skip")}
        verdict = (
            f'<p class="verdict {"pass" if ok else "fail"}">'
            f"{'PASS' if ok else 'FAIL'}: {counts['fail']} failed, {counts['pass']} passed"
            + (f", {counts['skip']} skipped" if counts["skip"] else "")
            + "</p>"
        )
        rows = []
        for r in results:
            status = str(r.get("status"))
            rows.append(
                f'<tr class="{_e(status)}"><td class="t"><span class="st {_e(status)}">{_e(status)}</span></td>'
                f'<td class="t"><code>{_e(r.get("rule"))}</code></td><td class="m">{_e(r.get("target"))}</td>'
                f'<td class="t">{_e(r.get("format"))}</td>{_cell(r.get("value"))}{_cell(r.get("threshold"))}'
                f'<td class="t">{_e(r.get("message") or "")}</td></tr>'
            )
        table = (
            '<div class="scroll"><table class="data sortable"><thead><tr><th>status</th><th>rule</th>'
            '<th>tensor</th><th>recipe</th><th class="n">value</th><th class="n">threshold</th>'
            "<th>note</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
            if rows
            else ""
        )
        return f'<section id="checks"><h2>Checks</h2>{verdict}<ul class="rules">{rules}</ul>{table}</section>'

    def skipped(self) -> str:
        skipped = [s for s in self.report.get("skipped") or [] if isinstance(s, dict)]
        if not skipped:
            return ""
        rows = "".join(
            f'<tr><td class="m">{_e(s.get("name"))}</td><td class="t">{_e(s.get("reason"))}</td></tr>'
            for s in skipped
        )
        return (
            '<section id="skipped"><h2>Skipped tensors</h2>'
            f'<table class="data"><thead><tr><th>tensor</th><th>reason</th></tr></thead><tbody>{rows}</tbody></table></section>'
        )


TOC = [
    ("checks", "checks"),
    ("summary", "summary"),
    ("whatif", "what-if"),
    ("heatmap", "layer × recipe"),
    ("trajectory", "trajectory"),
    ("histograms", "histograms"),
    ("blocks", "block scales"),
    ("stored", "stored weights"),
    ("layers", "tensors"),
    ("skipped", "skipped"),
]


def _table(
    columns: Sequence[tuple[str, str, str]],
    records: Sequence[Record],
    *,
    first: Callable[[Record], str] | None = None,
    sortable: bool = True,
    best: dict[str, Callable[..., Any]] | None = None,
) -> str:
    """A data table; numeric cells carry a finer sort key when their text rounds the value."""
    best_of: dict[str, Any] = {}
    for key, pick in (best or {}).items():
        values = [v for r in records if isinstance(v := get(r, key), (int, float))]
        if len(set(values)) > 1:
            best_of[key] = pick(values)
    numeric = {
        key
        for _, key, _ in columns
        if any(isinstance(get(r, key), (int, float)) for r in records) and key != "name"
    }
    head = "".join(
        "<th"
        + (' class="n"' if key in numeric and i > 0 else "")
        + (f' title="{_e(tip)}"' if tip else "")
        + f">{_e(header)}</th>"
        for i, (header, key, tip) in enumerate(columns)
    )
    body = []
    for r in records:
        cells = []
        for i, (_, key, _) in enumerate(columns):
            v = get(r, key)
            if i == 0 and first is not None:
                cells.append(f'<td class="t">{first(r)}</td>')
            elif key == "shape" and isinstance(v, list):
                cells.append(f'<td class="t">{_e("×".join(map(str, v)))}</td>')
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                cells.append(_cell(v, bold=key in best_of and v == best_of[key]))
            elif key == "name":
                cells.append(f'<td class="m">{_e(v)}</td>')
            elif v is None:
                cells.append("<td>–</td>")
            else:
                cells.append(f'<td class="t">{_e(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = "data sortable" if sortable else "data"
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _cell(v: Any, bold: bool = False) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return f"<td>{_num(v)}</td>"
    text = fmt_number(v)
    # The sort key: the text itself where it reads back as the number (integers with their
    # thousands commas), else six significant digits, enough to order what the text rounds.
    key = f"{v:.6g}"
    attr = "" if isinstance(v, int) or _same(text, v) else f' data-v="{key}"'
    inner = f"<b>{_e(text)}</b>" if bold else _e(text)
    return f"<td{attr}>{inner}</td>"


def _same(text: str, v: float) -> bool:
    try:
        return float(text.replace(",", "")) == v
    except ValueError:
        return False


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _present(records: Iterable[Record], key: str) -> bool:
    return any(get(r, key) is not None for r in records)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i != "None"))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _count(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "–"


def _sum_lists(lists: Iterable[list[Any]]) -> list[int]:
    total: list[int] = []
    for values in lists:
        for i, v in enumerate(values):
            if i == len(total):
                total.append(0)
            if isinstance(v, (int, float)) and math.isfinite(v):
                total[i] += int(v)
    return total


def _plain(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(map(str, v))
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _bar_layout(xtitle: str, height: int) -> dict[str, Any]:
    return {
        "barmode": "group",
        "bargap": 0.15,
        "height": height,
        "xaxis": {"title": {"text": xtitle}, "type": "category"},
        "yaxis": {
            "title": {"text": "share"},
            "tickformat": ".0%",
            "gridcolor": "#eee",
            "rangemode": "tozero",
        },
        "legend": {"orientation": "h", "y": 1.15},
    }


STYLE = """
:root{--fg:#222;--muted:#666;--line:#ddd;--bg:#fff;--pass:#1a7f37;--fail:#c62828;--accent:#1f77b4}
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:var(--fg);font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:16px 20px 48px}
section{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:14px 18px;margin:14px 0;scroll-margin-top:36px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:0 0 8px}h3{font-size:14px;margin:14px 0 4px}
.sub{margin:0 0 10px;color:var(--muted)}.meta,.note{color:var(--muted);font-size:12.5px;margin:4px 0 8px}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.cols{display:flex;flex-wrap:wrap;align-items:flex-start;gap:8px 40px}
table{border-collapse:collapse}
table.kv caption{text-align:left;font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table.kv th{text-align:left;font-weight:500;color:var(--muted);padding:1px 14px 1px 0;vertical-align:baseline;white-space:nowrap}
table.kv td{padding:1px 0;vertical-align:baseline;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-height:640px;overflow-y:auto;margin:6px 0}
table.data{width:100%;font-size:12.5px}
table.data th{position:sticky;top:0;background:#eef1f5;text-align:left;padding:4px 7px;border-bottom:1px solid #c8ced6;vertical-align:bottom;font-size:12px;line-height:1.25}
table.data th.n{text-align:right}
table.data td{padding:3px 7px;border-bottom:1px solid #eee;white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums}
table.data td.t{text-align:left}
table.data td.m{text-align:left;font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
table.data tbody tr:hover{background:#f3f8fd}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e2e8f0}
table.sortable th[aria-sort=descending]::after{content:" ▾"}table.sortable th[aria-sort=ascending]::after{content:" ▴"}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:6px;vertical-align:baseline}
.toc{position:sticky;top:0;z-index:5;background:#f6f7f9ee;padding:6px 2px;font-size:13px;border-bottom:1px solid var(--line)}
.toc a{color:var(--accent);text-decoration:none}.toc a:hover{text-decoration:underline}
.badge{font-size:12px;font-weight:600;padding:2px 8px;border-radius:10px;margin-left:10px;vertical-align:middle;color:#fff;text-decoration:none}
.badge.pass,.st.pass{background:var(--pass)}.badge.fail,.st.fail{background:var(--fail)}.st.skip{background:#888}
.st{color:#fff;border-radius:3px;padding:0 6px;font-size:11px;font-weight:600;text-transform:uppercase}
.verdict{font-weight:700;margin:2px 0 6px}.verdict.pass{color:var(--pass)}.verdict.fail{color:var(--fail)}
tr.fail td{background:#fdecea}
ul.rules,ul.worst{margin:4px 0 8px;padding-left:20px}
@media print{
 body{background:#fff;font-size:11px}main{max-width:none;padding:0}.toc{display:none}
 section{border:none;padding:4px 0;margin:8px 0;break-inside:avoid-page}
 .scroll{max-height:none;overflow:visible}table.data th{position:static}
 .modebar-container{display:none!important}
}
"""

# Click a header to sort its table (numbers by their exact value, text alphabetically); a second
# click reverses. Plain DOM, no library.
SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var desc = th.getAttribute("aria-sort") !== "descending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", desc ? "descending" : "ascending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col];
        var v = cell.getAttribute("data-v");
        if (v === null) v = cell.textContent.replace(/,/g, "");
        var x = v.trim() === "" ? NaN : Number(v);
        return isNaN(x) ? cell.textContent : x;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c;
        if (typeof x === "number" && typeof y === "number") c = x - y;
        else if (typeof x === "number") c = -1;
        else if (typeof y === "number") c = 1;
        else c = String(x).localeCompare(String(y));
        return desc ? -c : c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
