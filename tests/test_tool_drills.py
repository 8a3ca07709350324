"""The drills of issue 40 on the surface the last wave added (caches, odd images, documented
options, the bench and record tools, sizes that cannot fit, messages naming the wrong thing): each
case failed before and holds now. Fast and in-process (a tool's ``main(argv)``); a fresh
interpreter only where the exit code of the script itself is the point."""
import json
import os
import re
import shutil
import sys
import threading
import zipfile
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.helpers import ROOT, code_and_stderr, one_line_error, run_entry, run_script, snapshot, write_config
from tests.image_folders import write_folder, write_undecodable_tiff
from trainer import validation_cache as vc
from utils.errors import UserError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="links, FIFOs and byte file names")
RECORD = ROOT / "results" / "cifar10_ir100_tade_e30_s1"  # read-only: copied before any damage
DIGITS = ROOT / "configs" / "config_digits_lt_tade.json"


# -- the validation cache ---------------------------------------------------------------------------------
def fake_trained(folder, checksum="blake2b:one"):
    """What validation_cache reads of a loaded checkpoint: 6 split images, 2 experts, 3 classes."""
    data = SimpleNamespace(validation_set=SimpleNamespace(targets=[0, 1, 2, 0, 1, 2], data=np.zeros((6, 2, 2, 3)),
                                                          transform=None),
                           validation_info={"source": "test"}, num_classes=3)
    return SimpleNamespace(path=folder / "model.pth", checkpoint={"checksum": checksum}, config={"arch": {"t": 1}},
                           perf=None, data=data, net=SimpleNamespace(num_experts=2))


def compute():
    return torch.arange(36, dtype=torch.float32).view(6, 2, 3), torch.tensor([0, 1, 2, 0, 1, 2])


def cache_of(trained):
    return vc.cache_path(trained.path, vc.split_key(trained.data))


def test_a_link_planted_at_the_caches_old_temporary_name_is_never_written_through(tmp_path):
    trained = fake_trained(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("a file of the user's\n")
    path = cache_of(trained)
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # the name the cache used to predict: .NAME.tmpPID
        (tmp_path / f".{path.name}.tmp{pid}").symlink_to(victim)
    logits, _ = vc.validation_logits(trained, compute=compute)
    assert victim.read_text() == "a file of the user's\n"
    assert torch.equal(logits, compute()[0]) and path.is_file() and not path.is_symlink()


def _in_thread(fn, seconds=30):
    out = {}
    thread = threading.Thread(target=lambda: out.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), out.get("value")


def test_a_fifo_at_the_caches_path_is_neither_waited_on_nor_replaced(tmp_path, capsys):
    trained = fake_trained(tmp_path)
    path = cache_of(trained)
    os.mkfifo(path)
    try:
        hung, value = _in_thread(lambda: vc.validation_logits(trained, compute=compute))
    finally:
        if path.exists():  # release a reader that would wait
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
    assert not hung, "a FIFO at the cache's path hangs the call"
    assert torch.equal(value[0], compute()[0])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "is a FIFO" in out[0] and "without the cache" in out[0]
    assert not path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]


