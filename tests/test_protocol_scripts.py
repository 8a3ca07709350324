"""The test protocols and the prior methods through the scripts: test.py and test_train.py with
--protocol, the shipped safe default, the oracle marked as such, streaming, the benchmark, bad input."""
import json

import numpy as np
import pytest

from tests.helpers import ROOT, one_line_error, run_entry, write_config

PRIOR = ROOT / "configs" / "test_time_digits_prior.json"


@pytest.fixture
def ckpt(digits_checkpoint):
    return digits_checkpoint


def test_test_py_dirichlet_and_missing_protocols(ckpt, tmp_path, capfd):
    out = tmp_path / "dir.json"
    code, _, err = run_entry("test.py", ["-r", ckpt, "--protocol", "dirichlet", "--alpha", "1,10", "--draws", "3",
                                         "--size", "60", "--out", out, "--save_logits"], capfd)
    assert code == 0, err[-3000:]
    payload = json.loads(out.read_text())
    assert payload["protocol"] == "dirichlet"
    assert list(payload["distributions"]) == [f"dirichlet{a}_{k}" for a in (1, 10) for k in range(3)]
    assert all(r["num_images"] == 60 for r in payload["distributions"].values())
    top1 = [payload["distributions"][f"dirichlet1_{k}"]["top1"] for k in range(3)]
    s = payload["summary"]["dirichlet1"]
    assert s["draws"] == 3 and s["top1_mean"] == pytest.approx(np.mean(top1))
    assert s["top1_std"] == pytest.approx(np.std(top1, ddof=1))
    import torch
    from trainer.saved_logits import load_logits
    saved = load_logits(out.with_name("dir_logits.npz"))
    idx = saved.data.distributions["dirichlet1_0"]
    assert len(set(idx.tolist())) == 60 and int(idx.max()) < len(saved.data.test_targets)  # inside the test set
    out = tmp_path / "miss.json"
    code, _, err = run_entry("test.py", ["-r", ckpt, "--protocol", "missing", "--missing_fraction", "0.3", "--draws",
                                         "2", "--out", out, "--save_logits"], capfd)
    assert code == 0, err[-3000:]
    saved = load_logits(out.with_name("miss_logits.npz"))
    for k in range(2):
        present = torch.unique(saved.splits["test"][1][saved.data.distributions[f"missing0.3_{k}"]])
        assert len(present) == 7  # 3 of the 10 classes have no image


def test_test_train_py_runs_the_safe_default_and_marks_the_oracle(ckpt, tmp_path, capfd):
    out = tmp_path / "safe.json"
    code, _, err = run_entry("test_train.py", ["-c", PRIOR, "-r", ckpt, "--out", out,
                                               "--distributions", "forward50,uniform,backward50"], capfd)
    assert code == 0, err[-3000:]
    payload = json.loads(out.read_text())
    assert payload["method"] == "SafePrior"
    for row in payload["distributions"].values():
        assert len(row["prior"]) == 10 and sum(row["prior"]) == pytest.approx(1, abs=1e-4)
        assert isinstance(row["shift_detected"], bool) and 0 <= row["top1_average"] <= 1
        assert row["calibrated_on"] == "validation" and row["selection"]["strength"] == "null"
        assert not row["shift_detected"] or (0 <= row["strength"] <= 1 and row["null_shift_size"] > 0)
    # a test-time config may size the validation split it calibrates on
    sized = json.loads((ROOT / "configs" / "test_time_digits_prior.json").read_text())
    sized["test_time"]["validation"] = {"per_class": 5}
    sized_config = write_config(tmp_path / "sized.json", sized)
    code, _, err = run_entry("test_train.py", ["-c", sized_config, "-r", ckpt, "--out", tmp_path / "sized_out.json",
                                               "--distributions", "uniform"], capfd)
    assert code == 0, err[-3000:]
    row = json.loads((tmp_path / "sized_out.json").read_text())["distributions"]["uniform"]
    assert row["calibration_images_per_class"] == [5] * 10
    oracle = write_config(tmp_path / "oracle.json", {"test_time": {"type": "OraclePrior", "args": {}}})
    code, out, err = run_entry("test_train.py", ["-c", oracle, "-r", ckpt, "--out", tmp_path / "o.json",
                                                 "--distributions", "backward50"], capfd)
    assert code == 0, err[-3000:]
    assert "oracle" in json.loads((tmp_path / "o.json").read_text())["method"].lower()
    assert "reads the test labels" in out


