"""Predictions on unlabeled images (test_train.py --images, trainer/unlabeled.py), end to end on a
generated JPEG/PNG folder: a model trained from the folder, its class names through the
checkpoint, predictions equal to what test_train.py scores on the same images with labels,
--online, unreadable images, and the bad inputs."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import test_train
from base.base_model import average_experts
from trainer import unlabeled
from trainer.adaptation import run_method
from trainer.build import build_test_time_method, load_trained
from trainer.forward import collect_expert_logits
from utils.checkpoint import load_checkpoint
from tests.helpers import ROOT, call_entry, one_line_error, run_entry, write_config
from tests.image_folders import CLASSES, folder_config, write_folder

# SafePrior with its settings given (a 1-epoch model on noise images has nothing to calibrate on).
PRIOR = {"temperature": 1.0, "bias": False, "strength": 0.5, "min_divergence": 0.0, "significance": 0.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A model trained one epoch on train/ 30/12/6 (held-out split carved), test/ 5 per class."""
    base = tmp_path_factory.mktemp("predict")
    root = write_folder(base / "data", (30, 12, 6), nested=True)
    write_folder(root, (5, 5, 5), split="test", seed=1)
    config = write_config(base / "config.json", folder_config(root, base / "runs"))
    assert call_entry("train.py", ["-c", config, "--run_id", "r"]) == 0
    tt = json.loads((ROOT / "configs" / "test_time_folder_prior.json").read_text())
    tt["test_time"]["args"].update(PRIOR)
    tt_path = write_config(base / "test_time.json", tt)
    return {"base": base, "root": root, "run": base / "runs" / "folder" / "r", "tt": tt_path}


def checkpoint(run):
    return run["run"] / "last.pth"


def main(argv):
    """test_train.py in this process; returns the exit code (0 when it returned)."""
    try:
        test_train.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def test_trained_from_the_folder_predicts_unlabeled_images(run, tmp_path, capfd):
    ckpt = load_checkpoint(checkpoint(run))
    assert ckpt["class_names"] == sorted(CLASSES)
    # the shipped folder config names no class count: the model took the three class folders' (saved)
    assert json.loads((run["run"] / "config.json").read_text())["arch"]["args"]["num_classes"] == 3
    assert (run["run"] / "validation_split.txt").read_text().count("\n") == 4  # 3 cat + 1 dog held out
    out = tmp_path / "pred"
    code, _, err = run_entry("test_train.py", ["-c", run["tt"], "-r", checkpoint(run), "--images", run["root"] / "test",
                                               "--out", out], capfd)
    assert code == 0, err[-2000:]
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == 15 and set(table["prediction"]) <= set(CLASSES)
    assert list(table.columns[:5]) == ["path", "prediction", "probability", "top1", "top1_probability"]
    assert {"top3", "average_prediction", "average_probability"} <= set(table.columns)
    assert np.allclose(table[[f"top{k}_probability" for k in (1, 2, 3)]].sum(axis=1), 1.0)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 15 and summary["num_unreadable"] == 0 and summary["method"] == "SafePrior"
    assert set(summary["estimate"]["class_prior"]) == set(CLASSES) and "shift_detected" in summary["estimate"]
    assert summary["seconds"]["total"] > 0


def test_predictions_equal_the_labelled_scoring(run, tmp_path):
    """The same images through --images and through test_train.py's test set (labels present)."""
    trained = load_trained(str(checkpoint(run)))
    method, _ = build_test_time_method(str(run["tt"]))
    logits, targets = collect_expert_logits(trained.net, trained.data.test_loader(), "cpu", trained.perf)
    paths = unlabeled.image_paths(run["root"] / "test")
    images = unlabeled.collect_image_logits(trained, paths, "cpu")
    assert [str(Path(p).relative_to(run["root"])) for p in images.paths] == trained.data.test_list.images
    assert torch.allclose(images.logits, logits)
    scores, facts = unlabeled.run_on_images(method, trained, images, "cpu")
    labelled = run_method(method, trained, logits, targets, {"uniform": np.arange(len(targets))}, "cpu")["uniform"]
    assert labelled["prior"] == pytest.approx(facts["prior"])
    assert float((scores.argmax(1) == targets).double().mean()) == pytest.approx(labelled["top1"])
    # and through the command line: the CSV's accuracy against the folder's labels is test_train.py's top-1
    out = tmp_path / "labelled.json"
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--distributions", "uniform", "--out", out]) == 0
    scored = json.loads(out.read_text())["distributions"]["uniform"]
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", run["root"] / "test", "--out",
                 tmp_path / "p"]) == 0
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    truth = table["path"].map(lambda p: Path(p).parent.name)
    assert (table["prediction"] == truth).mean() == pytest.approx(scored["top1"])
    assert (table["average_prediction"] == truth).mean() == pytest.approx(scored["top1_average"])


