"""The figures of docs/results.md (bench/records/figures.py, written by bench/records/report.py) on
small made-up records: each figure drawn from the records' numbers and linked from the page, the
same bytes when drawn again, ``--check`` failing on a missing or outdated figure, and bad input as
one line (exit 2) with nothing written."""
import json
import math
import shutil

import numpy as np
import pytest

from bench.records import figures
from bench.records.report import START, WRITER, load_records
from bench.records.report import main as report
from tests.helpers import one_line_error

ELEVEN = ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
          "backward2", "backward5", "backward10", "backward25", "backward50"]
STORED = ELEVEN[5:] + ELEVEN[:5]  # the order in the made-up files: the figures put forward50 first all the same
AGGREGATION = "self-supervised aggregation (TADE)"
OFFSETS = {"SafePrior (default)": 0.01, "EM": 0.02, AGGREGATION: -0.015, "oracle prior (uses test labels)": 0.03,
           "MAP": 0.025}  # MAP: in the record, not in the figure
BINS = {"edges": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "count": [0, 3, 5, 7, 9],
        "accuracy": [None, 0.3, 0.45, 0.7, 0.95], "confidence": [None, 0.35, 0.5, 0.68, 0.9]}


def plain_top1(loss, seed, name):
    """The made-up plain-average top-1 of a record: every record, seed and distribution differ."""
    i = ELEVEN.index(name)
    return (0.50 + 0.02 * i + 0.013 * seed) if loss == "DiverseExpertLoss" else (0.70 - 0.01 * i)


def write_record(results, name, loss, seed, bins=BINS):
    folder = results / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "record.json").write_text(json.dumps({
        "name": name, "dataset": "TinyLT", "loss": loss, "epochs": 2, "seed": seed, "precision": "fp32",
        "machine": {"cpu": "test", "cpus": 1}, "training_seconds": 60, "commit_trained": "abc"}))
    rows = {n: {"top1": plain_top1(loss, seed, n), "many": 0.5, "medium": 0.4, "ece": 0.05, "nll": 1.0}
            for n in STORED}
    last = {"checkpoint_epoch": 2, "distributions": rows}
    if bins is not None:
        last["reliability_bins"] = {n: bins for n in STORED}
    (folder / "eval_last.json").write_text(json.dumps(last))
    labels = ["expert average", *[k for k in OFFSETS if k != AGGREGATION or loss == "DiverseExpertLoss"]]
    methods = {label: {"seconds": 0.1, "results": {n: {"top1": rows[n]["top1"] + OFFSETS.get(label, 0.0)}
                                                   for n in STORED}} for label in labels}
    (folder / "test_time_methods.json").write_text(json.dumps({"protocols": {"distributions": methods}}))
    (folder / "epochs.csv").write_text("epoch,loss,accuracy\n1,1.2,0.4\n2,1.0,0.5\n")
    return folder


def make_results(root, bins=BINS):
    results = root / "results"
    for name, loss, seed in (("tiny_tade_s1", "DiverseExpertLoss", 1), ("tiny_tade_s2", "DiverseExpertLoss", 2),
                             ("tiny_balpoe_s1", "LogitAdjustedLoss", 1)):
        write_record(results, name, loss, seed, bins)
    (root / "studies").mkdir()
    return results


def run(root, *extra):
    """report.py on ``root``'s records and page; returns the exit code."""
    return report(["--results", str(root / "results"), "--doc", str(root / "docs" / "results.md"),
                   "--studies", str(root / "studies"), *extra])


