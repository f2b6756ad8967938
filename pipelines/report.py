"""A static HTML report for one pipeline run.

One ``index.html`` plus PNG plots in one folder, referenced by relative file name, so the folder
can be zipped, mailed and opened from disk anywhere: no server, no JavaScript, no external URL.
The input is the plain dict the pipeline runner writes; any list may be empty and any optional
key missing, and the page then says "not available" for that part instead of failing, because a
report is most wanted exactly when a run went wrong.
"""

from __future__ import annotations

import html
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

SECTIONS = (
    ("summary", "Summary"),
    ("pareto", "Accuracy–latency Pareto front"),
    ("ops", "Operator choices per layer"),
    ("lut", "Latency lookup table"),
    ("predictor", "Latency predictor: predicted vs measured"),
    ("history", "Evolution history"),
    ("coexplore", "Co-exploration against architecture-only"),
    ("goldennets", "GoldenNets: accuracy and latency at every depth"),
    ("provenance", "Provenance"),
)

# Fixed, light colors so dark text stays readable and a family keeps its color across runs.
FAMILY_COLORS = {
    "mb": "#a6cee3",
    "fmb": "#b2df8a",
    "ds": "#fdbf6f",
    "shuffle": "#cab2d6",
    "skip": "#e6e6e6",
}
_FALLBACK_COLORS = ("#fb9a99", "#ffff99", "#8dd3c7", "#fccde5", "#bebada", "#d9ef8b")

# Annotate LUT cells with their value only while the numbers stay legible.
ANNOTATE_MAX_OPS, ANNOTATE_MAX_LAYERS = 30, 25

_DPI = 110

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: .3em; }
.meta, figcaption, .intro { color: #555; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, td.arch { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
                font-size: .85em; word-break: break-all; }
