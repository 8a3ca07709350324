"""Drills of a careless or hostile user on the entry points and bench tools: nothing a user has is
overwritten or deleted, and each bad input is one line with exit code 2 (docs/reliability.md).
One tiny run (trained and evaluated once, in-process) serves every case."""
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, one_line_error, run_entry, snapshot, tiny_cifar_config, write_cifar100, write_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="links and POSIX locks")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A one-epoch tiny run (RUN/last.pth) and its evaluation with saved logits (EVAL_logits.npz)."""
    import logging
    root = tmp_path_factory.mktemp("drills")
    data = write_cifar100(root / "cifar", train_per_class=2, test_per_class=1)
    config = tiny_cifar_config(data, root / "saved")
    cfg = write_config(root / "c.json", config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from tests.helpers import entry_module
        for script, argv in (("train.py", ["-c", cfg, "--run_id", "one", "-d", "cpu"]),
                             ("test.py", ["-r", root / "saved" / "small" / "one" / "last.pth", "-d", "cpu",
                                          "--save_logits", "--out", root / "eval.json"])):
            try:
                entry_module(script).main([str(a) for a in argv])
            finally:
                for name in ("train", "test"):
                    for handler in list(logging.getLogger(name).handlers):
                        handler.close()
                        logging.getLogger(name).removeHandler(handler)
    finally:
        torch.set_num_threads(threads)
    return root, root / "saved" / "small" / "one", cfg, config


@pytest.fixture
def run(tiny_run, tmp_path):
    """A copy of the run folder, to damage."""
    _, folder, _, _ = tiny_run
    copy = tmp_path / "saved" / "small" / "run"
    shutil.copytree(folder, copy)
    return copy


def _cpu(script, argv, capfd):
    torch.set_num_threads(1)
    return run_entry(script, [*argv, "-d", "cpu"], capfd)


# -- nothing is overwritten ---------------------------------------------------------------------------------
def test_the_readmes_logits_command_leaves_a_record_alone(tiny_run, tmp_path, capfd):
    root = tiny_run[0]
    record = tmp_path / "results" / "rec"
    record.mkdir(parents=True)
    shutil.copyfile(root / "eval_logits.npz", record / "logits.npz")
    (record / "test_time_methods.json").write_text('{"protocols": {"distributions": {}}, "validation_info": null}')
    (record / "record.json").write_text('{"name": "rec"}')
    before = snapshot(record)
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", record / "logits.npz"], capfd)
    one_line_error(code, err, "recorded result", "give --out")
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", record / "logits.npz", "--out",
                                                            record / "again.json"], capfd)
    one_line_error(code, err, "recorded result", "read-only")
    assert snapshot(record) == before


def test_a_bench_tools_out_never_replaces_a_checkpoint(tiny_run, run, capfd):
    last = run / "last.pth"
    before = sha(last)
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", tiny_run[0] / "eval_logits.npz",
                                                            "--out", last], capfd)
    one_line_error(code, err, str(last), "refusing to replace it")
    assert sha(last) == before


@pytest.mark.parametrize("side", ["eval_last_reliability.png", "eval_last.csv"])
def test_a_side_file_behind_a_link_is_refused_before_any_work(run, tmp_path, capfd, side):
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's\n")
    (run / side).symlink_to(outside)
    code, _, err = _cpu("test.py", ["-r", run / "last.pth", "--data_dir", tmp_path / "nowhere"], capfd)
    one_line_error(code, err, side, "is a link")
    assert outside.read_text() == "the user's\n" and not (run / "eval_last.json").exists()


def test_a_full_disk_while_the_plot_is_written_is_one_line_and_leaves_nothing(run, capfd, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    before = snapshot(run)
    code, _, err = _cpu("test.py", ["-r", run / "last.pth"], capfd)
    one_line_error(code, err, "eval_last_reliability.png", "No space left on device")
    assert snapshot(run) == before


def test_a_users_checkpoint_in_a_leftover_folder_is_never_deleted(tiny_run, run, capfd):
    root, _, cfg, config = tiny_run
    folder = root / "saved" / "small" / "leftover"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=4) + "\n")
    (folder / "info.log").write_text("10:00:00 started\n")
    shutil.copyfile(run / "last.pth", folder / "model_best.pth")
    before = snapshot(folder)
    code, _, err = _cpu("train.py", ["-c", cfg, "--run_id", "leftover"], capfd)
    one_line_error(code, err, "already exists", "model_best.pth")
    assert snapshot(folder) == before


@pytest.mark.parametrize("option", [["--run_id", "../../victim"], ["--name", "../..", "--run_id", "victim"],
                                    ["--run_id", "VICTIM"], ["--run_id", "x" * 300]])
def test_a_run_folder_never_leaves_save_dir(tiny_run, tmp_path, capfd, option):
    root, _, cfg, _ = tiny_run
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("keep me")
    option = [str(victim) if v == "VICTIM" else v for v in option]  # an absolute path
    before = snapshot(tmp_path)
    code, _, err = _cpu("train.py", ["-c", cfg, "--epochs", "0", "--save_dir", tmp_path / "saved", *option], capfd)
    one_line_error(code, err, "one folder name")
    assert snapshot(tmp_path) == before


def test_a_resume_with_nothing_to_train_writes_nothing(run, capfd):
    before = snapshot(run)
    code, out, err = _cpu("train.py", ["-r", run / "last.pth", "--epochs", "1"], capfd)
    assert code == 0, err
    assert "nothing to train" in out
    assert snapshot(run) == before


def test_resuming_an_earlier_checkpoint_in_its_folder_never_replaces_later_epochs(run, capfd):
    """-r model_best.pth (or any checkpoint older than the folder's last.pth) would retrain its later
    epochs into last.pth: refused, nothing written; the same checkpoint continues in a new folder."""
    shutil.copy(run / "last.pth", run / "early.pth")  # epoch 1, as model_best.pth of a longer run
    code, _, err = _cpu("train.py", ["-r", run / "last.pth", "--epochs", "2"], capfd)
    assert code == 0, err
    before = snapshot(run)
    code, _, err = _cpu("train.py", ["-r", run / "early.pth", "--epochs", "2"], capfd)
    one_line_error(code, err, "early.pth holds epoch 1", "last.pth holds epoch 2", "--run_id")
    assert snapshot(run) == before
    code, out, err = _cpu("train.py", ["-r", run / "early.pth", "--epochs", "2", "--run_id", "fork"], capfd)
    assert code == 0, err
    forked = Path(re.search(r"finished: (\S+last\.pth)", out).group(1))
    assert forked.parent.name == "fork" and torch.load(forked, weights_only=True)["epoch"] == 2
    assert snapshot(run) == before


def test_info_log_behind_a_link_is_refused_before_any_work(run, tmp_path, capfd):
    outside = tmp_path / "outside.log"
    outside.write_text("the user's log\n")
    (run / "info.log").unlink()
    (run / "info.log").symlink_to(outside)
    before = snapshot(run)
    code, _, err = _cpu("train.py", ["-r", run / "last.pth", "--epochs", "2"], capfd)
    one_line_error(code, err, "info.log is a link")
    assert outside.read_text() == "the user's log\n" and snapshot(run) == before


# -- bad input: one line, exit 2 ----------------------------------------------------------------------------
def _config_file(tmp_path, config, **changes):
    config = json.loads(json.dumps(config))
    config.update(changes)
    return write_config(tmp_path / "bad.json", config)


@pytest.mark.parametrize("argv, fragments", [
    (["--seed", str(2**64)], ["seed", "<= 18446744073709551615"]),
    (["--set", "data_loader.args.num_workers=-1"], ["num_workers must be an integer >= 0"]),
])
def test_out_of_range_training_settings_are_one_line(tiny_run, tmp_path, capfd, argv, fragments):
    _, _, cfg, _ = tiny_run
    code, _, err = _cpu("train.py", ["-c", cfg, "--save_dir", tmp_path / "saved", *argv], capfd)
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "saved").exists()


def test_a_deeply_nested_config_and_a_huge_value_are_one_short_line(tiny_run, tmp_path, capfd):
    config = tiny_run[3]
    nested = tmp_path / "nested.json"
    nested.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = _cpu("train.py", ["-c", nested], capfd)
    one_line_error(code, err, "nested")
    code, _, err = _cpu("train.py", ["-c", _config_file(tmp_path, config, seed="9" * 10_000_000)], capfd)
    line = one_line_error(code, err, "seed", "expected an integer")
    assert len(line) < 2000


def test_an_empty_distribution_list_is_refused_before_any_work(run, tmp_path, capfd):
    code, _, err = _cpu("test.py", ["-r", run / "last.pth", "--distributions", ",", "--data_dir",
                                    tmp_path / "nowhere"], capfd)
    one_line_error(code, err, "--distributions")
    assert not (run / "eval_last.json").exists()


def _damaged_logits(tiny_run, tmp_path, **changes):
    with np.load(tiny_run[0] / "eval_logits.npz") as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("change, fragment", [
    ({"test_targets": None}, "missing key 'test_targets'"),
    ({"validation_targets": None}, "validation_logits without validation_targets"),
    ({"test_targets": lambda t: np.full_like(t, 500)}, "class indices"),
    ({"distribution_uniform": None}, "distribution_uniform is missing"),
    ({"test_logits": lambda x: np.full_like(x, np.nan)}, "finite"),
    ({"cls_num_list": np.zeros(100, dtype=np.int64)}, "integer >= 1"),
])
def test_malformed_saved_logits_are_one_line(tiny_run, tmp_path, capfd, change, fragment):
    path = _damaged_logits(tiny_run, tmp_path, **change)
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", path, "--out", tmp_path / "o.json"],
                             capfd)
    one_line_error(code, err, str(path), fragment)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("key, value, fragment", [
    ("epoch", -1, "epoch is -1"), ("epoch", 1.5, "epoch is 1.5"), ("optimizer", None, "optimizer state is None"),
    ("rng", None, "RNG state is None"),
])
def test_a_resumed_checkpoint_with_a_broken_state_is_one_line(run, capfd, key, value, fragment):
    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt.pop("checksum")  # edited on purpose: no checksum to contradict it
    ckpt[key] = value
    torch.save(ckpt, run / "last.pth")
    before = snapshot(run)
    code, _, err = _cpu("train.py", ["-r", run / "last.pth", "--epochs", "3"], capfd)
    one_line_error(code, err, fragment)
    assert snapshot(run) == before


def test_huge_finite_weights_give_no_result_with_nan(run, capfd):
    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt.pop("checksum")
    ckpt["state_dict"] = {k: v * 1e18 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["state_dict"].values() if v.is_floating_point())
    torch.save(ckpt, run / "last.pth")
    code, _, err = _cpu("test.py", ["-r", run / "last.pth"], capfd)
    one_line_error(code, err, "NaN or infinite logits")
    assert not (run / "eval_last.json").exists()


# -- bench/records/report.py on corrupt records -----------------------------------------------------------------------
RECORD = ROOT / "results" / "cifar10_ir100_tade_e30_s1"


def _record_copy(tmp_path):
    folder = tmp_path / "results" / RECORD.name
    folder.mkdir(parents=True)
    for name in ("record.json", "eval_last.json", "eval_best.json", "test_time_methods.json", "epochs.csv",
                 "config.json"):
        shutil.copyfile(RECORD / name, folder / name)
    return folder


def _set_uniform_top1(folder, value):
    path = folder / "eval_last.json"
    payload = json.loads(path.read_text())
    payload["distributions"]["uniform"]["top1"] = value
    path.write_text(json.dumps(payload))


def _set_method_top1(folder, value):
    path = folder / "test_time_methods.json"
    payload = json.loads(path.read_text())
    payload["protocols"]["distributions"]["expert average"]["results"]["uniform"]["top1"] = value
    path.write_text(json.dumps(payload))


@pytest.mark.skipif(not RECORD.is_dir(), reason="the shipped record")
@pytest.mark.parametrize("damage, fragment", [
    (lambda f: _set_uniform_top1(f, "abc"), "no finite number 'top1'"),
    (lambda f: _set_uniform_top1(f, float("nan")), "no finite number 'top1'"),
    (lambda f: _set_method_top1(f, float("nan")), "no finite top1"),
    (lambda f: _set_method_top1(f, [1]), "no finite top1"),
    (lambda f: (f / "epochs.csv").write_text("epoch,loss,accuracy\n1,abc,0.5\n"), "not a finite number"),
    (lambda f: (f / "record.json").write_text('{"name": "x", "dataset": "d", "epochs": 1, "seed": 1, "machine": 5}'),
     "'machine' is 5; expected an object"),
])
def test_report_on_a_corrupt_record_is_one_line_and_the_page_is_kept(tmp_path, capfd, damage, fragment):
    from bench.records.report import main as report
    folder = _record_copy(tmp_path)
    damage(folder)
    doc = tmp_path / "results.md"
    doc.write_text("# page\n<!-- tables: generated by bench/records/report.py -->\nold\n"
                   "<!-- end of generated tables -->\n")
    before = doc.read_bytes()
    capfd.readouterr()
    assert report(["--results", str(folder.parent), "--doc", str(doc)]) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err, err
    assert doc.read_bytes() == before