def test_no_shipped_config_selects_the_oracle():
    for path in (ROOT / "configs").glob("test_time_*.json"):
        assert "oracle" not in json.loads(path.read_text())["test_time"].get("type", "").lower(), path


def test_streaming_protocol_and_what_cannot_stream(ckpt, tmp_path, capfd):
    out = tmp_path / "stream.json"
    code, _, err = run_entry("test_train.py", ["-c", PRIOR, "-r", ckpt, "--out", out, "--protocol", "streaming",
                                               "--stream_batch", "5,64"], capfd)
    assert code == 0, err[-3000:]
    rows = json.loads(out.read_text())["distributions"]
    assert list(rows) == ["stream_b5", "stream_b64"]
    assert all(r["num_images"] == 500 and r["images_seen"] == 500 for r in rows.values())
    # batches of one image: tests/test_prior_methods.py test_online_streams_one_image_at_a_time
    assert rows["stream_b5"]["batches"] == 100 and rows["stream_b64"]["batches"] == 8
    code, _, err = run_entry("test_train.py", ["-c", ROOT / "configs" / "test_time_digits_tade.json", "-r", ckpt,
                                               "--protocol", "streaming"], capfd)
    one_line_error(code, err, "SelfSupervisedAggregation", "stream")


@pytest.mark.parametrize("args,fragments", [
    (["--protocol", "sideways"], ["--protocol", "sideways", "dirichlet"]),
    (["--protocol", "dirichlet", "--alpha", "0"], ["--alpha", "> 0"]),
    (["--protocol", "dirichlet", "--size", "5000"], ["--size 5000", "larger than the test set"]),
    (["--protocol", "streaming", "--stream_batch", "0"], ["--stream_batch", ">= 1"]),
    (["--protocol", "dirichlet", "--draws", "0"], ["draws"]),
    # an option of another protocol would be ignored: refused, naming the protocols it belongs to
    (["--alpha", "1", "--draws", "3"], ["--alpha applies to --protocol dirichlet", "protocol is distributions"]),
    (["--protocol", "streaming", "--draws", "2"], ["--draws applies to --protocol dirichlet, missing or dirmixe"]),
    (["--protocol", "missing", "--distributions", "uniform"], ["--distributions applies to --protocol distributions"]),
])
def test_bad_protocol_values_are_one_line_errors(ckpt, args, fragments, capfd, tmp_path):
    code, _, err = run_entry("test.py", ["-r", ckpt, *args, "--out", tmp_path / "out.json"], capfd)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "out.json").exists()


def test_test_train_refuses_an_option_of_another_protocol(ckpt, capfd):
    code, _, err = run_entry("test_train.py", ["-c", ROOT / "configs" / "test_time_digits_prior.json", "-r", ckpt,
                                               "--protocol", "dirichlet", "--stream_batch", "8"], capfd)
    one_line_error(code, err, "--stream_batch applies to --protocol streaming", "protocol is dirichlet")


def test_bad_test_time_config_values_are_one_line_errors(ckpt, tmp_path, capfd):
    cases = [({"type": "Magic"}, ["test_time.type 'Magic'", "SafePrior"]),
             ({"type": "SafePrior", "args": {"strength": "lots"}}, ["strength"]),
             ({"type": "SafePrior", "args": {"axis": "diagonal"}}, ["axis", "train_prior"]),
             ({"type": "MAPPrior", "args": {"pseudo_count": 0}}, ["pseudo_count"]),
             ({"type": "EMPrior", "args": {"epochs": 3}}, ["test_time.args.epochs", "not an argument of EMPrior"])]
    for section, fragments in cases:
        path = write_config(tmp_path / "bad.json", {"test_time": section})
        code, _, err = run_entry("test_train.py", ["-c", path, "-r", ckpt], capfd)
        one_line_error(code, err, "bad.json", *fragments)


def test_methods_benchmark_runs_every_method_on_every_protocol(digits_record):
    """bench/studies/test_time_methods.py on the checkpoint, as bench/records/record.py ran it for the record."""
    _, _, folder = digits_record
    report = json.loads((folder / "test_time_methods.json").read_text())["protocols"]
    assert set(report) == {"distributions", "dirichlet", "missing", "streaming", "dirmixe"}
    methods = set(report["distributions"]) - {"table"}
    assert {"expert average", "EM", "MAP", "SafePrior (default)", "oracle prior (uses test labels)"} <= methods
    assert len(report["distributions"]["EM"]["results"]) == 11
    assert "| SafePrior (default) |" in report["dirichlet"]["table"]
    assert set(report["streaming"]["EM"]["results"]) == {"stream_b16", "stream_b128"}
