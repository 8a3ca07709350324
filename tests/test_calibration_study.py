"""bench/studies/calibration_study.py on a small saved-logits record (synthetic logits in the saved format),
and its table in bench/records/report.py (on a recorded model: tests/test_record.py)."""
import json

import numpy as np
import pytest

from bench.records import report
from tests.helpers import one_line_error, run_entry
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


STUDY = "bench/studies/calibration_study.py"


def test_the_study_scores_every_row_at_every_size(record, tmp_path, capfd):
    out = tmp_path / "study.json"
    rows = "SafePrior default:free,SafePrior default:prior,EM:shrunk_prior"
    code, stdout, err = run_entry(STUDY, [record, "--sizes", "5,all", "--draws", "2", "--rows", rows, "--out", out],
                                  capfd)
    assert code == 0, stdout[-2000:] + err[-3000:]
    written = json.loads(out.read_text())
    assert written["written_by"] == "bench/studies/calibration_study.py"
    study = written[record.name]
    assert list(study["sizes"]) == ["5", "all"]
    assert study["references"]["aggregation mean"] == pytest.approx(50.0)
    assert "oracle prior mean (uses test labels)" in study["references"]
    five = study["sizes"]["5"]
    assert set(five) == {"shipped config", "SafePrior default, free", "SafePrior default, prior",
                         "EM, shrunk_prior"}
    assert len(five["SafePrior default, prior"]["draws"]) == 2 and len(study["sizes"]["all"]["EM, shrunk_prior"][
        "draws"]) == 1
    # the shipped digits config is the row with its settings, computed once
    shipped = study["shipped_config"]["args"]
    same = {True: "SafePrior default, free", "prior": "SafePrior default, prior"}.get(shipped["bias"])
    if same:
        assert five["shipped config"].get("same_as") == same or five[same].get("same_as") == "shipped config"
    for entry in five.values():
        assert entry["worst"] <= entry["mean"] and entry["holds"] == (
            entry["worst"] >= -0.5 and entry["worst_dirichlet"] >= -0.5 and entry["mean"] >= 50.0)
    # the draws differ (seeded subsets of the pool), the whole pool is one draw
    draws = five["SafePrior default, prior"]["draws"]
    assert draws[0]["temperature"] != draws[1]["temperature"]
    rec = {"record": {"name": record.name}, "study": study}
    text = report.calibration_study_table(rec)
    assert "| 5 | SafePrior default, prior |" in text and "| all | EM, shrunk_prior |" in text


def test_a_recorded_result_is_never_written_into(record, capfd):
    (record / "record.json").write_text("{}")  # the folder is now a record: read-only
    try:
        code, _, err = run_entry(STUDY, [record, "--out", record / "calibration_study.json"], capfd)
    finally:
        (record / "record.json").unlink()
    one_line_error(code, err, "read-only")
    assert not (record / "calibration_study.json").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--rows", "SafePrior default:ridge"], ["--rows 'SafePrior default:ridge'", "FAMILY one of"]),
    (["--training_images"], ["--training_images", "no training logits"]),
])
def test_bad_rows_and_a_record_without_training_logits_are_named(record, tmp_path, args, fragments, capfd):
    code, _, err = run_entry(STUDY, [record, *args, "--out", tmp_path / "study.json"], capfd)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "study.json").exists()


def test_a_size_beyond_the_pool_is_noted_and_a_record_without_a_split_is_named(record, tmp_path, capfd):
    code, stdout, err = run_entry(STUDY, [record, "--sizes", "40", "--draws", "1", "--rows", "EM:free", "--out",
                                          tmp_path / "study.json"], capfd)
    assert code == 0, err[-3000:]
    assert (f"note: {record.name}: the pool holds fewer than 40 images of class(es) 0, 1, 2, 3, 4, 5, 6, 7, 8, 9; "
            "at 40 per class their split keeps all they have") in stdout
    bare = tmp_path / "results" / record.name
    bare.mkdir(parents=True)
    with np.load(record / "logits.npz") as f:
        np.savez(bare / "logits.npz", **{k: f[k] for k in f.files if not k.startswith("validation_")})
    code, _, err = run_entry(STUDY, [bare, "--out", tmp_path / "bare.json"], capfd)
    one_line_error(code, err, "logits.npz holds no validation split", "--data_dir")
    assert not (tmp_path / "bare.json").exists()