def _foreign_bomb(path, key):
    """A cache of another checkpoint whose logits member declares 3 GiB (and holds 16 bytes)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("key.npy", _npy(np.array(json.dumps(key))))
        z.writestr("logits.npy", _declared((805306368,)) + b"\x00" * 16)
        z.writestr("targets.npy", _npy(np.zeros(6, np.int64)))


def _npy(array):
    import io
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _declared(shape):
    """The header of a float32 .npy member of ``shape`` (the data left out)."""
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_a_cache_of_another_checkpoint_is_refused_by_its_key_before_its_arrays_are_read(tmp_path, capsys):
    trained = fake_trained(tmp_path)
    path = cache_of(trained)
    key = {"format": vc.FORMAT, "checkpoint": {"checksum": "blake2b:another"}, "split": vc.split_key(trained.data)}
    _foreign_bomb(path, key)
    vc.validation_logits(trained, compute=compute)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "another checkpoint" in out[0], out


# -- images that are not what they seem ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def untrained_digits(tmp_path_factory):
    """A Digits-LT checkpoint of an untrained network (no training: the drills need only its forward pass)."""
    from trainer.build import build_model
    from utils.checkpoint import save_checkpoint
    from utils.parse_config import ConfigParser, read_json
    root = tmp_path_factory.mktemp("digits")
    config = read_json(DIGITS)
    config["trainer"]["save_dir"] = str(root)
    torch.manual_seed(0)
    net = build_model(ConfigParser(config, "test config"))
    save_checkpoint({"arch": config["arch"]["type"], "epoch": 1, "state_dict": net.state_dict(), "config": config},
                    root / "model.pth")
    tt = write_config(root / "average.json", {"test_time": {"type": "ExpertAverage", "args": {}}})
    return root / "model.pth", tt


def test_an_image_pillow_fails_on_with_a_type_error_is_one_warning_and_left_out(untrained_digits, tmp_path, capfd):
    ckpt, tt = untrained_digits
    images = write_folder(tmp_path / "in", (2,), split="u", classes=("a",)) / "u"
    write_undecodable_tiff(images / "a" / "broken.png")  # a TIFF named .png: Pillow raises TypeError
    code, _, err = run_entry("test_train.py", ["-c", tt, "-r", ckpt, "-d", "cpu", "--images", images,
                                               "--out", tmp_path / "pred"], capfd)
    assert code == 0, err[-2000:]
    assert err.count("warning: cannot read image") == 1 and "broken.png" in err and "Traceback" not in err
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(table) == 2 and not table["path"].str.contains("broken").any()
    code, _, err = run_entry("test_train.py", ["-c", tt, "-r", ckpt, "-d", "cpu", "--images", images, "--strict",
                                               "--out", tmp_path / "strict"], capfd)
    one_line_error(code, err, "broken.png", "--strict")
    assert not (tmp_path / "strict").exists()


def test_an_image_pillow_fails_on_in_a_training_folder_is_one_line_naming_it(tmp_path):
    from data_loader.image_folder import ImageFolderLTDataModule
    from data_loader.list_lt import UnreadableImageError
    root = write_folder(tmp_path, (6, 6))
    write_undecodable_tiff(root / "train" / "cat" / "zz.png")
    data = ImageFolderLTDataModule(root, image_size=8, validation=False, batch_size=2)
    last = data.train_set.images.tolist().index(b"train/cat/zz.png")
    with pytest.raises(UnreadableImageError) as e:
        data.train_set[last]
    assert "zz.png" in str(e.value) and "TypeError" in str(e.value) and "\n" not in str(e.value)


def test_a_file_name_that_is_not_utf8_is_written_so_it_reads_back(untrained_digits, tmp_path, capfd):
    from utils.path_text import path_from_text
    ckpt, tt = untrained_digits
    images = write_folder(tmp_path / "in", (1,), split="u", classes=("a",)) / "u"
    odd = os.fsdecode(os.path.join(os.fsencode(images), b"caf\xe9 \"1\".png"))
    shutil.copyfile(next(images.rglob("*.png")), odd)
    code, _, err = run_entry("test_train.py", ["-c", tt, "-r", ckpt, "-d", "cpu", "--images", images,
                                               "--out", tmp_path / "pred"], capfd)
    assert code == 0, err[-2000:]
    written = pd.read_csv(tmp_path / "pred" / "predictions.csv", encoding="utf-8")["path"].tolist()
    assert odd in [path_from_text(p) for p in written]
    assert all(os.path.isfile(path_from_text(p)) for p in written)


def test_a_class_folder_whose_name_breaks_a_list_file_is_refused_at_the_start(tmp_path):
    from data_loader.image_folder import ImageFolderLTDataModule
    root = write_folder(tmp_path, (6, 6), classes=("cat", "two\nlines"))
    with pytest.raises(UserError) as e:
        ImageFolderLTDataModule(root, image_size=8, batch_size=2)
    assert "two\\nlines" in str(e.value) and "line break" in str(e.value) and "\n" not in str(e.value)


# -- a documented option value ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["prior", "shrunk", "shrunk_prior"])
def test_a_documented_calibration_family_is_accepted_from_the_file_and_from_set(tmp_path, family):
    from trainer.build import build_test_time_method
    path = write_config(tmp_path / "tt.json", {"test_time": {"type": "SafePrior", "args": {"bias": family}}})
    assert build_test_time_method(path)[0].bias == family
    plain = write_config(tmp_path / "plain.json", {"test_time": {"type": "EMPrior", "args": {}}})
    from utils.parse_config import parse_set_expression
    assert build_test_time_method(plain, [(*parse_set_expression(f"test_time.args.bias={family}"), "--set")])[0] \
        .bias == family


# -- bench and record tools ---------------------------------------------------------------------------------
def _portable(folder, capfd):
    return run_entry("bench/records/portable_record.py", [folder], capfd)


def _damaged_record(root, name, content):
    folder = root / "rec"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "record.json").write_text('{"name": "rec"}\n')
    (folder / name).write_bytes(content)
    return folder


def _pickled_npz(tmp_path):
    """An .npz holding an object array, which must never be unpickled."""
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"a": 1}], dtype=object))
    return (tmp_path / "pickled.npz").read_bytes()


@pytest.mark.parametrize("name, content, fragment", [
    ("logits.npz", lambda _: (RECORD / "logits.npz").read_bytes()[:4000], "logits.npz is not a readable .npz"),
    ("logits.npz", _pickled_npz, "logits.npz: array 'meta' is unreadable (ValueError: Object arrays"),
    ("model.pth", lambda _: (RECORD / "model.pth").read_bytes()[:50_000], "model.pth is truncated"),
    ("info.log", lambda _: b"run folder \xff\xfe /root/x\n", "info.log: not UTF-8"),
], ids=["truncated-npz", "pickled-npz", "corrupt-checkpoint", "log-not-utf8"])
def test_portable_record_names_a_damaged_file_in_one_line(tmp_path, capfd, name, content, fragment):
    data = content(tmp_path)
    folder = _damaged_record(tmp_path / "records", name, data)
    before = snapshot(tmp_path)
    code, _, err = _portable(folder, capfd)
    one_line_error(code, err, fragment)
    assert snapshot(tmp_path) == before


def test_portable_record_names_a_missing_folder(tmp_path, capfd):
    code, _, err = _portable(tmp_path / "nowhere", capfd)
    one_line_error(code, err, "nowhere", "does not exist")


def test_test_time_methods_names_a_truncated_logits_file(tmp_path, capfd):
    torn = tmp_path / "torn.npz"
    torn.write_bytes((RECORD / "logits.npz").read_bytes()[:100_000])
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", torn, "--out", tmp_path / "o.json"],
                             capfd)
    one_line_error(code, err, "torn.npz", "not a readable .npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torn.npz"]


@pytest.mark.parametrize("name", ["x" * 300, "..", "a/b", "../escape"], ids=["300-chars", "dotdot", "a-b", "escape"])
def test_record_refuses_a_name_that_is_not_one_folder_name_with_exit_2(tmp_path, capfd, name):
    code, _, err = run_entry("bench/records/record.py", ["-c", DIGITS, "--epochs", "1", "--seed", "1", "--name", name,
                                                 "--work_dir", tmp_path / "work", "--results_dir",
                                                 tmp_path / "results"], capfd)
    one_line_error(code, err, "--name", "one folder name")
    assert list(tmp_path.iterdir()) == []


def test_record_refuses_an_escaping_name_with_exit_2_as_a_script(tmp_path):
    proc = run_script("bench/records/record.py", "-c", DIGITS, "--epochs", "1", "--seed", "1", "--name", "../escape",
                      "--work_dir", tmp_path / "work", "--results_dir", tmp_path / "results", timeout=120)
    one_line_error(*code_and_stderr(proc), "--name", "'../escape'")
    assert list(tmp_path.iterdir()) == []


REPORT_FILES = ("record.json", "config.json", "eval_last.json", "test_time_methods.json", "epochs.csv")


@pytest.fixture(scope="module")
def report_record(tmp_path_factory):
    """The files of a committed record that bench/records/report.py reads (copied: records are read-only)."""
    folder = tmp_path_factory.mktemp("report") / "results" / RECORD.name
    folder.mkdir(parents=True)
    for name in REPORT_FILES:
        shutil.copyfile(RECORD / name, folder / name)
    return folder


def _edit_record(folder, text_edit=None, **fields):
    path = folder / "record.json"
    record = json.loads(path.read_text())
    record.update(fields)
    text = json.dumps(record)
    path.write_text(text_edit(text) if text_edit else text)


@pytest.mark.parametrize("damage, fragment", [
    (lambda f: _edit_record(f, epochs="thirty"), "'epochs' is 'thirty'"),
    (lambda f: _edit_record(f, lambda t: t.replace('"training_seconds": ', '"training_seconds": Infinity, "x": ')),
     "Infinity, a number that is not finite"),
    (lambda f: _edit_record(f, lambda t: t.replace('"epochs": 30', '"epochs": -1e999')),
     "-1e999, a number that is not finite"),
    (lambda f: _edit_record(f, name="a|b"), "'name' is 'a|b'"),
    (lambda f: _edit_record(f, name="two\nlines"), "'name' is 'two\\nlines'"),
    (lambda f: (f / "config.json").unlink(), "config.json: missing"),
], ids=["epochs-thirty", "infinity", "minus-1e999", "name-with-bar", "name-with-newline", "no-config"])
def test_report_refuses_what_would_break_or_fake_the_page(report_record, tmp_path, capfd, damage, fragment):
    results = tmp_path / "results"
    shutil.copytree(report_record, results / report_record.name)
    damage(results / report_record.name)
    doc = tmp_path / "results.md"
    code, _, err = run_entry("bench/records/report.py", ["--results", results, "--doc", doc], capfd)
    one_line_error(code, err, fragment)
    assert not doc.exists()


# -- sizes that cannot fit ----------------------------------------------------------------------------------
def test_a_dirmixe_pool_that_cannot_fit_is_refused_before_it_is_drawn(monkeypatch):
    from model.loss import dirmixe_loss
    from utils import memory_budget
    monkeypatch.setattr(memory_budget, "available_bytes", lambda: 8 << 30)
    loss = dirmixe_loss.DirMixELoss([50, 20, 10, 5, 2, 2, 2, 2, 2, 2], trials=10 ** 8)  # nothing allocated yet
    with pytest.raises(UserError) as e:
        loss.set_run(30, 8, 0)
    assert "loss.args.trials 100000000" in str(e.value) and "42.5 GiB" in str(e.value)
    assert loss.pool_weights is None


def test_an_imbalance_ratio_out_of_range_names_the_range():
    from trainer import protocols
    from utils.cli import ArgumentParser
    args = protocols.add_protocol_args(ArgumentParser()).parse_args(["--protocol", "dirmixe", "--ir", "1e308"])
    with pytest.raises(UserError, match=r"--ir 1e\+308: expected an imbalance ratio from 1 to 10000"):
        protocols.test_sets(args, SimpleNamespace(num_classes=3, test_targets=np.arange(9) % 3,
                                                  cls_num_list=[5, 3, 1]))


# -- messages that named the wrong thing --------------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--protocol", "dirmixe", "--draws", "0"], "argument --draws: expected an integer >= 1"),
    (["--bs", "0"], "argument --bs: expected an integer >= 1"),
], ids=["draws", "bs"])
def test_a_bad_count_names_its_option(capfd, argv, fragment):
    code, _, err = run_entry("test.py", ["-r", ROOT / "no.pth", *argv], capfd)
    line = one_line_error(code, err, fragment)
    assert "trials" not in line and "config" not in line


# -- the second round: drills of our own on the same surface ---------------------------------------------------
def test_a_link_at_a_run_folders_lock_never_truncates_what_it_points_to(tmp_path):
    from utils.run_lock import RunLock
    victim = tmp_path / "victim.txt"
    victim.write_text("a file of the user's\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    with pytest.raises(UserError, match="is a link"):
        RunLock(tmp_path / "run").acquire()
    assert victim.read_text() == "a file of the user's\n"


def _release(fifo):
    """Give a reader waiting on ``fifo`` its end of file (a drill that failed must not hang the suite)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_named_like_an_image_is_reported_not_waited_on(tmp_path):
    from data_loader.list_file import ListFile
    from data_loader.list_lt import ListImageDataset, UnreadableImageError
    from trainer.unlabeled import UnlabeledImages
    os.mkfifo(tmp_path / "x.png")
    try:
        hung, value = _in_thread(lambda: UnlabeledImages([str(tmp_path / "x.png")], None, (3, 4, 4))[0])
        assert not hung and value[1] == -1  # --images: one warning, left out
        listing = ListFile("l.txt", ["x.png"], np.zeros(1, np.int64), np.ones(1, np.int64))
        hung, value = _in_thread(lambda: pytest.raises(UnreadableImageError, ListImageDataset(tmp_path, listing,
                                                                                              [0]).__getitem__, 0))
        assert not hung and "x.png" in str(value.value)
    finally:
        _release(tmp_path / "x.png")


