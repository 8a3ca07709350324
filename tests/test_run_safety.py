"""What a run folder guarantees (docs/reliability.md): one process at a time, a resume that forks
instead of overwriting, no folder left by a run that never saved a checkpoint, a full disk that
costs at most the epoch being saved, checksummed checkpoints, and results that never replace
anything but an earlier result of the same script."""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import (ROOT, one_line_error, run_entry, snapshot, tiny_cifar_config, write_cifar100,
                           write_config)
from tests.test_config_errors import trained_checkpoint  # noqa: F401 - the module's trained checkpoint fixture
from utils.checkpoint import load_checkpoint
from utils.errors import UserError
from utils.known_keys import known_arguments
from utils.run_lock import RunLock
from utils.trainer_schema import SCHEMA, trainer_settings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX locks and mounts")


@pytest.fixture
def tiny(tmp_path):
    data = write_cifar100(tmp_path / "cifar", train_per_class=2, test_per_class=1)
    return tmp_path, tiny_cifar_config(data, tmp_path / "saved")


def _train(argv, capfd):
    torch.set_num_threads(1)
    return run_entry("train.py", [*argv, "-d", "cpu"], capfd)


# -- the lock -----------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_a_killed_holder_leaves_it_free(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from utils.run_lock import RunLock; RunLock(sys.argv[2]).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(ROOT), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"{tmp_path} is in use by another train.py \(pid {holder.pid}\)"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".lock").exists()  # a killed holder cannot clean up, yet the lock is free
    lock = RunLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()


# -- resume: fork or in place -------------------------------------------------------------------
def test_resume_with_a_new_run_id_forks_and_leaves_the_original_untouched(tiny, trained_checkpoint,  # noqa: F811
                                                                          capfd):
    root, _ = tiny
    original = root / "orig"
    original.mkdir()
    shutil.copy(trained_checkpoint, original / "last.pth")
    write_config(original / "config.json", {"marker": 1})
    before = snapshot(original)
    code, out, err = _train(["-r", original / "last.pth", "--run_id", "new", "--save_dir", root / "forks",
                             "--lr", "0.01", "--epochs", "2"], capfd)
    assert code == 0, err
    assert snapshot(original) == before
    fork = root / "forks" / "small" / "new"
    assert "forked from" in out and load_checkpoint(fork / "last.pth")["epoch"] == 2
    assert json.loads((fork / "config.json").read_text())["optimizer"]["args"]["lr"] == 0.01


def test_resume_beside_a_read_only_checkpoint_is_refused_before_any_work(tiny, trained_checkpoint, capfd,  # noqa: F811
                                                                       monkeypatch):
    root, _ = tiny
    run = root / "ro"
    run.mkdir()
    shutil.copy(trained_checkpoint, run / "last.pth")
    import os
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(run) else real_access(p, mode, **k))
    before = snapshot(root)
    code, _, err = _train(["-r", run / "last.pth"], capfd)
    one_line_error(code, err, run, "is not writable", "--run_id NEW")
    assert snapshot(root) == before


def test_evaluation_beside_a_read_only_checkpoint_is_refused_before_any_work(tmp_path, trained_checkpoint,  # noqa: F811
                                                                           capfd, monkeypatch):
    run = tmp_path / "ro"
    run.mkdir()
    shutil.copy(trained_checkpoint, run / "last.pth")
    import os
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == str(run) else real_access(p, mode, **k))
    before = snapshot(tmp_path)
    code, _, err = run_entry("test.py", ["-r", run / "last.pth", "-d", "cpu", "--data_dir", tmp_path / "nowhere"],
                             capfd)  # the data folder is never read: the output is checked first
    one_line_error(code, err, run / "eval_last.json", "is not writable", "another --out")
    assert snapshot(tmp_path) == before


# -- runs that never saved a checkpoint leave no folder -----------------------------------------
def test_diverging_first_epoch_leaves_no_folder_and_the_same_command_runs_again(tiny, capfd):
    root, config = tiny
    argv = ["-c", write_config(root / "c.json", config), "--run_id", "nf", "--lr", "1e30"]
    for _ in range(2):
        code, _, err = _train(argv, capfd)
        one_line_error(code, err, "non-finite", "epoch 1", "no checkpoint was written")
        assert not (root / "saved").exists()