def test_online_scores_each_batch_before_learning_from_it(run, tmp_path):
    trained = load_trained(str(checkpoint(run)))
    method, _ = build_test_time_method(str(run["tt"]))
    images = unlabeled.collect_image_logits(trained, unlabeled.image_paths(run["root"] / "test"), "cpu")
    scores, facts = unlabeled.run_on_images(method, trained, images, "cpu", online=True, batch_size=4)
    average = average_experts(images.logits)
    assert torch.equal(scores[:4].argmax(1), average[:4].argmax(1))  # nothing learnt before the first batch
    assert facts["images_seen"] == 15 and facts["batches"] == 4 and facts["stream_batch"] == 4
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", run["root"] / "test", "--online", "--bs", 4,
                 "--out", tmp_path / "o"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["online"] is True and summary["facts"]["batches"] == 4
    # the same --out again: an earlier prediction is replaced
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", run["root"] / "test",
                 "--out", tmp_path / "o"]) == 0


def test_self_supervised_aggregation_learns_weights_on_the_images(run):
    trained = load_trained(str(checkpoint(run)))
    tt = json.loads((ROOT / "configs" / "test_time_cifar10_tade.json").read_text())
    tt["test_time"]["args"].update(epochs=1, batch_size=8, num_workers=0)
    method, _ = build_test_time_method(str(write_config(run["base"] / "tade.json", tt)))
    images = unlabeled.collect_image_logits(trained, unlabeled.image_paths(run["root"] / "test"), "cpu")
    scores, facts = unlabeled.run_on_images(method, trained, images, "cpu")
    assert scores.shape == (15, 3) and len(facts["weights"]) == 3 and facts["epochs_run"] == 1
    assert unlabeled.describe_estimate(facts, sorted(CLASSES))["expert_weights"] == facts["weights"]