def by_name(records):
    return {f.name: f for f in figures.figures(records)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A page and its figures written once from three made-up records (tests that change them copy)."""
    root = tmp_path_factory.mktemp("page")
    make_results(root)
    (root / "docs").mkdir()
    assert run(root) == 0
    return root


@pytest.fixture
def copy(written, tmp_path):
    shutil.copytree(written, tmp_path / "page")
    return tmp_path / "page"


def test_each_figure_is_written_and_linked_from_the_page(written):
    page = (written / "docs" / "results.md").read_text()
    assert START in page and "### Figures" in page
    for name in figures.NAMES:
        path = written / "docs" / "figures" / name
        assert f"](figures/{name})" in page
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert figures.stamp(path)["Source"] == WRITER
    assert "oracle" in page and "min-max" in page  # the captions say what the dotted line and the band are
    assert run(written, "--check") == 0


def test_top1_figure_is_the_mean_over_seeds_with_the_seed_range_forward_to_backward(written):
    figure = by_name(load_records(written / "results"))["top1_by_distribution.png"]
    (panel,) = figure.series
    assert panel["distributions"] == ELEVEN
    tade, balpoe = panel["lines"]
    assert tade["label"] == "TADE, 2 epochs (seeds 1, 2)" and balpoe["label"] == "BalPoE, 2 epochs (seed 1)"
    seeds = np.array([[100 * plain_top1("DiverseExpertLoss", s, n) for n in ELEVEN] for s in (1, 2)])
    np.testing.assert_allclose(tade["mean"], seeds.mean(0))
    np.testing.assert_allclose(tade["low"], seeds.min(0))
    np.testing.assert_allclose(tade["high"], seeds.max(0))
    assert balpoe["low"] == balpoe["mean"] == balpoe["high"]
    (ax,) = figures.draw(figure).axes
    np.testing.assert_allclose(ax.lines[0].get_ydata(), tade["mean"])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), balpoe["mean"])
    (band,) = ax.collections  # one band: only TADE has several seeds
    ys = band.get_paths()[0].vertices[:, 1]
    assert math.isclose(ys.min(), seeds.min()) and math.isclose(ys.max(), seeds.max())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["F50", "F25", "F10", "F5", "F2", "Uni",
                                                            "B2", "B5", "B10", "B25", "B50"]


def test_test_time_figure_is_each_method_minus_the_plain_average(written):
    figure = by_name(load_records(written / "results"))["test_time_vs_plain.png"]
    panels = {p["title"]: p for p in figure.series}
    assert list(panels) == ["tiny_balpoe_s1", "tiny_tade_s1", "tiny_tade_s2"]
    tade = panels["tiny_tade_s1"]
    assert all(p["distributions"] == ELEVEN for p in figure.series)
    assert [line["label"] for line in tade["lines"]] == [
        "SafePrior (default)", "EM", "self-supervised aggregation (TADE)", "oracle (uses test labels)"]
    assert AGGREGATION not in [line["method"] for line in panels["tiny_balpoe_s1"]["lines"]]
    for line in tade["lines"]:
        np.testing.assert_allclose(line["difference"], [100 * OFFSETS[line["method"]]] * 11)
    axes = figures.draw(figure).axes
    legend = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert legend[0] == "plain expert average" and "oracle (uses test labels)" in legend
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), [0, 0])  # the plain average: the zero line
    np.testing.assert_allclose(axes[1].lines[2].get_ydata(), [100 * OFFSETS["EM"]] * 11)


def test_reliability_figure_draws_each_records_bins_side_by_side(written):
    figure = by_name(load_records(written / "results"))["reliability.png"]
    assert [p["title"] for p in figure.series] == ["tiny_balpoe_s1", "tiny_tade_s1", "tiny_tade_s2"]
    assert all(p["distribution"] == "uniform" and p["bins"] == BINS for p in figure.series)
    axes = figures.draw(figure).axes
    assert len(axes) == 6  # a diagram and its histogram per record
    heights = [bar.get_height() for bar in axes[2].patches[:5]]
    np.testing.assert_allclose(heights, [0.0, 0.3, 0.45, 0.7, 0.95])
    shares = [bar.get_height() for bar in axes[3].patches]
    np.testing.assert_allclose(shares, np.array(BINS["count"]) / sum(BINS["count"]))


def test_a_record_without_reliability_data_is_left_out_and_named(tmp_path):
    results = make_results(tmp_path)
    shutil.rmtree(results / "tiny_tade_s2")
    write_record(results, "tiny_tade_s2", "DiverseExpertLoss", 2, bins=None)
    figure = by_name(load_records(results))["reliability.png"]
    assert [p["title"] for p in figure.series] == ["tiny_balpoe_s1", "tiny_tade_s1"]
    assert "No reliability data in: `tiny_tade_s2`" in figure.caption
    nan_bins = dict(BINS, accuracy=[float("nan"), *BINS["accuracy"][1:]])  # as older records hold empty bins
    write_record(tmp_path / "other", "tiny_tade_s3", "DiverseExpertLoss", 3, bins=nan_bins)
    (panel,) = by_name(load_records(tmp_path / "other"))["reliability.png"].series
    assert panel["bins"]["accuracy"][0] is None


def test_figures_are_the_same_bytes_when_drawn_again(written):
    for figure in figures.figures(load_records(written / "results")):
        data = figures.png(figure, WRITER)
        assert data == figures.png(figure, WRITER) == (written / "docs" / "figures" / figure.name).read_bytes()
        assert b"Software" not in data and b"Matplotlib" not in data


def test_check_fails_when_a_linked_figure_is_missing(copy, capfd):
    (copy / "docs" / "figures" / "test_time_vs_plain.png").unlink()
    capfd.readouterr()
    assert run(copy, "--check") == 1
    err = capfd.readouterr().err
    assert "test_time_vs_plain.png: missing" in err and "differs from the records" not in err
    assert run(copy) == 0 and run(copy, "--check") == 0


def test_check_fails_when_a_figure_is_drawn_from_other_numbers(copy, capfd):
    folder = copy / "docs" / "figures"
    before = {name: (folder / name).read_bytes() for name in figures.NAMES}
    path = copy / "results" / "tiny_tade_s1" / "eval_last.json"
    payload = json.loads(path.read_text())
    payload["reliability_bins"]["uniform"]["count"] = [0, 4, 5, 7, 9]  # no table shows the bins: only a figure
    path.write_text(json.dumps(payload))
    capfd.readouterr()
    assert run(copy, "--check") == 1
    err = capfd.readouterr().err
    assert "reliability.png: missing, or drawn from other records" in err and "differs from the records" not in err
    assert run(copy) == 0 and run(copy, "--check") == 0
    assert (folder / "reliability.png").read_bytes() != before["reliability.png"]
    assert (folder / "top1_by_distribution.png").read_bytes() == before["top1_by_distribution.png"]


def test_check_fails_when_a_figure_is_swapped_for_another(copy):
    folder = copy / "docs" / "figures"
    shutil.copyfile(folder / "top1_by_distribution.png", folder / "reliability.png")
    assert run(copy, "--check") == 1


@pytest.mark.parametrize("plant", ["foreign", "link"])
def test_a_figure_the_report_did_not_write_is_refused_before_any_work(copy, capfd, plant):
    target = copy / "docs" / "figures" / "reliability.png"
    target.unlink()
    if plant == "foreign":
        target.write_bytes(b"\x89PNG\r\n\x1a\nsomeone else's picture")
    else:
        (copy / "elsewhere.png").write_bytes(b"mine")
        target.symlink_to(copy / "elsewhere.png")
    page = (copy / "docs" / "results.md").read_bytes()
    planted = target.read_bytes()
    capfd.readouterr()
    code = run(copy)
    one_line_error(code, capfd.readouterr().err, "--doc's figure", "reliability.png")
    assert target.read_bytes() == planted and (copy / "docs" / "results.md").read_bytes() == page


def test_malformed_reliability_data_is_one_line_and_nothing_is_written(tmp_path, capfd):
    results = make_results(tmp_path)
    path = results / "tiny_tade_s2" / "eval_last.json"
    payload = json.loads(path.read_text())
    payload["reliability_bins"]["uniform"]["count"] = [1, 2]
    path.write_text(json.dumps(payload))
    (tmp_path / "docs").mkdir()
    capfd.readouterr()
    code = run(tmp_path)
    one_line_error(code, capfd.readouterr().err, "record tiny_tade_s2: malformed", "reliability_bins")
    assert list((tmp_path / "docs").iterdir()) == []
