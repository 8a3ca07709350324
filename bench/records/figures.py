"""The figures of docs/results.md, drawn from the records that bench/records/report.py reads:

- ``top1_by_distribution.png``: top-1 of the plain expert average (test.py, last epoch) on the
  test distributions from forward50 to backward50, one line per method (the records that differ
  only in the seed): the mean over its seeds, shaded from the lowest to the highest seed;
- ``test_time_vs_plain.png``: one panel per record, top-1 of SafePrior (default), EM, the
  self-supervised aggregation (where the record has it) and the oracle prior, each minus the plain
  expert average, per distribution (test_time_methods.json, and the rows an addendum added later,
  marked so in the legend: bench/records/addendum.py);
- ``reliability.png``: the records' reliability diagrams side by side (the plain average on the
  uniform test set, last epoch: ``reliability_bins`` of eval_last.json).

:func:`figures` computes each figure's series (plain numbers, before anything is drawn: what a
test reads) and :func:`draw` plots exactly those. A PNG is written at a fixed size and dpi with no
software or time stamp, so the same records give the same bytes with the same matplotlib. Its text
chunks name the writer (``Source``: how the write rule recognises a figure it may replace) and a
digest of the series, the caption and the drawing code (``Description``): ``report.py --check``
compares that digest, so a figure that is missing, or was drawn from other numbers or by other
code, fails the check on any machine, whatever its matplotlib renders.
"""
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from bench.records.addendum import LATER, added
from bench.records.distributions import in_order, short
from bench.records.methods import AGGREGATION, DEFAULT_PRIOR, EM, ORACLE, PLAIN, groups_over_seeds, method_name
from utils.reliability_diagram import draw_reliability
from utils.safe_write import WriteRefused, open_regular

FOLDER = "figures"  # beside the page; the page links its figures relative to itself
NAMES = ("top1_by_distribution.png", "test_time_vs_plain.png", "reliability.png")
DPI = 100
COLUMNS = 3  # panels per row
# (label in test_time_methods.json, legend, line style); the shipped default is drawn on top, the oracle dotted
# (it reads the test labels: a ceiling, never a method)
AGAINST_PLAIN = ((DEFAULT_PRIOR, "SafePrior (default)", "-"), (EM, "EM", "--"),
                 (AGGREGATION, "self-supervised aggregation (TADE)", "-."),
                 (ORACLE, "oracle (uses test labels)", ":"))
RELIABILITY_SET = "uniform"
CODE = (Path(__file__), Path(__file__).resolve().parents[2] / "utils" / "reliability_diagram.py")


@dataclass
class Figure:
    """One figure of the page: its file name (in :data:`FOLDER`), alt text, caption and series, and
    how it is drawn: ``plot(fig, grid, columns, series)`` on panels of ``panel`` inches (width,
    height), each ``len(ratios)`` grid rows of those height ratios."""
    name: str
    alt: str
    caption: str
    series: list
    plot: Callable
    panel: tuple
    ratios: tuple = (1,)

    def digest(self):
        """``sha256:HEX`` of the series, the caption and the code that draws them."""
        h = hashlib.sha256(json.dumps([self.name, self.alt, self.caption, self.series], sort_keys=True).encode())
        for path in CODE:
            h.update(path.read_text(encoding="utf-8").replace("\r\n", "\n").encode())
        return f"sha256:{h.hexdigest()}"


# -- the series, from the records ------------------------------------------------------------------------------------
def top1_series(records):
    """One panel per dataset: {"title", "distributions", "lines": [{"label", "seeds", "mean", "low", "high"}]},
    top-1 in %; low and high are the lowest and highest seed (equal to the mean for one seed)."""
    panels = {}
    for (dataset, loss, epochs), members in groups_over_seeds(records).items():
        panel = panels.setdefault(dataset, {"title": dataset, "lines": [],
                                            "distributions": in_order(members[0]["last"]["distributions"])})
        top1 = np.array([[100 * m["last"]["distributions"][n]["top1"] for n in panel["distributions"]]
                         for m in members], dtype=float)
        seeds = [m["record"]["seed"] for m in members]
        which = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"
        panel["lines"].append({"label": f"{method_name(loss)}, {epochs} epochs ({which})", "seeds": seeds,
                               "mean": top1.mean(0).tolist(), "low": top1.min(0).tolist(),
                               "high": top1.max(0).tolist()})
    return list(panels.values())