@pytest.mark.parametrize("name, problem", [(b"caf\xe9.png", "is not valid UTF-8"), (b"a\xc2\x85b.png", "line break")],
                         ids=["not-utf8", "next-line"])
def test_a_training_image_name_a_list_file_cannot_hold_is_refused_at_the_start(tmp_path, name, problem):
    from data_loader.image_folder import ImageFolderLTDataModule
    root = write_folder(tmp_path, (6, 6))
    shutil.copyfile(root / "train" / "cat" / "00.png", os.path.join(os.fsencode(root / "train" / "dog"), name))
    with pytest.raises(UserError, match=problem) as e:
        ImageFolderLTDataModule(root, image_size=8, batch_size=2)
    assert "rename it" in str(e.value) and "\n" not in str(e.value)


def test_the_oracles_calibrated_variant_takes_a_fitted_temperature(tmp_path):
    from trainer.build import build_test_time_method
    path = write_config(tmp_path / "tt.json", {"test_time": {"type": "OraclePrior",
                                                             "args": {"temperature": "fit", "bias": True}}})
    assert build_test_time_method(path)[0].temperature == "fit"


def test_drawn_test_sets_and_dirmixe_steps_that_cannot_fit_are_refused_with_their_size(monkeypatch):
    from model.loss.dirmixe_loss import DirMixELoss
    from trainer import protocols
    from utils import memory_budget
    from utils.cli import ArgumentParser
    monkeypatch.setattr(memory_budget, "available_bytes", lambda: 1 << 30)
    args = protocols.add_protocol_args(ArgumentParser()).parse_args(["--protocol", "dirichlet", "--draws", "100000000"])
    data = SimpleNamespace(num_classes=3, test_targets=np.arange(3000) % 3, cls_num_list=[5, 3, 1])
    with pytest.raises(UserError, match=r"--draws 100000000: 300000000 test sets of up to 2000 images would take "
                                        r"4470\.3 GiB"):
        protocols.test_sets(args, data)
    loss = DirMixELoss([5, 3, 1], trials=10 ** 6)
    loss.set_run(1, 2, 0)
    loss.set_epoch(0)
    with pytest.raises(UserError, match=r"loss.args.trials 1000000: one step of batch 128 .* 5\.7 GiB"):
        loss({"logits": torch.zeros(128, 3, 3)}, torch.zeros(128, dtype=torch.long))