def test_zero_epochs_claims_no_checkpoint_and_leaves_no_folder(tiny, capfd):
    root, config = tiny
    code, out, err = _train(["-c", write_config(root / "c.json", config), "--run_id", "z", "--epochs", "0"], capfd)
    assert code == 0, err
    assert "finished: no epoch to train" in out and "last.pth" not in out
    assert not (root / "saved" / "small" / "z").exists()


def test_folder_of_a_run_killed_before_its_first_checkpoint_is_taken_over(tiny, capfd):
    root, config = tiny
    run = root / "saved" / "small" / "k"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config, indent=4) + "\n")  # as the failed start wrote them
    (run / "info.log").write_text("10:00:00 started\n")
    (run / ".lock").write_text("999999\n")  # its holder is gone: the flock went with it
    code, out, err = _train(["-c", write_config(root / "c.json", config), "--run_id", "k"], capfd)
    assert code == 0, err
    assert "taken over" in out and load_checkpoint(run / "last.pth")["epoch"] == 1


def _mount_tmpfs(folder, size):
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root or "
                    "CAP_SYS_ADMIN")
    return folder


def test_disk_full_keeps_the_last_epoch_and_leaves_no_temporary_file(tiny, trained_checkpoint, capfd):  # noqa: F811
    root, config = tiny
    size = trained_checkpoint.stat().st_size
    disk = _mount_tmpfs(root / "disk", 5 * size // 2)  # last.pth and model_best.pth fit, a third file does not
    try:
        config["trainer"].update(save_dir=str(disk), save_period=0, epochs=3)
        cfg = write_config(root / "c.json", config)
        code, _, err = _train(["-c", cfg, "--run_id", "full"], capfd)
        run = disk / "small" / "full"
        line = one_line_error(code, err, "not saved", "No space left on device", "is kept")
        held = load_checkpoint(run / "last.pth")["epoch"]
        assert f"(epoch {held}) is kept" in line and held >= 1
        assert not [p for p in run.iterdir() if ".tmp" in p.name]
    finally:
        subprocess.run(["umount", str(disk)])
    disk = _mount_tmpfs(root / "disk", "4k")  # full from the start: config.json cannot be written
    try:
        config["trainer"]["save_dir"] = str(disk)
        cfg = write_config(root / "c.json", config)
        for _ in range(2):  # the same command again: refused for the disk, not for a leftover folder
            code, _, err = _train(["-c", cfg, "--run_id", "start"], capfd)
            one_line_error(code, err, "config.json", "No space left on device")
            assert not (disk / "small").exists()
    finally:
        subprocess.run(["umount", str(disk)])


# -- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_without_a_checksum_still_loads(tmp_path, trained_checkpoint):  # noqa: F811
    ckpt = load_checkpoint(trained_checkpoint)
    assert ckpt["checksum"].startswith("blake2b-128:")
    del ckpt["checksum"]
    torch.save(ckpt, tmp_path / "old.pth")  # as written before checkpoints carried one
    assert load_checkpoint(tmp_path / "old.pth")["epoch"] == ckpt["epoch"]


# -- results --------------------------------------------------------------------------------------
def test_out_may_replace_an_earlier_result_of_the_same_script(tmp_path, trained_checkpoint, capfd):  # noqa: F811
    torch.set_num_threads(1)
    data = write_cifar100(tmp_path / "cifar", train_per_class=2, test_per_class=1)
    out = tmp_path / "res" / "eval.json"
    for _ in range(2):
        code, _, err = run_entry("test.py", ["-r", trained_checkpoint, "-d", "cpu", "--data_dir", data,
                                             "--distributions", "uniform", "--out", out], capfd)
        assert code == 0, err
    assert json.loads(out.read_text())["written_by"] == "test.py"
    (tmp_path / "res" / "other.csv").write_text("mine")
    code, _, err = run_entry("test.py", ["-r", trained_checkpoint, "-d", "cpu", "--data_dir", data,
                                         "--out", tmp_path / "res" / "other.json"], capfd)
    one_line_error(code, err, "other.csv", "refusing to replace it")


# -- the trainer schema and --set by class --------------------------------------------------------
def test_trainer_schema_fills_defaults_and_takes_the_new_keys():
    settings = trainer_settings({"epochs": 3})
    assert settings == {name: (3 if name == "epochs" else key.default) for name, key in SCHEMA.items()}
    assert settings["select_on"] == "validation" and settings["monitor"] == "max val_accuracy"
    assert trainer_settings({"epochs": 3, "select_on": "last"})["select_on"] == "last"
    with pytest.raises(UserError, match="trainer.epochs is missing"):
        trainer_settings({})
    assert trainer_settings({"verbosity": 2}, training=False)["autocast"] is None  # a release config, evaluated


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_key_checks(path):
    from trainer.build import read_test_time_config
    from utils.known_keys import check_config_keys
    from trainer.build import section_modules
    from utils.known_keys import check_arguments
    from utils.parse_config import ConfigParser
    modules = section_modules()
    if path.name.startswith("test_time_"):
        config = read_test_time_config(path)
    else:
        config = json.loads(path.read_text())
        check_config_keys(config, path)
        trainer_settings(config["trainer"], path)
    parsed = ConfigParser(config, source=path)
    for section in set(config) & set(modules):
        cls, _ = parsed._lookup(section, modules[section])
        check_arguments(path, section, cls, config[section].get("args") or {})  # the args its class takes


def test_known_arguments_follow_kwargs_to_the_base_class():
    from data_loader.digits_lt import DigitsLTDataModule

    class Opaque:
        def __init__(self, **kwargs):
            pass

    names = known_arguments(DigitsLTDataModule)  # **kw -> ArrayLTDataModule -> **loader_kw -> LTDataModule
    assert {"imb_factor", "pipeline", "pin_memory", "drop_last"} <= names
    assert known_arguments(Opaque) is None  # **kwargs that go nowhere inspectable: the class checks itself


def test_set_adds_a_trainer_key_of_the_schema_but_not_a_typo():
    from utils.parse_config import ConfigParser
    config = {"trainer": {"epochs": 1}}
    ConfigParser.apply_overrides(config, [("trainer.mixup", {"alpha": 0.8}, "--set")], "c.json")
    assert trainer_settings(config["trainer"])["mixup"] == {"alpha": 0.8}
    with pytest.raises(UserError, match="unknown config key 'trainer.mixpu'; did you mean trainer.mixup?"):
        ConfigParser.apply_overrides(config, [("trainer.mixpu", None, "--set")], "c.json")


def test_set_adds_an_argument_the_class_takes_but_the_file_lacks(tmp_path):
    from trainer.build import build_test_time_method
    path = tmp_path / "single.json"
    path.write_text('{"test_time": {"type": "SingleExpert", "args": {}}}')
    method, _ = build_test_time_method(path, [("test_time.args.expert", 1, "--set")])
    assert method.expert == 1


def test_fitted_temperature_that_is_not_positive_is_a_user_error():
    from trainer.test_time.label_shift import fit_calibration
    targets = torch.arange(4).repeat(8)
    logits = -10.0 * torch.nn.functional.one_hot(targets, 4).double()  # confidently wrong: beta < 0 fits best
    with pytest.raises(UserError, match="fitted inverse temperature .* is not positive"):
        fit_calibration(logits, targets)


def test_second_concurrent_resume_is_refused_in_one_line(tiny, trained_checkpoint):  # noqa: F811
    """Two real train.py processes on one run folder: the second is refused while the first holds it."""
    root, _ = tiny
    run = root / "shared"
    run.mkdir()
    shutil.copy(trained_checkpoint, run / "last.pth")
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "-r", str(run / "last.pth"), "-d", "cpu",
                              "--epochs", "30", "--lr", "0.01"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read()
        second = subprocess.run([sys.executable, str(ROOT / "train.py"), "-r", str(run / "last.pth"), "-d", "cpu",
                                 "--lr", "0.02"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        one_line_error(second.returncode, second.stderr, run, "in use by another train.py", f"pid {first.pid}")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
