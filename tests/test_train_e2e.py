"""train.py on a generated CIFAR-100-format folder, in-process: the files of a run, resuming with a
longer plan, repeatability, the single-expert recipe, validation every few epochs.

The end-to-end proof in fresh interpreters (kill, resume, equal weights) is tests/test_fault_tolerance.py;
here the same entry point runs in this process against the session's ``tiny_reference`` run.
"""
import json

import torch

from tests.helpers import assert_same_state, one_line_error, run_entry, tiny_cifar_config, write_config


def test_run_folder_holds_config_log_and_plain_data_checkpoints(tiny_reference):
    run = tiny_reference.run
    for name in ("config.json", "info.log", "last.pth", "model_best.pth", "checkpoint-epoch1.pth",
                 "checkpoint-epoch2.pth", "checkpoint-epoch3.pth"):
        assert (run / name).is_file(), name
    saved_config = json.loads((run / "config.json").read_text())
    assert saved_config["seed"] == int(tiny_reference.seed) and saved_config["trainer"]["epochs"] == 3
    ckpt = torch.load(run / "last.pth", weights_only=True)  # plain data: no code is needed to read it
    assert {"epoch", "state_dict", "optimizer", "lr_scheduler", "config", "rng", "monitor_best"} <= set(ckpt)
    assert ckpt["config"]["name"] == "small" and ckpt["epoch"] == 3


def test_same_seed_repeats_and_resume_with_a_longer_plan_equals_uninterrupted(tiny_reference, tmp_path, capfd):
    """A 1-epoch run at the reference's seed equals the reference's epoch 1, bit for bit; resumed with
    --epochs 3 it ends equal to the uninterrupted 3-epoch run. In this process (one thread, as the
    reference's fresh interpreter): whatever ran here before plays no part in a seeded run."""
    half = tmp_path / "small" / "half"
    code, _, err = run_entry("train.py", ["-c", tiny_reference.config, "--run_id", "half", "--seed",
                                          tiny_reference.seed, "--epochs", "1", "--save_dir", tmp_path, "-d", "cpu"],
                             capfd)
    assert code == 0, err[-3000:]
    assert_same_state(tiny_reference.run / "checkpoint-epoch1.pth", half / "last.pth")
    code, _, err = run_entry("train.py", ["-r", half / "last.pth", "--epochs", "3", "-d", "cpu"], capfd)
    assert code == 0, err[-3000:]
    assert_same_state(tiny_reference.run / "last.pth", half / "last.pth")


def test_softmax_single_expert_trains(tiny_data, tmp_path, capfd):
    config = tiny_cifar_config(tiny_data, tmp_path / "saved")
    config["arch"]["args"]["num_experts"] = 1
    config["loss"] = {"type": "CrossEntropyLoss", "args": {}}
    cfg = write_config(tmp_path / "c.json", config)
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "x", "-d", "cpu", "--set",
                                          "lr_scheduler.args.warmup_epoch=1"], capfd)
    assert code == 0, err
    saved = json.loads((tmp_path / "saved/small/x/config.json").read_text())
    assert saved["lr_scheduler"]["args"]["warmup_epoch"] == 1 and saved["arch"]["args"]["num_experts"] == 1


def test_validation_every_few_epochs_keeps_the_monitor(tiny_data, tmp_path, capfd):
    """trainer.valid_period 2 with the default monitor (max val_accuracy): epochs without
    validation leave model_best alone; the last epoch always validates."""
    cfg = write_config(tmp_path / "c.json", tiny_cifar_config(tiny_data, tmp_path / "saved", epochs=3))
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "p2", "-d", "cpu", "--set", "trainer.valid_period=2"],
                             capfd)
    assert code == 0, err
    log = (tmp_path / "saved/small/p2/info.log").read_text().splitlines()
    epochs = [line for line in log if " epoch " in line and "loss" in line]
    assert ["val_accuracy" in line for line in epochs] == [False, True, True]
    assert (tmp_path / "saved/small/p2/model_best.pth").is_file()


def test_monitor_on_validation_without_validation_is_refused(tiny_data, tmp_path, capfd):
    cfg = write_config(tmp_path / "c.json", tiny_cifar_config(tiny_data, tmp_path / "saved"))
    code, _, err = run_entry("train.py", ["-c", cfg, "--run_id", "p0", "-d", "cpu", "--set", "trainer.valid_period=0"],
                             capfd)
    one_line_error(code, err, "trainer.monitor", "valid_period")
    assert not (tmp_path / "saved/small/p0/last.pth").exists()
