"""The reliability diagram of one set of predictions, from the per-bin statistics of
``model.calibration.reliability_bins`` (``edges``, ``count``, ``accuracy``, ``confidence``; an empty
bin's accuracy and confidence are NaN, or null in a JSON result): accuracy per confidence bin
against the diagonal, the gap shaded, and the share of samples per bin below.

Pure Python and matplotlib's Agg canvas without pyplot (no global state, no torch), so
bench/records/report.py draws the records' diagrams from their JSON without loading a model.
"""


def ece_mce(bins):
    """(ECE, MCE) of the bins: ECE = sum_b (n_b / n) |acc_b - conf_b|, MCE = max_b |acc_b - conf_b|
    over the non-empty bins; NaN for no samples."""
    n = sum(bins["count"])
    gaps = [(c, abs(a - f)) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c > 0]
    if not n:
        return float("nan"), float("nan")
    return sum(c / n * g for c, g in gaps), max(g for _, g in gaps)


def draw_reliability(top, bottom, bins, title):
    """The diagram on two matplotlib axes: ``top`` the accuracy bars against the diagonal (with ECE
    and MCE), ``bottom`` the share of samples per bin."""
    edges, counts = bins["edges"], bins["count"]
    n = max(sum(counts), 1)
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    acc = [0.0 if c == 0 else a for a, c in zip(bins["accuracy"], counts)]
    conf = [left + width / 2 if c == 0 else f for left, f, c in zip(lefts, bins["confidence"], counts)]
    ece, mce = ece_mce(bins)
    top.bar(lefts, acc, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(lefts, [f - a if c else 0.0 for f, a, c in zip(conf, acc, counts)], bottom=acc, width=width,
            align="edge", edgecolor="tab:red", color="tab:red", alpha=0.3, label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title)
    top.text(0.03, 0.70, f"ECE {100 * ece:.2f}%\nMCE {100 * mce:.2f}%", ha="left", va="top",
             transform=top.transAxes, fontsize=9, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    bottom.bar(lefts, [c / n for c in counts], width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("share")


def plot_reliability(bins, path, title=None):
    """One diagram written to ``path`` (PNG, atomically). ``bins`` is ``reliability_bins``' dict
    (or ``calibration_metrics``', which holds it under ``bins``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from utils.safe_write import atomic_file

    fig = Figure(figsize=(5, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    draw_reliability(top, bottom, bins.get("bins", bins), title or "Reliability diagram")
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, dpi=120, format="png")
    return path