def against_plain_series(records):
    """One panel per record: {"title", "distributions", "lines": [{"label", "method", "style", "difference"}]},
    top-1 of each method in :data:`AGAINST_PLAIN` the record has, minus the plain expert average, in points."""
    panels = []
    for r in records:
        rows = r["methods"]["protocols"]["distributions"]
        plain = rows[PLAIN]["results"]
        names = in_order(plain)
        lines = [{"label": legend + (LATER if added(r, "distributions", label) else ""), "method": label,
                  "style": style,
                  "difference": [100 * (rows[label]["results"][n]["top1"] - plain[n]["top1"]) for n in names]}
                 for label, legend, style in AGAINST_PLAIN if label in rows]
        if lines:
            panels.append({"title": r["record"]["name"], "distributions": names, "lines": lines})
    return panels


def _bins(bins):
    """A reliability_bins entry as plain lists (an empty bin's accuracy and confidence None, as
    ``model.calibration.bins_as_data`` writes them; a record may hold NaN there), or a ValueError
    saying what is wrong with it."""
    if not isinstance(bins, dict) or not all(isinstance(bins.get(k), list)
                                             for k in ("edges", "count", "accuracy", "confidence")):
        raise ValueError("a reliability_bins entry needs the lists edges, count, accuracy and confidence")
    counts = bins["count"]
    if not counts or len(bins["edges"]) != len(counts) + 1 or not all(
            len(bins[k]) == len(counts) for k in ("accuracy", "confidence")):
        raise ValueError("a reliability_bins entry needs k counts, accuracies and confidences and k + 1 edges")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not all(number(e) for e in bins["edges"]) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise ValueError("reliability_bins edges must be finite numbers and counts integers >= 0")
    out = {"edges": list(bins["edges"]), "count": list(counts)}
    for key in ("accuracy", "confidence"):
        if not all(number(v) for v, c in zip(bins[key], counts) if c):
            raise ValueError(f"reliability_bins {key} must be a finite number in every bin that holds images")
        out[key] = [v if c else None for v, c in zip(bins[key], counts)]
    return out


def reliability_series(records):
    """One panel per record that holds reliability data: {"title", "distribution", "bins"}."""
    panels = []
    for r in records:
        by_set = r["last"].get("reliability_bins")
        if not by_set:
            continue
        name = RELIABILITY_SET if RELIABILITY_SET in by_set else in_order(by_set)[0]
        panels.append({"title": r["record"]["name"], "distribution": name, "bins": _bins(by_set[name])})
    return panels