def test_saved_logits_declaring_more_than_memory_are_refused_before_they_are_read(tmp_path, capfd):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w") as z:
        z.writestr("test_logits.npy", _declared((10 ** 13,)))
    code, _, err = run_entry("bench/studies/test_time_methods.py", ["--logits", bomb, "--out", tmp_path / "o.json"],
                             capfd)
    one_line_error(code, err, "bomb.npz", "'test_logits'", "would take 37252.9 GiB")


def test_a_fifo_given_as_logits_or_in_a_record_is_refused_not_waited_on(tmp_path, capfd):
    os.mkfifo(tmp_path / "l.npz")
    folder = _damaged_record(tmp_path, "record.json", b"{}")
    os.mkfifo(folder / "info.log")
    try:
        for script, argv in (("bench/studies/test_time_methods.py", ["--logits", tmp_path / "l.npz", "--out",
                                                             tmp_path / "o.json"]),
                             ("bench/records/portable_record.py", [folder])):
            hung, result = _in_thread(lambda: run_entry(script, argv, capfd), seconds=20)
            assert not hung, f"{script} waits on a FIFO"
            one_line_error(result[0], result[2], "is a FIFO")
    finally:
        _release(tmp_path / "l.npz")
        _release(folder / "info.log")


@pytest.mark.parametrize("damage, fragment", [
    (lambda f: _edit_record(f, seed=True), "'seed' is True"),
    (lambda f: _edit_record(f, machine={"cpu": "a | b"}), "'machine' is {'cpu': 'a | b'}"),
    (lambda f: _edit_json(f / "test_time_methods.json", lambda d: d["protocols"]["distributions"].update(
        {"EM | edited": d["protocols"]["distributions"]["EM"]})), "a table cell would hold 'EM | edited'"),
], ids=["seed-true", "machine-with-bar", "method-with-bar"])
def test_report_refuses_other_fields_that_would_break_the_page(report_record, tmp_path, capfd, damage, fragment):
    test_report_refuses_what_would_break_or_fake_the_page(report_record, tmp_path, capfd, damage, fragment)