def test_unreadable_images_are_reported_and_skipped(run, tmp_path, capsys):
    images = tmp_path / "incoming"
    shutil.copytree(run["root"] / "test", images)
    (images / "cat" / "broken.png").write_bytes(b"not a png at all")
    good = images / "dog" / "00.png"
    (images / "dog" / "cut.jpg").write_bytes((run["root"] / "test" / "dog" / "01.jpg").read_bytes()[:40])
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", images, "--out", tmp_path / "p"]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: cannot read image") == 2 and "broken.png" in err and "cut.jpg" in err
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["num_images"] == 17 and summary["num_unreadable"] == 2 and summary["num_predicted"] == 15
    assert len(pd.read_csv(tmp_path / "p" / "predictions.csv")) == 15 and good.exists()
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", images, "--strict", "--out",
                 tmp_path / "s"]) == 2
    line = capsys.readouterr().err.strip()
    assert "broken.png" in line and "--strict" in line and len(line.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_odd_images_are_predicted_and_bad_files_say_why(run, tmp_path, capsys):
    """Odd but valid images (16-bit, EXIF-rotated, palette, CMYK, 1 x 1, ...) are predicted; a FIFO, a
    link to nothing and a cut PNG are one warning each saying why; other files are one counted note."""
    import os
    from tests.image_folders import write_odd_images
    images = tmp_path / "incoming"
    odd = write_odd_images(images / "nested" / "deeper")
    os.mkfifo(images / "fifo.png")
    (images / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (images / "cut.png").write_bytes((run["root"] / "test" / "dog" / "00.png").read_bytes()[:60])
    for name in ("README.txt", "scan.tif", ".DS_Store"):
        (images / name).write_text("x")
    assert main(["-c", run["tt"], "-r", checkpoint(run), "--images", images, "--out", tmp_path / "p"]) == 0
    err = capsys.readouterr().err
    assert "left out 2 file(s) not named as images" in err
    for name, why in (("fifo.png", "it is a FIFO"), ("gone.jpg", "it is a link to nothing"), ("cut.png", "OSError")):
        assert f"warning: cannot read image {images / name} ({why}" in err, err
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["num_predicted"] == len(odd) and summary["num_unreadable"] == 3
    assert set(pd.read_csv(tmp_path / "p" / "predictions.csv")["path"]) == {str(f) for f in odd.values()}


def test_bad_inputs_are_one_line_errors(run, tmp_path, capsys):
    base = ["-c", run["tt"], "-r", checkpoint(run)]

    def refused(*argv, fragment):
        assert main(base + list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err, err

    refused("--images", tmp_path / "nowhere", fragment="nowhere does not exist")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    refused("--images", tmp_path / "empty", fragment="no image below this folder")
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing\n\n")
    refused("--images", listing, fragment="names no image")
    listing.write_text(f"{run['root'] / 'test' / 'cat' / '00.png'}\nmissing.png\n")
    refused("--images", listing, fragment="line 2: image")
    listing.write_text(f"{run['root'] / 'test' / 'cat'}\n")
    refused("--images", listing, fragment="cat is a folder; expected an image file")
    # --out that would overwrite an input: the list file itself is OUT/predictions.csv
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text(f"{run['root'] / 'test' / 'cat' / '00.png'}\n")
    refused("--images", out / "predictions.csv", "--out", out, fragment="is an input of this run")
    assert (out / "predictions.csv").read_text().endswith("00.png\n")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "predictions.csv").write_text("mine\n")
    refused("--images", run["root"] / "test", "--out", foreign, fragment="predictions.csv, which")
    assert (foreign / "predictions.csv").read_text() == "mine\n"
    # a folder whose classes differ from the checkpoint's
    other = write_folder(tmp_path / "other", (4, 4, 4), classes=("cat", "dog", "emu"))
    refused("--images", run["root"] / "test", "--data_dir", other, "--out", tmp_path / "x",
            fragment="'owl' in the checkpoint, 'emu' in")
    assert not (tmp_path / "x").exists()


def test_end_to_end_errors_exit_2(run, tmp_path, capfd):
    code, _, err = run_entry("test_train.py", ["-c", run["tt"], "-r", checkpoint(run), "--images", tmp_path / "none"],
                             capfd)
    one_line_error(code, err, "none does not exist")


def test_own_data_demo_scores_both_methods_on_withheld_labels_and_report_renders_it(run, tmp_path, capfd,
                                                                                     monkeypatch):
    """bench/studies/own_data_demo.py end to end on the folder model: anonymous copies, two predictions
    per set (the default and the compared config), scored only against the withheld labels, and the
    table bench/records/report.py renders from its JSON. ``--work`` is relative: the folder the command
    is typed in, though test_train.py runs from the project root."""
    monkeypatch.chdir(tmp_path)
    from bench.records.report import load_own_data, load_studies, render_own_data
    tt = json.loads((ROOT / "configs" / "test_time_folder_tade.json").read_text())
    tt["test_time"]["args"].update(epochs=1, batch_size=8, num_workers=0)
    tade = write_config(tmp_path / "tade.json", tt)
    studies = tmp_path / "studies"
    out = studies / "demo.json"
    code, _, err = run_entry("bench/studies/own_data_demo.py", ["-r", checkpoint(run), "-c", run["tt"], "--compare",
                                                                tade, "--work", "work", "--distributions",
                                                                "uniform", "--out", out], capfd)
    assert code == 0, err
    demo = json.loads(out.read_text())
    row = demo["distributions"]["uniform"]
    assert row["images"] == 15 and demo["methods"] == {"config": "SafePrior", "compare": "SelfSupervisedAggregation"}
    assert sorted(p.name for p in (tmp_path / "work" / "unlabeled" / "uniform").iterdir())[0] == "000000.png"
    labels = pd.read_csv(tmp_path / "work" / "withheld" / "uniform.csv").set_index("path")["label"]
    for folder, key in (("predictions", "accuracy"), ("compare", "compare_accuracy")):
        table = pd.read_csv(tmp_path / "work" / folder / "uniform" / "predictions.csv")
        assert row[key] == pytest.approx(float((table["prediction"] == labels.reindex(table["path"]).values).mean()))
    assert load_studies(studies) == {}  # not a calibration study
    text = render_own_data(load_own_data(studies))
    assert "| Uni | 15 | " + f"{100 * row['accuracy']:.2f} | {100 * row['compare_accuracy']:.2f} |" in text


def test_own_data_demo_refuses_a_bad_test_time_config_before_any_work(tmp_path, capfd):
    bad = write_config(tmp_path / "bad.json", {"test_time": {"type": "NoSuchMethod"}})
    code, _, err = run_entry("bench/studies/own_data_demo.py", ["-r", tmp_path / "none.pth", "--compare", bad,
                                                                "--work", tmp_path / "work"], capfd)
    one_line_error(code, err, "NoSuchMethod", "not a known test_time type")
    assert not (tmp_path / "work").exists()