.rejected { color: #fff; background: #c62828; font-weight: bold; white-space: nowrap; }
.accepted { color: #2e7d32; }
.na { color: #888; font-style: italic; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; border: 1px solid #eee; }
.swatch { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
          border: 1px solid #aaa; margin: 0 .3em 0 1em; }
nav a { margin-right: 1em; }
"""


# ---------------------------------------------------------------- small, pure helpers


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (latency, fitness) points — no other point is at least as fast and at
    least as fit — sorted by latency, each once. Non-finite points are ignored."""
    clean = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    front: list[tuple[float, float]] = []
    for x, y in sorted(clean, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def mape(pairs: list[tuple[float, float]]) -> float | None:
    """Mean absolute percentage error of (predicted, measured) pairs, in percent; None when no
    pair has a positive measurement (a percentage of zero means nothing)."""
    errs = [abs(p - m) / m for p, m in pairs if m > 0 and math.isfinite(p) and math.isfinite(m)]
    return 100.0 * sum(errs) / len(errs) if errs else None


@dataclass
class Stage:
    """One search stage's span on the concatenated generation axis."""

    name: str
    start: int
    end: int  # inclusive
    evaluated: int


@dataclass
class HistorySeries:
    """Per-generation statistics with generations numbered consecutively across stages."""

    x: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    distinct: int = 0

    @property
    def evaluated(self) -> int:
        return sum(s.evaluated for s in self.stages)


def history_series(history: Any) -> HistorySeries:
    """Best and mean fitness per generation; stages keep the order they first appear in and their
    generations are sorted, so stage B continues the x axis where stage A stopped."""
    by_stage: dict[str, list[dict]] = {}
    for entry in _dicts(history):
        by_stage.setdefault(_str(entry.get("stage"), "?"), []).append(entry)
    out, archs = HistorySeries(), set[str]()
    for name, entries in by_stage.items():
        entries.sort(key=lambda e: _num(e.get("generation")) or 0.0)
        start, evaluated = len(out.x), 0
        for entry in entries:
            pop = _dicts(entry.get("population"))
            fits = [f for f in (_num(c.get("fitness")) for c in pop) if f is not None]
            archs.update(str(c["arch"]) for c in pop if c.get("arch") is not None)
            evaluated += len(pop)
            out.x.append(len(out.x))
            out.best.append(max(fits) if fits else math.nan)
            out.mean.append(sum(fits) / len(fits) if fits else math.nan)
        out.stages.append(Stage(name, start, len(out.x) - 1, evaluated))
    out.distinct = len(archs)
    return out


def op_family(op: str) -> str:
    """The family of an operator name: the part before the first underscore."""
    return op.split("_", 1)[0]


def family_color(family: str) -> str:
    """A fixed color per family; unknown families get a stable (crc32, not hash()) fallback."""
    if family in FAMILY_COLORS:
        return FAMILY_COLORS[family]
    return _FALLBACK_COLORS[zlib.crc32(family.encode()) % len(_FALLBACK_COLORS)]


def _num(v: Any) -> float | None:
    """A finite number, or None for anything else (None, bool, text, NaN)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _pos(v: Any) -> float | None:
    n = _num(v)
    return n if n is not None and n > 0 else None


def _str(v: Any, default: str = "") -> str:
    return default if v is None else str(v)


def _dicts(v: Any) -> list[dict]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list | tuple) else []


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _e(v: Any, default: str = "—") -> str:
    """HTML-escaped text of any value; everything from ``data`` goes through here."""
    return html.escape(_str(v, default))


def _fmt_ms(v: Any) -> str:
    n = _num(v)
    return "—" if n is None else f"{n:.3g}"


def _fmt_acc(v: Any) -> str:
    n = _num(v)
    if n is None:
        return "—"
    return f"{n:.1%}" if 0.0 <= n <= 1.0 else f"{n:.3g}"


def _slug(name: str) -> str:
    """A file-name-safe form of a device name (the HTML refers to files by these names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:40] or "device"


def _na(what: str, why: str = "") -> str:
    """The line a section shows instead of its content when the run did not record it."""
    tail = f": {why}" if why else ""
    return f'<p class="na">{html.escape(what)} not available{html.escape(tail)}.</p>'


def _model_label(dev: dict, model: dict) -> str:
    return f"{_str(dev.get('name'), '?')} @ {_fmt_ms(model.get('budget_ms'))} ms"


def _pyplot():
    """pyplot on the Agg backend: reports are written on headless machines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    """Save and close the figure (long runs write many); return the name the HTML uses."""
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    _pyplot().close(fig)
    return path.name


# ---------------------------------------------------------------- plots (one per kind)


def _history_points(dev: dict) -> list[tuple[float, float, str]]:
    """Every evaluated candidate as (predicted latency, fitness, stage)."""
    pts = []
    for entry in _dicts(dev.get("history")):
        for c in _dicts(entry.get("population")):
            x, y = _num(c.get("latency_ms")), _num(c.get("fitness"))
            if x is not None and y is not None:
                pts.append((x, y, _str(entry.get("stage"), "?")))
    return pts


def _chosen_point(dev: dict, model: dict) -> tuple[float, float] | None:
    """Where a chosen model sits: measured latency if timed, else predicted; validation accuracy
    if known, else the best fitness its architecture reached in the search."""
    x = _num(model.get("measured_ms"))
    x = _num(model.get("predicted_ms")) if x is None else x
    y = _num(model.get("val_acc"))
    if y is None:
        arch = model.get("arch")
        fits = [
            f
            for e in _dicts(dev.get("history"))
            for c in _dicts(e.get("population"))
            if arch is not None
            and c.get("arch") == arch
            and (f := _num(c.get("fitness"))) is not None
        ]
        y = max(fits) if fits else None
    return None if x is None or y is None else (x, y)


def plot_pareto(path: Path, dev: dict) -> str | None:
    """Candidates, their Pareto front, the chosen models and the budgets; None if no points."""
    pts = _history_points(dev)
    models = _dicts(dev.get("models"))
    chosen = [(m, p) for m in models if (p := _chosen_point(dev, m)) is not None]
    if not pts and not chosen:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, stage in enumerate(dict.fromkeys(s for _, _, s in pts)):
        xs = [x for x, _, s in pts if s == stage]
        ys = [y for _, y, s in pts if s == stage]
        ax.scatter(xs, ys, s=9, alpha=0.25, color=f"C{i}", label=f"stage {stage} candidates")
    front = pareto_front([(x, y) for x, y, _ in pts])
    if front:
        ax.step(*zip(*front), where="post", color="black", lw=1.2, label="Pareto front")
        ax.scatter(*zip(*front), s=14, color="black")
    budgets = sorted({b for m in models if (b := _num(m.get("budget_ms"))) is not None})
    for i, b in enumerate(budgets):
        ax.axvline(b, ls="--", color="0.45", lw=0.9, label="budget" if i == 0 else None)
    for k, (m, (x, y)) in enumerate(chosen):
        bad = m.get("accepted") is False
        ax.scatter(
            [x],
            [y],
            s=170,
            marker="*",
            zorder=5,
            edgecolors="black",
            linewidths=0.6,
            color="tab:red" if bad else "gold",
            label="chosen model" if k == 0 else None,
        )
        ax.annotate(
            f"{_fmt_ms(m.get('budget_ms'))} ms",
            (x, y),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    ax.set_xlabel("latency (ms) — candidates predicted, chosen models measured")
    ax.set_ylabel("validation fitness")
    ax.set_title(_str(dev.get("name"), "?"), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _lut_grid(lut: dict) -> tuple[list[str], list[Any], np.ndarray] | None:
    """(ops, layers, ms grid with NaN where missing); None if nothing usable was measured."""
    ops = [_str(o, "?") for o in lut.get("ops") or []]
    layers = list(lut.get("layers") or [])
    ms_rows = lut.get("ms")
    rows: list[Any] = ms_rows if isinstance(ms_rows, list) else []
    if not ops or not layers:
        return None
    grid = np.full((len(ops), len(layers)), np.nan)
    for i, row in enumerate(rows[: len(ops)]):
        for j, v in enumerate(row[: len(layers)] if isinstance(row, list) else []):
            ms = _pos(v)
            grid[i, j] = np.nan if ms is None else ms
    return (ops, layers, grid) if np.isfinite(grid).any() else None


def _kept_cells(ops: list[str], layers: list[Any], reduced: Any) -> list[tuple[int, int]]:
    """(row, column) of each op that stage one kept; reduced_ops is indexed by layer index."""
    if not isinstance(reduced, list):
        return []
    row_of = {op: i for i, op in enumerate(ops)}
    cells = []
    for j, layer in enumerate(layers):
        k = layer if isinstance(layer, int) and not isinstance(layer, bool) else j
        kept = reduced[k] if 0 <= k < len(reduced) and isinstance(reduced[k], list) else []
        cells += [(row_of[op], j) for op in kept if op in row_of]
    return cells


def plot_lut(path: Path, dev: dict) -> str | None:
    """The LUT as a log10(ms) heatmap, gray where missing, stage-one survivors boxed."""
    parsed = _lut_grid(_dict(dev.get("lut")))
    if parsed is None:
        return None
    ops, layers, grid = parsed
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    n_ops, n_layers = grid.shape
    fig, ax = plt.subplots(figsize=(min(3.0 + 0.7 * n_layers, 16), min(1.5 + 0.3 * n_ops, 22)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#c8c8c8")
    im = ax.imshow(np.ma.masked_invalid(np.log10(grid)), cmap=cmap, aspect="auto")
    fig.colorbar(im, ax=ax, label="log10(ms)", shrink=0.8)
    if n_ops <= ANNOTATE_MAX_OPS and n_layers <= ANNOTATE_MAX_LAYERS:
        for i, j in zip(*np.nonzero(np.isfinite(grid))):
            dark = im.norm(math.log10(grid[i, j])) < 0.55
            ax.text(
                j,
                i,
                f"{grid[i, j]:.3g}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    for i, j in _kept_cells(ops, layers, dev.get("reduced_ops")):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.8))
    small = 8 if n_ops <= 40 else 5
    ax.set_yticks(range(n_ops), ops, fontsize=small)
    ax.set_xticks(range(n_layers), [str(x) for x in layers], fontsize=small)
    ax.set_xlabel("layer")
    ax.set_title(_str(dev.get("name"), "?"), fontsize=10)
    return _save(fig, path)


def _scatter_pairs(dev: dict) -> list[tuple[float, float]]:
    """(predicted, measured) of every architecture that has both, both positive."""
    pairs = []
    for p in _dicts(dev.get("scatter")):
        pred, meas = _pos(p.get("predicted_ms")), _pos(p.get("measured_ms"))
        if pred is not None and meas is not None:
            pairs.append((pred, meas))
    return pairs


def plot_scatter(path: Path, dev: dict) -> str | None:
    """Predicted vs measured latency with y = x and a ±10% band; None without points."""
    pairs = _scatter_pairs(dev)
    if not pairs:
        return None
    plt = _pyplot()
    pred, meas = np.array([p for p, _ in pairs]), np.array([m for _, m in pairs])
    hi = float(max(pred.max(), meas.max())) * 1.08
    fig, ax = plt.subplots(figsize=(5.5, 5))
    xs = np.array([0.0, hi])
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="0.88", label="±10%")
    ax.plot(xs, xs, color="0.35", lw=0.9, label="y = x")
    ax.scatter(meas, pred, s=14, color="tab:blue", label="architecture")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_xlabel("measured latency on the device (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(_str(dev.get("name"), "?"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_history(path: Path, dev: dict) -> str | None:
    """Best and mean fitness per generation across the stages; None without any fitness."""
    series = history_series(dev.get("history"))
    if not any(math.isfinite(v) for v in series.best):
        return None
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot(series.x, series.best, marker="o", ms=3, label="best")
    ax.plot(series.x, series.mean, marker="o", ms=3, label="mean")
    top = ax.get_xaxis_transform()
    for k, stage in enumerate(series.stages):
        if k:
            ax.axvline(stage.start - 0.5, color="0.4", lw=1, ls=":")
        ax.text(
            (stage.start + stage.end) / 2,
            1.01,
            f"stage {stage.name}",
            transform=top,
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation (numbered consecutively across stages)")
    ax.set_ylabel("fitness")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- HTML sections


def _section(key: str, intro: str, body: str) -> str:
    title = dict(SECTIONS)[key]
    return (
        f'<section id="{key}">\n<h2>{html.escape(title)}</h2>\n'
        f'<p class="intro">{intro}</p>\n{body}\n</section>'
    )


def _table(head: list[str], rows: list[str]) -> str:
    """A table from escaped header texts and ready-made ``<tr>`` rows."""
    ths = "".join(f"<th>{h}</th>" for h in head)
    return f'<div class="scroll"><table>\n<tr>{ths}</tr>\n' + "\n".join(rows) + "\n</table></div>"


def _figure(src: str | None, alt: str, caption: str, missing: str) -> str:
    if src is None:
        return _na(missing, "nothing usable recorded for this device")
    return (
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _device_heading(dev: dict) -> str:
    extra = ", ".join(_str(dev.get(k)) for k in ("kind", "runtime") if dev.get(k) is not None)
    tail = f' <span class="meta">({html.escape(extra)})</span>' if extra else ""
    return f"<h3>{_e(dev.get('name'), '?')}{tail}</h3>"


def _bundle_cell(bundle: Any, prefix: str) -> str:
    if not bundle:
        return "—"
    path = str(bundle).rstrip("/")
    href = path if path.startswith("/") else prefix + path
    return f'<a href="{html.escape(quote(href, safe="/.-_~:"))}/">{html.escape(path)}</a>'


def _accepted_cell(accepted: Any) -> str:
    if accepted is True:
        return '<td class="accepted">accepted</td>'
    if accepted is False:
        return '<td class="rejected">NOT ACCEPTED</td>'
    return "<td>—</td>"


def section_summary(data: dict) -> str:
    """One row per (device, budget): the results an engineer decides on."""
    prefix = _str(data.get("bundle_href_prefix"), "../")
    rows = []
    for dev in _dicts(data.get("devices")):
        for m in _dicts(dev.get("models")):
            rows.append(
                f"<tr><td>{_e(dev.get('name'), '?')}</td>"
                f'<td class="num">{_fmt_ms(m.get("budget_ms"))}</td>'
                f'<td class="arch">{_e(m.get("arch"))}</td>'
                f'<td class="num">{_fmt_ms(m.get("predicted_ms"))}</td>'
                f'<td class="num">{_fmt_ms(m.get("measured_ms"))}</td>'
                f'<td class="num">{_fmt_acc(m.get("test_acc"))}</td>'
                f"{_accepted_cell(m.get('accepted'))}"
                f"<td>{_bundle_cell(m.get('bundle'), prefix)}</td></tr>"
            )
    intro = (
        "One row per device and latency budget. Measured latency was timed on the device "
        "itself; a model that missed its budget there is flagged in red. The bundle link "
        "opens the handoff folder (model, manifest)."
    )
    head = [
        "device",
        "budget (ms)",
        "architecture",
        "predicted (ms)",
        "measured (ms)",
        "test accuracy",
        "accepted",
        "bundle",
    ]
    body = _table(head, rows) if rows else _na("Chosen models", "the run recorded none")
    return _section("summary", intro, body)


def _per_device(data: dict, what: str, render) -> str:
    """Each device's part of a per-device section, or one "not available" line."""
    devs = _dicts(data.get("devices"))
    if not devs:
        return _na(what, "the run lists no devices")
    return "\n".join(_device_heading(d) + "\n" + render(i, d) for i, d in enumerate(devs))


def section_pareto(data: dict, out_dir: Path) -> str:
    """Per device: how the chosen models sit against everything the search tried."""

    def render(i: int, dev: dict) -> str:
        src = plot_pareto(out_dir / f"pareto_{i}_{_slug(_str(dev.get('name')))}.png", dev)
        n = len(_history_points(dev))
        cap = f"{n} evaluated candidates; stars are the chosen models (red: missed the budget)."
        return _figure(src, f"Pareto front, {_str(dev.get('name'))}", cap, "Search history")

    intro = (
        "Each faint dot is a candidate evaluated during the search, at its predicted latency "
        "and validation fitness; the step line joins the non-dominated ones (nothing else "
        "is both faster and fitter). Stars are the chosen models at their measured latency, "
        "dashed lines the budgets."
    )
    return _section("pareto", intro, _per_device(data, "Pareto front", render))


def _layer_rows(data: dict, n: int) -> list[tuple[str, str, str]]:
    """(index, input size, cout) per layer, from the space when it describes the layer."""
    layers = _dicts(_dict(data.get("space")).get("layers"))
    rows = []
    for k in range(max(n, len(layers))):
        lay = layers[k] if k < len(layers) else {}
        hw = lay.get("input_hw")
        size = "×".join(_str(v) for v in hw) if isinstance(hw, list | tuple) and hw else None
        rows.append((_e(lay.get("index"), str(k)), _e(size), _e(lay.get("cout"))))
    return rows


def _op_cell(op: Any, width: Any) -> str:
    if op is None:
        return "<td>—</td>"
    w = _num(width)
    text = str(op) if w is None or w == 1.0 else f"{op}@{w:g}"
    color = family_color(op_family(str(op)))
    return f'<td style="background:{color}">{html.escape(text)}</td>'


def _family_legend(ops: list[Any]) -> str:
    fams = sorted({op_family(str(o)) for o in ops if o is not None})
    items = "".join(
        f'<span class="swatch" style="background:{family_color(f)}"></span>{html.escape(f)}'
        for f in fams
    )
    return f"<p>Families:{items}</p>"


def section_ops(data: dict) -> str:
    """Layer-by-layer operator choices of every chosen model, side by side."""
    cols = [(d, m) for d in _dicts(data.get("devices")) for m in _dicts(d.get("models"))]
    cols = [(d, m) for d, m in cols if isinstance(m.get("ops"), list)]
    intro = (
        "One column per chosen model, one row per layer of the search space. A cell is the "
        "operator chosen at that layer, with @w when the layer runs at width multiplier w "
        "rather than 1; the color groups operator families."
    )
    if not cols:
        missing = _na("Per-layer operator choices", "the run recorded no chosen models")
        return _section("ops", intro, missing)
    n = max(len(m["ops"]) for _, m in cols)
    rows = []
    for k, (idx, size, cout) in enumerate(_layer_rows(data, n)):
        cells = []
        for _, m in cols:
            w = m.get("widths")
            widths: list[Any] = w if isinstance(w, list) else []
            op = m["ops"][k] if k < len(m["ops"]) else None
            cells.append(_op_cell(op, widths[k] if k < len(widths) else None))
        rows.append(
            f'<tr><td class="num">{idx}</td><td>{size}</td><td class="num">{cout}</td>'
            + "".join(cells)
            + "</tr>"
        )
    head = ["layer", "input", "cout"] + [html.escape(_model_label(d, m)) for d, m in cols]
    legend = _family_legend([op for _, m in cols for op in m["ops"]])
    return _section("ops", intro, _table(head, rows) + "\n" + legend)


def section_lut(data: dict, out_dir: Path) -> str:
    """Per device: the measured cost of every operator where it could be placed."""

    def render(i: int, dev: dict) -> str:
        src = plot_lut(out_dir / f"lut_{i}_{_slug(_str(dev.get('name')))}.png", dev)
        boxed = (
            "red boxes mark the operators stage one kept"
            if isinstance(dev.get("reduced_ops"), list)
            else "stage-one reduction not available"
        )
        cap = f"Latency in ms at full width; gray: not a candidate or not measured; {boxed}."
        return _figure(src, f"LUT, {_str(dev.get('name'))}", cap, "Latency lookup table")

    intro = (
        "Latency of every candidate operator (rows) at every layer (columns), measured on "
        "the device at full width. Color is log10 of the milliseconds, so each color step "
        "is a factor; gray cells were not candidates there or were not measured."
    )
    return _section("lut", intro, _per_device(data, "Latency lookup table", render))


def section_predictor(data: dict, out_dir: Path) -> str:
    """Per device: whether the latency model the search trusted matches the device."""

    def render(i: int, dev: dict) -> str:
        src = plot_scatter(out_dir / f"scatter_{i}_{_slug(_str(dev.get('name')))}.png", dev)
        pairs = _scatter_pairs(dev)
        err = mape(pairs)
        within = sum(abs(p - m) <= 0.1 * m for p, m in pairs)
        cap = (
            f"MAPE {err:.1f}% over {len(pairs)} architectures; {within} within ±10%."
            if err is not None
            else ""
        )
        return _figure(
            src,
            f"Predicted vs measured, {_str(dev.get('name'))}",
            cap,
            "Predicted-vs-measured latency",
        )

    intro = (
        "Each dot is a whole architecture: its latency as timed on the device (x) against "
        "the latency model's prediction (y). Dots in the shaded band are within ±10%; "
        "MAPE is the mean absolute percentage error."
    )
    return _section("predictor", intro, _per_device(data, "Latency predictor check", render))


def section_history(data: dict, out_dir: Path) -> str:
    """Per device: whether the evolution converged, stage by stage."""

    def render(i: int, dev: dict) -> str:
        src = plot_history(out_dir / f"history_{i}_{_slug(_str(dev.get('name')))}.png", dev)
        s = history_series(dev.get("history"))
        per = ", ".join(f"stage {st.name}: {st.evaluated}" for st in s.stages)
        cap = (
            f"{s.evaluated} candidates evaluated ({per}) over {len(s.x)} generations; "
            f"{s.distinct} distinct architectures."
        )
        return _figure(
            src, f"Evolution, {_str(dev.get('name'))}", html.escape(cap), "Evolution history"
        )

    intro = (
        "Best and mean fitness of each generation's population, the stages one after the "
        "other along x. A best line that rises and then flattens means the search "
        "converged; a mean far below it means the population is still diverse."
    )
    return _section("history", intro, _per_device(data, "Evolution history", render))


def plot_coexplore(path: Path, title: str, pairs: list[dict], budget_ms: Any) -> str | None:
    """Co-exploration's fronts: every evaluated architecture at validation accuracy against
    its latency (and, where modelled, energy) on the hardware fast exploration tuned for it,
    and on the fixed default hardware an architecture-only search has; None if no pairs."""
    series = [
        ("ms", "own_ms", "latency (ms)"),
        ("energy_mj", "own_energy_mj", "energy (mJ)"),
    ]
    panels = [s for s in series if any(_num(p.get(s[0])) is not None for p in pairs)]
    if not pairs or not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.4), squeeze=False)
    for ax, (tuned, own, label) in zip(axes[0], panels):
        for key, name, color in (
            (own, "architecture-only: default", "0.55"),
            (tuned, "co-exploration: tuned", "tab:blue"),
        ):
            pts = [
                (x, y)
                for p in pairs
                if (x := _num(p.get(key))) is not None and (y := _num(p.get("fitness"))) is not None
            ]
            if not pts:
                continue
            ax.scatter(*zip(*pts), s=10, alpha=0.35, color=color, label=f"{name} hardware")
            front = pareto_front(pts)
            ax.step(*zip(*front), where="post", color=color, lw=1.4)
        if label.startswith("latency") and _num(budget_ms) is not None:
            ax.axvline(float(budget_ms), ls="--", color="0.3", lw=0.9, label="budget")
        ax.set_xlabel(label)
        ax.set_ylabel("validation fitness")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def section_coexplore(data: dict, out_dir: Path) -> str:
    """Per co-explored device and budget: the fronts with tuned and with default hardware."""
    parts = []
    for i, dev in enumerate(_dicts(data.get("devices"))):
        for j, run in enumerate(_dicts(dev.get("coexplore"))):
            name = _str(dev.get("name"), "?")
            pairs = _dicts(run.get("pairs"))
            title = f"{name} @ {_fmt_ms(run.get('budget_ms'))} ms, {_str(run.get('space'))}"
            src = plot_coexplore(
                out_dir / f"coexplore_{i}_{j}_{_slug(name)}.png", title, pairs, run.get("budget_ms")
            )
            cap = (
                f"{len(pairs)} evaluated architectures; default configuration "
                f"{_str(run.get('default'))}; {_fmt_acc(run.get('pruned_share'))} of the pairs "
                "pruned before evaluation."
            )
            parts.append(_figure(src, f"Co-exploration, {title}", html.escape(cap), title))
    intro = (
        "Each architecture the co-exploration evaluated, at its validation fitness: blue at "
        "the latency of the configuration fast exploration tuned for it, grey at the "
        "device's own settings (what an architecture-only search on fixed hardware sees). "
        "The step lines are the two fronts."
    )
    body = "\n".join(parts) or _na("Co-exploration", "no device in this run co-explored")
    return _section("coexplore", intro, body)


def plot_golden(path: Path, dev: dict, net: dict) -> str | None:
    """A GoldenNet's depths (test accuracy against latency, measured where its bundle timed
    them, else predicted) beside the search's Pareto front; None without a depth to draw."""
    pts = []
    for d in _dicts(net.get("depths")):
        x = _num(d.get("measured_ms"))
        x = _num(d.get("predicted_ms")) if x is None else x
        y = _num(d.get("test_acc"))
        if x is not None and y is not None:
            pts.append((x, y, _str(d.get("name"))))
    if not pts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    front = pareto_front([(x, y) for x, y, _ in _history_points(dev)])
    if front:
        ax.step(*zip(*front), where="post", color="0.5", lw=1.2, label="search's Pareto front")
        ax.scatter(*zip(*front), s=12, color="0.5")
    ax.plot(
        [x for x, _, _ in pts],
        [y for _, y, _ in pts],
        "o-",
        color="tab:green",
        lw=1.6,
        label="GoldenNet depths (test accuracy)",
    )
    for x, y, name in pts:
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, -10), fontsize=8)
    if _num(net.get("budget_ms")) is not None:
        ax.axvline(float(net["budget_ms"]), ls="--", color="0.3", lw=0.9, label="budget")
    ax.set_xlabel("latency (ms) — depths measured in the bundle, candidates predicted")
    ax.set_ylabel("accuracy (depths: test; front: validation fitness)")
    ax.set_title(f"{_str(dev.get('name'))} @ {_fmt_ms(net.get('budget_ms'))} ms", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def section_goldennets(data: dict, out_dir: Path) -> str:
    """Per device and budget whose final model is a GoldenNet: its depths' curve and table."""
    parts = []
    for i, dev in enumerate(_dicts(data.get("devices"))):
        for j, net in enumerate(_dicts(dev.get("goldennets"))):
            name = _str(dev.get("name"), "?")
            title = f"{name} @ {_fmt_ms(net.get('budget_ms'))} ms"
            src = plot_golden(out_dir / f"golden_{i}_{j}_{_slug(name)}.png", dev, net)
            rows = [
                f"<tr><td><code>{_e(d.get('name'))}</code></td><td>{_e(d.get('blocks'))}</td>"
                f"<td>{_fmt_acc(d.get('test_acc'))}</td><td>{_fmt_ms(d.get('measured_ms'))}</td>"
                f"<td>{_fmt_ms(d.get('predicted_ms'))}</td></tr>"
                for d in _dicts(net.get("depths"))
            ]
            table = _table(["depth", "blocks", "test acc", "measured ms", "predicted ms"], rows)
            cap = html.escape(f"{_str(net.get('arch'))}: every depth from one training.")
            parts.append(_figure(src, f"GoldenNet, {title}", cap, title) + "\n" + table)
    intro = (
        "A GoldenNet is the chosen network made depth-adaptive: one training, one bundle, "
        "and depths that skip trailing blocks of a stage, switched on the device when it "
        "slows. Green: each depth at its test accuracy and its latency measured in the "
        "bundle; grey: the search's Pareto front (validation fitness, predicted latency)."
    )
    body = "\n".join(parts) or _na("GoldenNets", "no final model in this run is depth-adaptive")
    return _section("goldennets", intro, body)


def section_provenance(data: dict) -> str:
    """What produced this run, so it can be reproduced."""
    prov = _dict(data.get("provenance"))
    rows = []
    for k, v in prov.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        rows.append(f"<tr><th>{_e(k)}</th><td><code>{_e(text)}</code></td></tr>")
    intro = "Versions, commit and settings that produced this run."
    body = _table(["key", "value"], rows) if rows else _na("Provenance", "the run recorded none")
    return _section("provenance", intro, body)


def _header(data: dict) -> str:
    meta = " · ".join(
        f"{label} <code>{_e(data.get(key))}</code>"
        for label, key in (("pipeline", "pipeline"), ("created", "created"))
        if data.get(key) is not None
    )
    nav = "".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t in SECTIONS)
    return (
        f"<h1>{_e(data.get('title'), 'Hurricane run')}</h1>\n"
        f'<p class="meta">{meta}</p>\n<nav>{nav}</nav>'
    )


def write_report(out_dir: Path, data: dict) -> Path:
    """Write ``index.html`` and its PNG plots into ``out_dir``; return the page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _dict(data)
    parts = [
        _header(data),
        section_summary(data),
        section_pareto(data, out_dir),
        section_ops(data),
        section_lut(data, out_dir),
        section_predictor(data, out_dir),
        section_history(data, out_dir),
        section_coexplore(data, out_dir),
        section_goldennets(data, out_dir),
        section_provenance(data),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(data.get('title'), 'Hurricane run')}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