def _edit_json(path, edit):
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))


def test_report_refuses_a_missing_or_wrong_results_folder_and_an_unreadable_page(report_record, tmp_path, capfd):
    doc = tmp_path / "results.md"
    for argv, fragment in ((["--results", tmp_path / "nowhere"], "is not a folder"),
                           (["--results", report_record], "is one record")):
        code, _, err = run_entry("bench/records/report.py", [*argv, "--doc", doc], capfd)
        one_line_error(code, err, fragment)
    doc.write_bytes(b"<!-- tables: generated by bench/records/report.py -->\n\xff\xfe\n"
                    b"<!-- end of generated tables -->\n")
    before = doc.read_bytes()
    code, _, err = run_entry("bench/records/report.py", ["--results", report_record.parent, "--doc", doc], capfd)
    one_line_error(code, err, "--doc", "UTF-8")
    assert doc.read_bytes() == before


def test_own_data_demo_never_deletes_a_folder_it_did_not_write(tmp_path):
    from bench.studies.own_data_demo import check_copy_folder
    mine = tmp_path / "unlabeled" / "forward50"
    mine.mkdir(parents=True)
    (mine / "000000.png").write_bytes(b"a copy")
    check_copy_folder(mine)  # an earlier demo's copies: may be replaced
    (mine / "notes.txt").write_text("a file of the user's\n")
    with pytest.raises(UserError, match="'notes.txt', which this demo did not write"):
        check_copy_folder(mine)


def test_a_config_list_or_images_argument_that_is_a_fifo_or_device_is_refused_not_read(tmp_path):
    from data_loader.list_file import read_list
    from trainer.unlabeled import image_paths
    from utils.parse_config import read_json
    os.mkfifo(tmp_path / "c.json")
    try:
        for read, path in ((read_json, tmp_path / "c.json"), (read_json, "/dev/zero"),
                           (read_list, tmp_path / "c.json"), (image_paths, tmp_path / "c.json")):
            hung, value = _in_thread(lambda: pytest.raises(UserError, read, path), seconds=20)
            assert not hung, f"{read.__name__} waits on {path}"
            assert "regular file" in str(value.value) and "\n" not in str(value.value)
    finally:
        _release(tmp_path / "c.json")


# -- the third round: caches and saved logits a careless or hostile user hands in --------------------------------
def _crafted_cache(path, trained, logits, targets):
    """A cache of this checkpoint and split whose digest was recomputed over edited arrays."""
    key = {"format": vc.FORMAT, "checkpoint": vc.checkpoint_key(trained), "split": vc.split_key(trained.data),
           "arrays": vc._digest(logits, targets)}
    with open(path, "wb") as f:
        np.savez(f, key=np.array(json.dumps(key)), logits=logits, targets=targets)


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


