"""The examples of docs/extending.md (tests/extending/) are real: each is built from a config by its
``type`` through the public entry points (train.py, test.py, test_train.py) and trains or evaluates;
docs/extending.md shows each file exactly as it is here."""
import json
import re

import numpy as np
import pytest

from utils.long_tail import img_num_per_cls
from tests.helpers import ROOT, call_entry, example_config, one_line_error, run_entry, write_config, write_npz

EXAMPLES = ROOT / "tests" / "extending"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    cfg = write_config(root / "c.json", example_config(write_npz(root / "data.npz"), root / "saved"))
    assert call_entry("train.py", ["-c", cfg, "--run_id", "r"]) == 0
    return root, root / "saved" / "extending" / "r"


def test_dataset_loss_and_backbone_train_through_train_py(run):
    _, folder = run
    log = (folder / "info.log").read_text()
    assert "TinyCNNModel" in log and "epoch 2:" in log
    losses = [float(v) for v in re.findall(r"epoch \d+: loss ([0-9.]+)", log)]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
    expected = sum(img_num_per_cls(30, 10, 0.1))  # the long tail that ArrayLTDataModule draws
    assert f"| {expected} training images, 10 classes" in log


def test_test_py_evaluates_the_example_model_on_every_distribution(run, capfd):
    _, folder = run
    code, _, err = run_entry("test.py", ["-r", folder / "last.pth"], capfd)
    assert code == 0, err[-3000:]
    result = json.loads((folder / "eval_last.json").read_text())["distributions"]
    assert "uniform" in result and all(0 <= r["top1"] <= 1 for r in result.values())


def test_test_time_method_example_runs_through_test_train_py(run, capfd):
    root, folder = run
    tt = write_config(root / "tt.json", {"test_time": {
        "type": "tests.extending.most_confident_expert.MostConfidentExpert", "args": {"temperature": 1.0}}})
    out = root / "mce.json"
    code, _, err = run_entry("test_train.py", ["-c", tt, "-r", folder / "last.pth", "--out", out], capfd)
    assert code == 0, err[-3000:]
    rows = json.loads(out.read_text())["distributions"]
    for row in rows.values():
        assert sum(row["expert_share"]) == pytest.approx(1, abs=1e-3) and len(row["expert_share"]) == 3
        assert 0 <= row["top1"] <= 1 and 0 <= row["top1_average"] <= 1
    bad = write_config(root / "bad.json", {"test_time": {
        "type": "tests.extending.most_confident_expert.MostConfidentExpert", "args": {"temperature": 0}}})
    code, _, err = run_entry("test_train.py", ["-c", bad, "-r", folder / "last.pth"], capfd)
    one_line_error(code, err, "bad.json", "temperature 0", "> 0")


def test_a_dotted_type_must_honour_its_contract(tmp_path, capfd):
    cfg = example_config(write_npz(tmp_path / "d.npz"), tmp_path / "saved")
    cfg["loss"]["type"] = "tests.extending.tiny_cnn.TinyCNNModel"  # a model where a loss belongs
    code, _, err = run_entry("train.py", ["-c", write_config(tmp_path / "c.json", cfg)], capfd)
    one_line_error(code, err, "c.json", "loss.type", "TinyCNNModel", "LTLoss")
    cfg["loss"]["type"] = "tests.extending.nowhere.FocalLoss"
    code, _, err = run_entry("train.py", ["-c", write_config(tmp_path / "c.json", cfg)], capfd)
    one_line_error(code, err, "c.json", "loss.type", "tests.extending.nowhere")


def test_an_array_dataset_states_its_normalisation_and_augmentation(tmp_path):
    """No CIFAR values by default: each stated attribute is required, one line naming class and attribute."""
    from tests.extending.npz_lt import NpzLTDataModule
    from utils.errors import UserError

    npz = write_npz(tmp_path / "d.npz")
    for name in ("default_mean", "default_std", "default_padding", "default_flip", "default_rotation"):
        unstated = type("Unstated", (NpzLTDataModule,), {name: None})
        with pytest.raises(UserError) as err:
            unstated(str(npz), imb_factor=0.1, img_max=30)
        assert "\n" not in str(err.value) and "Unstated" in str(err.value) and f"{name} is not set" in str(err.value)
    module = NpzLTDataModule(str(npz), imb_factor=0.1, img_max=30, std=(0.5, 0.5, 0.5), rotation=0)
    assert module.mean == (0.4914, 0.4822, 0.4465) and module.std == (0.5, 0.5, 0.5)  # the config overrides
    assert module.augment == {"size": 32, "padding": 4, "flip": True, "rotation": 0}


def test_cifar_and_digits_keep_their_normalisation_and_augmentation():
    from data_loader import transforms as tf
    from data_loader.cifar_lt import CIFAR10LTDataModule, CIFAR100LTDataModule
    from data_loader.digits_lt import DIGITS_MEAN, DIGITS_STD, DigitsLTDataModule

    for cifar in (CIFAR10LTDataModule, CIFAR100LTDataModule):
        assert (cifar.default_mean, cifar.default_std) == (tf.CIFAR_MEAN, tf.CIFAR_STD)
        assert (cifar.default_padding, cifar.default_flip, cifar.default_rotation) == (4, True, 15)
        assert cifar.image_size == 32
    digits = DigitsLTDataModule()
    assert (digits.mean, digits.std) == (DIGITS_MEAN, DIGITS_STD)
    assert digits.augment == {"size": 8, "padding": 1, "flip": False, "rotation": 10}


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "__init__.py"))
def test_extending_guide_shows_each_example_file_as_it_is(example):
    guide = (ROOT / "docs" / "extending.md").read_text()
    assert (EXAMPLES / example).read_text().strip() in guide, f"docs/extending.md: tests/extending/{example} differs"
