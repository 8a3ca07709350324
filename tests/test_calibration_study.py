"""bench/studies/calibration_study.py on a small saved-logits record (synthetic logits in the saved format),
and its table in bench/records/report.py."""
import json

import numpy as np
import pytest

from bench.records import report
from tests.helpers import run_script
from trainer.saved_logits import save_logits

C = 10


def _logits(y, rng, bias):
    z = rng.normal(0, 1.0, size=(len(y), 2, C)).astype(np.float32)
    z[np.arange(len(y)), :, y] += 2.5
    return z + bias[None, None, :]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results") / "synthetic_e1_s1"
    folder.mkdir()
    rng = np.random.default_rng(0)
    counts = [int(100 * 0.1 ** (i / (C - 1))) for i in range(C)]
    bias = np.linspace(0.6, -0.6, C).astype(np.float32)  # the model leans to the head, as trained ones do
    test_y = np.repeat(np.arange(C), 40)
    val_y = np.repeat(np.arange(C), 30)
    order = np.arange(len(test_y))
    head = np.concatenate([order[test_y == c][: max(2, 40 - 4 * c)] for c in range(C)])
    tail = np.concatenate([order[test_y == c][: max(2, 4 + 4 * c)] for c in range(C)])
    save_logits(folder / "logits.npz", {"test": (_logits(test_y, rng, bias), test_y),
                                        "validation": (_logits(val_y, rng, bias), val_y)},
                counts, {"forward": head, "uniform": order, "backward": tail},
                {"data_loader": "DigitsLTDataModule", "validation_info": {"option": "data_loader.args.validation"}})
    agg = {"results": {n: {"top1": 0.5} for n in ("forward", "uniform", "backward")}}
    (folder / "test_time_methods.json").write_text(json.dumps(
        {"protocols": {"distributions": {"self-supervised aggregation (TADE)": agg}}}))
    return folder


def test_the_study_scores_every_row_at_every_size(record, tmp_path):
    out = tmp_path / "study.json"
    proc = run_script("bench/studies/calibration_study.py", record, "--sizes", "5,all", "--draws", "2",
                      "--rows", "SafePrior auto:free,SafePrior auto:prior,EM:shrunk_prior", "--out", out)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    written = json.loads(out.read_text())
    assert written["written_by"] == "bench/studies/calibration_study.py"
    study = written[record.name]
    assert list(study["sizes"]) == ["5", "all"]
    assert study["references"]["aggregation mean"] == pytest.approx(50.0)
    assert "oracle prior mean (uses test labels)" in study["references"]
    five = study["sizes"]["5"]
    assert set(five) == {"shipped config", "SafePrior auto, free (the old rule)", "SafePrior auto, prior",
                         "EM, shrunk_prior"}
    assert len(five["SafePrior auto, prior"]["draws"]) == 2 and len(study["sizes"]["all"]["EM, shrunk_prior"][
        "draws"]) == 1
    # the shipped digits config is the row with its settings, computed once
    shipped = study["shipped_config"]["args"]
    same = {True: "SafePrior auto, free (the old rule)", "prior": "SafePrior auto, prior"}.get(shipped["bias"])
    if same:
        assert five["shipped config"].get("same_as") == same or five[same].get("same_as") == "shipped config"
    for entry in five.values():
        assert entry["worst"] <= entry["mean"] and entry["holds"] == (
            entry["worst"] >= -0.5 and entry["worst_dirichlet"] >= -0.5 and entry["mean"] >= 50.0)
    # the draws differ (seeded subsets of the pool), the whole pool is one draw
    draws = five["SafePrior auto, prior"]["draws"]
    assert draws[0]["temperature"] != draws[1]["temperature"]
    rec = {"record": {"name": record.name}, "study": study}
    text = report.calibration_study_table(rec)
    assert "| 5 | SafePrior auto, prior |" in text and "| all | EM, shrunk_prior |" in text


def test_a_recorded_result_is_never_written_into(record):
    (record / "record.json").write_text("{}")  # the folder is now a record: read-only
    try:
        proc = run_script("bench/studies/calibration_study.py", record, "--out", record / "calibration_study.json")
    finally:
        (record / "record.json").unlink()
    assert proc.returncode != 0 and "read-only" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (record / "calibration_study.json").exists()


def test_unknown_rows_are_named(record):
    proc = run_script("bench/studies/calibration_study.py", record, "--rows", "SafePrior auto:ridge")
    assert proc.returncode != 0 and "ridge" in proc.stderr