LOGITS, TARGETS = compute()[0].numpy(), compute()[1].numpy().astype(np.int64)


@pytest.mark.parametrize("logits, targets, reason", [
    (LOGITS.astype(np.float64), TARGETS, "dtype float64"),
    (LOGITS.astype(np.float16), TARGETS, "dtype float16"),
    (LOGITS, TARGETS.astype(np.int32), "targets of dtype int32"),
    (_with(LOGITS, (0, 0, 0), np.nan), TARGETS, "NaN or infinite"),
    (_with(LOGITS, (1, 1, 1), np.inf), TARGETS, "NaN or infinite"),
    (LOGITS, _with(TARGETS, 0, 99), "other than the split's labels"),
    (LOGITS, TARGETS[::-1].copy(), "other than the split's labels"),
], ids=["float64", "float16", "int32-targets", "nan", "inf", "target-99", "other-targets"])
def test_a_cache_with_a_recomputed_digest_is_still_checked_and_recomputed(tmp_path, capsys, logits, targets, reason):
    trained = fake_trained(tmp_path)
    _crafted_cache(cache_of(trained), trained, logits, targets)
    calls = []
    value = vc.validation_logits(trained, compute=lambda: calls.append(1) or compute())
    out = capsys.readouterr().out.strip().splitlines()
    assert calls == [1] and len(out) == 1 and reason in out[0], out
    assert torch.equal(value[0], compute()[0]) and value[0].dtype == torch.float32
    assert torch.equal(vc.validation_logits(trained, compute=None)[0], compute()[0])  # rewritten: used now


@pytest.mark.parametrize("content", [b"", b"hello\n", b"\x93NUMPY", b"\x80\x04K\x01."],
                         ids=["zero-bytes", "text", "npy", "pickle"])
def test_a_cache_that_is_no_zip_is_recomputed_without_unpickling(tmp_path, capsys, content):
    trained = fake_trained(tmp_path)
    cache_of(trained).write_bytes(content)
    logits, _ = vc.validation_logits(trained, compute=compute)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "unreadable" in out[0] and torch.equal(logits, compute()[0])


def test_the_cache_of_a_valid_file_is_used_and_a_full_disk_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno
    from utils import safe_write
    trained = fake_trained(tmp_path)
    real = safe_write.os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safe_write.os, "fsync", full)
    vc.validation_logits(trained, compute=compute)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "No space left on device" in out[0] and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(safe_write.os, "fsync", real)
    vc.validation_logits(trained, compute=compute)
    calls = []
    vc.validation_logits(trained, compute=lambda: calls.append(1) or compute())
    assert calls == [] and "note" not in capsys.readouterr().out


def test_an_unreadable_cache_says_why_and_is_recomputed(tmp_path, capsys, monkeypatch):
    from utils import npz_reader
    trained = fake_trained(tmp_path)
    vc.validation_logits(trained, compute=compute)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(npz_reader, "open_regular", refuse)
    calls = []
    vc.validation_logits(trained, compute=lambda: calls.append(1) or compute())
    out = capsys.readouterr().out.strip().splitlines()
    assert calls == [1] and len(out) == 1 and "unreadable (cannot be opened (Permission denied))" in out[0]


def test_writers_at_once_leave_one_whole_cache_and_a_moved_checkpoint_takes_its_cache_along(tmp_path, capsys):
    trained = fake_trained(tmp_path / "a")
    (tmp_path / "a").mkdir()
    threads = [threading.Thread(target=vc.validation_logits, args=(fake_trained(tmp_path / "a"),),
                                kwargs={"compute": compute}) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [cache_of(trained).name]  # no temporary file left
    shutil.move(tmp_path / "a", tmp_path / "b")  # the folder moved, checkpoint and cache with it
    calls = []
    vc.validation_logits(fake_trained(tmp_path / "b"), compute=lambda: calls.append(1) or compute())
    assert calls == [] and "note" not in capsys.readouterr().out


@pytest.mark.parametrize("edit, reason", [
    (lambda key: key["checkpoint"].update(precision="bf16"), "another checkpoint (or architecture, precision"),
    (lambda key: key.update(format="validation-logits-0"), "an older format"),
    (lambda key: key.pop("split"), "another validation split"),
], ids=["other-precision", "older-format", "no-split-key"])
def test_a_cache_of_another_precision_or_layout_is_recomputed(tmp_path, capsys, edit, reason):
    trained = fake_trained(tmp_path)
    key = {"format": vc.FORMAT, "checkpoint": vc.checkpoint_key(trained), "split": vc.split_key(trained.data),
           "arrays": vc._digest(LOGITS, TARGETS)}
    edit(key)
    np.savez(cache_of(trained), key=np.array(json.dumps(key)), logits=LOGITS, targets=TARGETS)
    calls = []
    vc.validation_logits(trained, compute=lambda: calls.append(1) or compute())
    out = capsys.readouterr().out.strip().splitlines()
    assert calls == [1] and len(out) == 1 and reason in out[0], out


def _saved(tmp_path, **changes):
    """A small saved-logits file (test.py --save_logits' keys) with ``changes`` applied."""
    from trainer.saved_logits import save_logits
    path = save_logits(tmp_path / "l.npz", {"test": (torch.randn(6, 2, 3), torch.tensor([0, 1, 2, 0, 1, 2]))},
                       [5, 3, 2], {"uniform": np.arange(6)}, {"data_loader": "X", "validation_info": None})
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("changes, fragment", [
    ({"meta": np.array(json.dumps({"validation_info": "x"}))}, "meta's validation_info is 'x'"),
    ({"meta": np.array(json.dumps({"validation_info": {"counts": "abc"}}))}, "counts list the split's images"),
    ({"meta": np.array(json.dumps({"data_loader": 5}))}, "meta's data_loader is 5"),
    ({"distribution_uniform": np.zeros(0, np.int64)}, "distribution_uniform must be at least one index"),
], ids=["validation-info-str", "counts-str", "data-loader-int", "empty-distribution"])
def test_saved_logits_a_method_would_crash_on_are_one_line(tmp_path, changes, fragment):
    from trainer.saved_logits import load_logits
    with pytest.raises(UserError, match=re.escape(fragment)) as e:
        load_logits(_saved(tmp_path, **changes))
    assert "l.npz" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, kind", [(b"", "an empty file"), (b"hello\n", "not a zip"),
                                           (b"\x80\x04K\x01.", "not a zip")], ids=["empty", "text", "pickle"])