# -- drawing ---------------------------------------------------------------------------------------------------------
def _canvas(panels, width, height, ratios):
    """A matplotlib Figure on the Agg canvas (no pyplot) for ``panels`` panels, :data:`COLUMNS` to a
    row, each ``width`` x ``height`` inches and ``len(ratios)`` grid rows of those height ratios."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    columns = min(panels, COLUMNS)
    rows = math.ceil(panels / columns)
    fig = MplFigure(figsize=(width * columns, height * rows), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_gridspec(rows * len(ratios), columns, height_ratios=list(ratios) * rows), columns


def _distribution_axis(ax, names):
    ax.set_xticks(range(len(names)), [short(n) for n in names])
    ax.set_xlabel("test distribution")
    ax.grid(True, alpha=0.3)


def _draw_top1(fig, grid, columns, panels):
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        x = range(len(panel["distributions"]))
        for line in panel["lines"]:
            drawn, = ax.plot(x, line["mean"], marker="o", label=line["label"])
            if len(line["seeds"]) > 1:
                ax.fill_between(x, line["low"], line["high"], color=drawn.get_color(), alpha=0.25, linewidth=0)
        _distribution_axis(ax, panel["distributions"])
        ax.set_ylabel("top-1 (%)")
        ax.set_title(panel["title"])
        ax.legend(fontsize=8)


def _draw_against_plain(fig, grid, columns, panels):
    first = None
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(grid[i // columns, i % columns], sharey=first)
        first = first or ax
        x = range(len(panel["distributions"]))
        ax.axhline(0.0, color="black", linewidth=1, label="plain expert average")
        for line in panel["lines"]:
            ax.plot(x, line["difference"], linestyle=line["style"], marker="o", markersize=3, label=line["label"],
                    color="tab:gray" if line["method"] == ORACLE else None,
                    zorder=3 if line["method"] == DEFAULT_PRIOR else 2)
        _distribution_axis(ax, panel["distributions"])
        ax.set_ylabel("top-1 minus plain average (points)")
        ax.set_title(panel["title"])
        ax.legend(fontsize=7, loc="upper center")


def _draw_reliability(fig, grid, columns, panels):
    for i, panel in enumerate(panels):
        row, column = 2 * (i // columns), i % columns
        top = fig.add_subplot(grid[row, column])
        bottom = fig.add_subplot(grid[row + 1, column], sharex=top)
        draw_reliability(top, bottom, panel["bins"], f"{panel['title']}\n{panel['distribution']}")


def draw(figure):
    """The matplotlib Figure of ``figure``, its series plotted as they are."""
    fig, grid, columns = _canvas(len(figure.series), *figure.panel, figure.ratios)
    figure.plot(fig, grid, columns, figure.series)
    fig.tight_layout()
    return fig


def png(figure, writer):
    """The PNG bytes of ``figure``: no software or time stamp; ``Source`` names ``writer``,
    ``Description`` holds :meth:`Figure.digest`."""
    buffer = io.BytesIO()
    draw(figure).savefig(buffer, format="png", dpi=DPI, metadata={
        "Software": None, "Title": figure.alt, "Source": writer, "Description": figure.digest()})
    return buffer.getvalue()


def stamp(path):
    """The text chunks of the PNG at ``path`` ({} when it is missing, not a regular file or not a PNG)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path) as f, Image.open(f) as image:
            return dict(getattr(image, "text", {}))
    except (OSError, ValueError, SyntaxError, WriteRefused, UnidentifiedImageError, Image.DecompressionBombError):
        return {}


# -- the page's figures -----------------------------------------------------------------------------------------------
def figures(records):
    """The page's figures (each only where some record holds its data), series computed."""
    out = []
    top1 = top1_series(records)
    if top1:
        out.append(Figure(NAMES[0], "Top-1 of the plain expert average on each test distribution, per method", (
            "Top-1 (%) of the plain expert average (`test.py`, last epoch) on the test distributions from forward50 "
            "to backward50. One line per method: the mean over its seeds; the shaded band runs from the lowest to "
            "the highest seed (min-max) where a method has several."), top1, _draw_top1, (7.0, 4.5)))
    against = against_plain_series(records)
    if against:
        out.append(Figure(NAMES[1], "Test-time methods minus the plain expert average, per record", (
            "Top-1 of each test-time method minus the plain expert average, in points, per test distribution "
            "(`test_time_methods.json`, last epoch): SafePrior (default; solid, on top), EM (dashed), TADE's "
            "self-supervised aggregation (dash-dot) where the record has it, and the oracle prior (grey, dotted), "
            "which uses the test labels: a ceiling, not a method."
            + (" A line marked *added later* was computed from view logits added to its record afterwards (its "
               "`addendum.json`; the tables below name the commit)."
               if any(line["label"].endswith(LATER) for panel in against for line in panel["lines"]) else "")),
            against, _draw_against_plain, (5.0, 4.0)))
    reliability = reliability_series(records)
    if reliability:
        sets = sorted({p["distribution"] for p in reliability})
        left_out = [r["record"]["name"] for r in records if not r["last"].get("reliability_bins")]
        out.append(Figure(NAMES[2], "Reliability diagrams of the records side by side", (
            f"Reliability of the plain expert average on the {', '.join(sets)} test set (`eval_last.json`'s "
            "`reliability_bins`, last epoch): accuracy per confidence bin against the diagonal, the gap to the "
            "bin's confidence shaded, the share of images per bin below."
            + (f" No reliability data in: {', '.join(f'`{n}`' for n in left_out)}." if left_out else "")),
            reliability, _draw_reliability, (4.2, 5.0), (3, 1)))
    return out


def markdown(figs):
    """The page's section of figures: each an image link relative to the page, then its caption."""
    return "\n\n".join(f"![{f.alt}]({FOLDER}/{f.name})\n\n*{f.caption}*" for f in figs)
