"""train.py end to end on a generated CIFAR-100-format folder: files, resume, repeatability."""
import json

import pytest
import torch

from tests.helpers import assert_one_line_error, run_script, small_cifar_config, write_cifar100, write_config


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=10, test_per_class=3)


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_train_resume_equals_uninterrupted(cifar_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", small_cifar_config(cifar_dir, tmp_path / "saved", epochs=2))
    full = run_script("train.py", "-c", cfg, "--run_id", "full", "--seed", "7")
    assert full.returncode == 0, full.stderr[-3000:]
    run = tmp_path / "saved" / "small" / "full"
    for name in ("config.json", "info.log", "last.pth", "model_best.pth", "checkpoint-epoch1.pth",
                 "checkpoint-epoch2.pth"):
        assert (run / name).is_file(), name
    saved_config = json.loads((run / "config.json").read_text())
    assert saved_config["seed"] == 7 and saved_config["trainer"]["epochs"] == 2

    half = run_script("train.py", "-c", cfg, "--run_id", "half", "--seed", "7", "--epochs", "1")
    assert half.returncode == 0, half.stderr[-3000:]
    resumed = run_script("train.py", "-r", tmp_path / "saved" / "small" / "half" / "last.pth", "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpt = torch.load(tmp_path / "saved" / "small" / "half" / "last.pth", weights_only=True)
    assert ckpt["epoch"] == 2
    a, b = weights(run / "last.pth"), ckpt["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_same_seed_repeats_and_checkpoint_is_plain_data(cifar_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", small_cifar_config(cifar_dir, tmp_path / "saved", epochs=1))
    for run_id in ("a", "b"):
        proc = run_script("train.py", "-c", cfg, "--run_id", run_id, "--seed", "3")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = weights(tmp_path / "saved" / "small" / "a" / "last.pth")
    b = weights(tmp_path / "saved" / "small" / "b" / "last.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "saved" / "small" / "a" / "last.pth", weights_only=True)
    assert {"epoch", "state_dict", "optimizer", "lr_scheduler", "config", "rng", "monitor_best"} <= set(ckpt)
    assert ckpt["config"]["name"] == "small"


def test_softmax_single_expert_trains(cifar_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", small_cifar_config(cifar_dir, tmp_path / "saved", epochs=1,
                                                              num_experts=1, loss="CrossEntropyLoss"))
    proc = run_script("train.py", "-c", cfg, "--run_id", "x", "--set", "lr_scheduler.args.warmup_epoch=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "saved/small/x/config.json").read_text())["lr_scheduler"]["args"]["warmup_epoch"] == 1


def test_validation_every_few_epochs_keeps_the_monitor(cifar_dir, tmp_path):
    """trainer.valid_period 2 with the default monitor (max val_accuracy): epochs without
    validation leave model_best alone; the last epoch always validates."""
    cfg = write_config(tmp_path / "c.json", small_cifar_config(cifar_dir, tmp_path / "saved", epochs=3))
    proc = run_script("train.py", "-c", cfg, "--run_id", "p2", "--set", "trainer.valid_period=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "saved/small/p2/info.log").read_text().splitlines()
    epochs = [line for line in log if " epoch " in line and "loss" in line]
    assert ["val_accuracy" in line for line in epochs] == [False, True, True]
    assert (tmp_path / "saved/small/p2/model_best.pth").is_file()


def test_monitor_on_validation_without_validation_is_refused(cifar_dir, tmp_path):
    cfg = write_config(tmp_path / "c.json", small_cifar_config(cifar_dir, tmp_path / "saved", epochs=1))
    proc = run_script("train.py", "-c", cfg, "--run_id", "p0", "--set", "trainer.valid_period=0")
    assert_one_line_error(proc, "trainer.monitor", "valid_period")
    assert not (tmp_path / "saved/small/p0/last.pth").exists()