def test_a_logits_file_that_is_no_zip_is_one_line_that_never_advises_unpickling(tmp_path, capfd, content, kind):
    path = tmp_path / "l.npz"
    path.write_bytes(content)
    code, _, err = run_entry("test_train.py", ["-c", ROOT / "configs" / "test_time_cifar10_prior.json", "--logits",
                                               path, "--out", tmp_path / "o.json"], capfd)
    line = one_line_error(code, err, "l.npz", f"is not an .npz ({kind})")
    assert "allow_pickle" not in line and "pickle.load" not in line
    assert [p.name for p in tmp_path.iterdir()] == ["l.npz"]


# -- the third round: every bench tool with bad arguments --------------------------------------------------------
SPEED = "bench/speed/speed.py"


def _tool_cases(tmp):
    """(script, argv, fragments) of bad input each tool must refuse before any work, in one line."""
    digits = ROOT / "configs" / "config_digits_lt_tade.json"
    record = ["-c", digits, "--epochs", "1", "--seed", "1", "--work_dir", tmp / "work", "--results_dir", tmp / "res"]
    return [
        (SPEED, [], ["the following arguments are required"]),
        (SPEED, ["zzz"], ["invalid choice: 'zzz'"]),
        (SPEED, ["train", "--repeats", "0"], ["--repeats", "integer >= 1"]),
        (SPEED, ["train", "--data_dir", tmp / "a.txt"], ["a.txt is not a folder"]),
        (SPEED, ["accuracy", "--variants", "zzz"], ["--variants", "invalid choice"]),
        (SPEED, ["accuracy", "--epochs", "1"], ["--epochs 1", "at least 2"]),
        (SPEED, ["eval", "--checkpoint", tmp / "nope.pth"], ["nope.pth is not a file"]),
        (SPEED, ["test-time-views"], ["--checkpoint is needed"]),
        (SPEED, ["test-time-views", "--checkpoint", tmp / "nope.pth"], ["nope.pth does not exist"]),
        (SPEED, ["label-shift"], ["--checkpoint is needed"]),
        (SPEED, ["predict", "--checkpoint", tmp / "a.txt", "--images", tmp / "nope"], ["--images", "does not exist"]),
        (SPEED, ["loader", "--workers", "-1"], ["--workers", "integer >= 0"]),
        (SPEED, ["ceiling", "-c", tmp / "nope.json"], ["nope.json does not exist"]),
        (SPEED, ["ceiling", "-d", "tpu"], ["-d tpu"]),
        ("bench/studies/calibration_study.py", ["--sizes", "a,b", "--out", tmp / "o.json"], ["--sizes", "'a,b'"]),
        ("bench/studies/calibration_study.py", ["--sizes", "10,0", "--out", tmp / "o.json"], ["--sizes", "'10,0'"]),
        ("bench/studies/calibration_study.py", ["--draws", "-1", "--out", tmp / "o.json"], ["--draws", ">= 1"]),
        ("bench/studies/dirmixe_formula.py", ["-c", tmp / "bad.json"], ["bad.json", "malformed JSON"]),
        ("bench/studies/dirmixe_formula.py", ["--seed", "a"], ["--seed", "'a'"]),
        ("bench/studies/jpeg_sensitivity.py", [tmp / "nope.pth", "--qualities", "a"], ["--qualities", "'a'"]),
        ("bench/studies/jpeg_sensitivity.py", [tmp / "nope.pth", "--qualities", "95,0"], ["--qualities", "'95,0'"]),
        ("bench/studies/own_data_demo.py", ["--work", tmp / "w"], ["required: -r/--resume"]),
        ("bench/records/portable_record.py", [tmp / "empty"], ["holds no record.json"]),
        ("bench/records/report.py", ["--results", tmp / "empty", "--doc", tmp / "d.md"], ["holds no record folder"]),
        ("bench/records/report.py", ["--results", tmp / "empty", "--doc", tmp / "d.md", "--studies", tmp / "nope"],
         ["--studies", "is not a folder"]),
        ("bench/records/report.py", ["--bogus"], ["unrecognized arguments: --bogus"]),
        ("bench/records/record.py", [*record[:2], "--epochs", "0", *record[4:]], ["--epochs", ">= 1"]),
        ("bench/records/record.py", [*record[:4], "--seed", "-1", *record[6:]], ["--seed", "'-1'"]),
        ("bench/records/record.py", ["-c", tmp / "bad.json", *record[2:]], ["bad.json", "malformed JSON"]),
        ("bench/records/record.py", [*record, "--set", "nokey"], ["--set 'nokey'"]),
        ("bench/records/record.py", [*record, "--data_dir", tmp / "nope"], ["--data_dir", "is not a folder"]),
        ("bench/records/record.py", [*record[:6], "--work_dir", tmp / "a.txt", *record[8:]], ["--work_dir",
                                                                                             "Not a directory"]),
        ("bench/records/reproduce.py", ["--dataset", "digits_lt", "--epochs", "0"], ["--epochs", ">= 1"]),
        ("bench/records/reproduce.py", ["--dataset", "digits_lt", "--methods", "zzz", "--epochs", "1", "--out_dir",
                                        tmp / "o"], ["config_digits_lt_zzz.json"]),
        ("bench/records/reproduce.py", ["--dataset", "digits_lt", "--methods", "tade", "--epochs", "1", "--out_dir",
                                        tmp / "a.txt"], ["--out_dir", "Not a directory"]),
        ("bench/records/reproduce.py", ["--dataset", "digits_lt", "--methods", "tade", "--epochs", "1", "--out_dir",
                                        tmp / "od"], ["results_e1.md exists and is not a result file"]),
        ("bench/drills/fault_drill.py", ["--epochs", "0"], ["--epochs", ">= 1"]),
        ("bench/drills/fault_drill.py", ["--drill", "overwrite", "--trials", "0"], ["--trials", ">= 1"]),
        ("bench/drills/fault_drill.py", ["--config", tmp / "nope.json"], ["nope.json does not exist"]),
        ("bench/drills/fault_drill.py", ["--workdir", tmp / "a.txt"], ["--workdir", "is not a folder"]),
    ]


def test_every_bench_tool_refuses_bad_arguments_in_one_line_and_writes_nothing(tmp_path, capfd, monkeypatch):
    """Each case in this process (the tool's main(argv)); the CIFAR-10 download a data-less speed
    subcommand would start is made to fail as it does offline."""
    import torchvision.datasets
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("a file of the user's\n")
    (tmp_path / "bad.json").write_text("{bad")
    (tmp_path / "empty").mkdir()
    (tmp_path / "od" / "digits_lt").mkdir(parents=True)
    (tmp_path / "od" / "digits_lt" / "results_e1.md").write_text("my notes\n")  # not reproduce.py's table
    before = snapshot(tmp_path)
    failed = []
    for script, argv, fragments in _tool_cases(tmp_path):
        code, _, err = run_entry(script, argv, capfd)
        lines = err.strip().splitlines()
        if not (code == 2 and len(lines) == 1 and "Traceback" not in err and all(str(f) in lines[0]
                                                                                  for f in fragments)):
            failed.append((script, [str(a) for a in argv], code, err[-300:]))
        if snapshot(tmp_path) != before:
            failed.append((script, [str(a) for a in argv], "wrote", sorted(set(snapshot(tmp_path)) - set(before))))
    assert not failed, failed


def test_record_makes_relative_paths_absolute_before_the_steps_run_from_the_root(tmp_path, monkeypatch, capfd):
    from tests.helpers import entry_module
    seen = {}
    monkeypatch.setattr(entry_module("bench/records/record.py"), "train",
                        lambda args, run_dir, log, line: seen.update(vars(args)) or False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    shutil.copyfile(DIGITS, tmp_path / "c.json")
    code, _, err = run_entry("bench/records/record.py", ["-c", "c.json", "--epochs", "1", "--seed", "1", "--data_dir",
                                                         "data", "--results_dir", "res", "--work_dir", "work",
                                                         "--train_only"], capfd)
    assert code == 0, err
    assert seen["config"] == str(tmp_path / "c.json") and seen["data_dir"] == str(tmp_path / "data")
    assert seen["results_dir"] == str(tmp_path / "res")
