"""The validation split of every data module: where it comes from, that it never overlaps the training
images (outside the reported in-sample classes) or the test set, its bad inputs, model selection on
it, and SafePrior's settings chosen on it."""
import json

import numpy as np
import pytest
import torch

from data_loader.cifar_lt import CIFAR100LTDataModule
from data_loader.digits_lt import DigitsLTDataModule
from data_loader.list_lt import ImageNetLTDataModule, INaturalistDataModule, PlacesLTDataModule
from data_loader.validation_split import held_out_split, parse_validation
from tests.helpers import one_line_error, run_entry, small_cifar_config, write_cifar100, write_config
from tests.list_data import list_module_args, write_list_dataset
from utils.errors import UserError


def rows(images):
    return {bytes(np.ascontiguousarray(x)) for x in images}


# ------------------------------------------------------------------ the rule
def test_held_out_split_takes_left_over_images_and_reports_in_sample_classes():
    targets = np.repeat(np.arange(3), 10)
    keep = np.concatenate([np.arange(0, 10), np.arange(10, 14), np.arange(20, 22)])  # class 0 uses all
    idx, counts, in_sample = held_out_split(targets, keep, 3, per_class=5, seed=0)
    assert counts == [5, 5, 5] and in_sample == [0]
    assert set(idx[targets[idx] != 0]).isdisjoint(keep)  # classes 1, 2: never a training image
    assert set(idx[targets[idx] == 0]) <= set(keep)  # class 0: in-sample, reported
    again, _, _ = held_out_split(targets, keep, 3, per_class=5, seed=0)
    other, _, _ = held_out_split(targets, keep, 3, per_class=5, seed=1)
    assert np.array_equal(idx, again) and not np.array_equal(idx, other)
    everything, counts, _ = held_out_split(targets, keep, 3, per_class="all")
    assert counts == [8, 6, 8]  # every left-over image; the in-sample class as many as the largest


def test_a_default_size_is_capped_and_an_explicit_one_is_checked():
    targets = np.repeat(np.arange(2), 4)
    keep = np.array([0, 1, 4])
    _, counts, _ = held_out_split(targets, keep, 2, per_class=100, explicit=False)
    assert counts == [2, 3]
    with pytest.raises(UserError, match=r"per_class 100: larger than any class can give \(at most 3 images"):
        held_out_split(targets, keep, 2, per_class=100, option="data_loader.args.validation.per_class")


@pytest.mark.parametrize("value, fragment", [
    (0, "per_class 0: expected an integer >= 1"), (-3, "per_class -3"), (2.5, "per_class 2.5"),
    ("many", "per_class 'many'"), (True, "per_class True"), ({"per_class": 5, "size": 3}, "unknown key(s) size"),
    ({"seed": -1}, "seed -1: expected an integer >= 0"),
])
def test_bad_validation_values_name_the_key(value, fragment):
    with pytest.raises(UserError, match="data_loader.args.validation") as e:
        parse_validation(value, "data_loader.args.validation", 100)
    assert fragment in str(e.value)


# ------------------------------------------------------------------ every data module
def test_cifar_validation_is_held_out(tmp_path):
    root = write_cifar100(tmp_path, train_per_class=12, test_per_class=3)
    data = CIFAR100LTDataModule(str(root), img_max=10, imb_factor=0.1, validation=2)
    info = data.validation_info
    assert info["counts"] == [2] * 100 and info["source"].startswith("training-split images")
    train_y = data.validation_set.targets
    assert len(data.validation_set) == 200 and np.bincount(train_y, minlength=100).tolist() == [2] * 100
    assert rows(data.validation_set.data).isdisjoint(rows(data.train_set.data))  # no class is in-sample here
    assert rows(data.validation_set.data).isdisjoint(rows(data.test_set.data))
    loader = data.validation_loader(batch_size=64)
    assert sum(len(y) for _, y in loader) == 200
    assert CIFAR100LTDataModule(str(root), img_max=10, imb_factor=0.1, validation=False).validation_set is None


def test_cifar_head_class_without_left_overs_is_in_sample(tmp_path):
    root = write_cifar100(tmp_path, train_per_class=10, test_per_class=2, num_classes=100)
    data = CIFAR100LTDataModule(str(root), img_max=10, imb_factor=0.1, validation={"per_class": 3},
                                pipeline="tensor")
    assert data.validation_info["in_sample_classes"] == [0]  # the head uses all of its 10 images
    head = data.validation_set.data[data.validation_set.targets == 0]
    tail = data.validation_set.data[data.validation_set.targets != 0]
    assert rows(head) <= rows(data.train_set.data) and rows(tail).isdisjoint(rows(data.train_set.data))
    x, y = next(iter(data.validation_loader(batch_size=500)))
    assert x.dtype == torch.float32 and len(y) == len(data.validation_set)


def test_digits_validation_is_held_out():
    data = DigitsLTDataModule()
    assert sum(data.validation_info["counts"]) > 0 and data.validation_info["in_sample_classes"] == []
    assert rows(data.validation_set.data).isdisjoint(rows(data.train_set.data))
    assert rows(data.validation_set.data).isdisjoint(rows(data.test_set.data))


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_list_dataset(tmp_path_factory.mktemp("vlists"))


@pytest.mark.parametrize("module", [ImageNetLTDataModule, PlacesLTDataModule])
def test_list_validation_comes_from_its_list(lists, module):
    data = module(**list_module_args(lists))
    assert data.validation_info["source"].startswith("validation list") and len(data.validation_set) == 10
    val = set(data.val_list.images)
    assert val.isdisjoint(data.train_list.images) and val.isdisjoint(data.test_list.images)
    assert np.array_equal(data.validation_set.targets, data.label_map[data.val_list.labels])


def test_inat_has_none_unless_configured(lists):
    args = list_module_args(lists)
    args.pop("val_list")
    data = INaturalistDataModule(**args)
    assert not data.has_validation
    with pytest.raises(UserError, match="data_loader.args.val_list"):
        data.require_validation("SafePrior")


def test_bad_validation_lists_are_refused(lists, tmp_path):
    train_line = lists["train_txt"].read_text().splitlines()[0]
    overlap = tmp_path / "overlap.txt"
    overlap.write_text(lists["val_txt"].read_text() + train_line + "\n")
    with pytest.raises(UserError, match=r"is also in the training list .*validation images must be held out"):
        ImageNetLTDataModule(**list_module_args(lists, val_list=str(overlap)))
    test_line = lists["test_txt"].read_text().splitlines()[0]
    overlap.write_text(test_line + "\n")
    with pytest.raises(UserError, match="is also in the test list"):
        ImageNetLTDataModule(**list_module_args(lists, val_list=str(overlap)))
    no_four = tmp_path / "train_no4.txt"
    no_four.write_text("".join(f"{line}\n" for line in lists["train_txt"].read_text().splitlines()
                               if not line.endswith(" 4")))
    with pytest.raises(UserError, match=r"val.txt, line \d+: class 4 is not in the training list"):
        ImageNetLTDataModule(**list_module_args(lists, train_txt=str(no_four)))
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("val/c0/0.jpg 5\n")
    with pytest.raises(UserError, match=r"foreign.txt, line 1: label 5 out of range"):
        ImageNetLTDataModule(**list_module_args(lists, val_list=str(foreign)))


# ------------------------------------------------------------------ model selection
@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("vcifar"), train_per_class=14, test_per_class=3)


def test_model_best_is_chosen_on_the_validation_split(small_cifar, tmp_path, capfd):
    cfg = small_cifar_config(small_cifar, tmp_path / "saved", epochs=2)
    cfg["data_loader"]["args"].update(img_max=2, imb_factor=0.5)  # the tiny recipe's 101 images: what is chosen on
    code, _, err = run_entry("train.py", ["-c", write_config(tmp_path / "c.json", cfg), "--run_id", "v"], capfd)
    assert code == 0, err
    run = tmp_path / "saved" / "small" / "v"
    log = (run / "info.log").read_text()
    assert "validation split: " in log and "on the validation split" in log
    assert "test_accuracy" in log and "TEST SET" not in log
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["selected_on"] == "validation" and len(ckpt["history"]) == 2
    csv = (run / "epochs.csv").read_text().splitlines()
    assert len(csv) == 3 and "val_accuracy" in csv[0] and "test_accuracy" in csv[0]
    # the release's choice, asked for explicitly and named so (one epoch: its first model_best)
    cfg["trainer"].update(select_on="test", epochs=1)
    code, _, err = run_entry("train.py", ["-c", write_config(tmp_path / "c.json", cfg), "--run_id", "t"], capfd)
    assert code == 0, err
    assert "TEST SET" in (tmp_path / "saved" / "small" / "t" / "info.log").read_text()
    assert torch.load(tmp_path / "saved/small/t/model_best.pth", weights_only=True)["selected_on"] == "test"


@pytest.mark.parametrize("section, key, value, fragment", [
    ("trainer", "monitor", "max test_accuracy", "would choose model_best.pth on the test set"),
    ("trainer", "select_on", "best", "trainer.select_on"),
    ("data_loader", "validation", 0, "data_loader.args.validation.per_class 0"),
    ("data_loader", "validation", 50, "larger than any class can give"),
])
def test_bad_selection_settings_are_one_line(small_cifar, tmp_path, section, key, value, fragment, capfd):
    cfg = small_cifar_config(small_cifar, tmp_path / "saved", epochs=1)
    (cfg[section]["args"] if section == "data_loader" else cfg[section])[key] = value
    code, _, err = run_entry("train.py", ["-c", write_config(tmp_path / "c.json", cfg), "--run_id", "x"], capfd)
    one_line_error(code, err, fragment)
    assert not (tmp_path / "saved" / "small" / "x" / "last.pth").exists()


# ------------------------------------------------------------------ SafePrior's settings from the validation split
def _context(val_logits, val_targets, c):
    from base.base_test_time import TestTimeContext
    prior = torch.full((c,), 1.0 / c)
    return TestTimeContext(num_experts=1, num_classes=c, train_prior=prior,
                           validation_logits=lambda: (val_logits, val_targets),
                           validation_info={"in_sample_classes": [2]})


def _gaussian_logits(n, prior, seed, c=4):
    g = np.random.default_rng(seed)
    mu = np.random.default_rng(0).normal(0, 2.0, size=(c, 3))
    y = g.choice(c, size=n, p=prior)
    x = mu[y] + g.normal(size=(n, 3))
    z = -0.5 * ((x[:, None, :] - mu[None]) ** 2).sum(-1)
    return torch.tensor(z, dtype=torch.float32)[:, None, :], torch.tensor(y)


def test_safe_prior_strength_comes_from_the_validation_split():
    from trainer.test_time import SafePrior
    c = 4
    val, yv = _gaussian_logits(800, np.full(c, 0.25), seed=1)
    method = SafePrior(strength="auto", min_divergence="auto", simulation_size=400)  # the per-model rule
    test, _ = _gaussian_logits(600, np.array([0.7, 0.2, 0.07, 0.03]), seed=2)
    out = method.adapt(test, _context(val, yv, c))
    sel = out["selection"]
    assert sel["simulated_sets"] == 40 and sel["strength"] > 0 and out["shift_detected"]
    assert out["calibrated_on"] == "validation" and out["calibration_images_per_class"] == np.bincount(yv).tolist()
    assert out["calibration_in_sample_classes"] == [2]
    json.dumps({k: v for k, v in out.items() if k != "scores"})  # every fact is JSON-able


def test_safe_prior_falls_back_to_the_plain_average_when_no_setting_holds(monkeypatch):
    from trainer.test_time import SafePrior
    from trainer.test_time import shift_simulation

    def always_wrong(method, z, cal):  # every candidate mispredicts every simulated image
        plain = z.argmax(1)
        return {(s, d): (plain + 1) % z.shape[1] for s in shift_simulation.STRENGTHS
                for d in shift_simulation.MIN_DIVERGENCES}, plain

    monkeypatch.setattr(shift_simulation, "candidate_scores", always_wrong)
    c = 4
    val, yv = _gaussian_logits(800, np.full(c, 0.25), seed=1)
    test, _ = _gaussian_logits(600, np.array([0.7, 0.2, 0.07, 0.03]), seed=2)
    out = SafePrior(strength="auto", min_divergence="auto", simulation_size=400).adapt(test, _context(val, yv, c))
    assert out["selection"]["strength"] == 0 and "no setting held" in out["selection"]["chosen_by"]
    assert not out["shift_detected"] and torch.equal(out["scores"], test.mean(1))
    assert all(e["worst_margin"] < 0 for e in out["selection"]["evidence"].values())


def test_a_method_calibrated_on_validation_is_refused_before_work_without_a_split(lists):
    from trainer.test_time import EMPrior, SafePrior
    args = list_module_args(lists)
    args.pop("val_list")
    data = INaturalistDataModule(**args)
    for method in (SafePrior(), EMPrior()):
        with pytest.raises(ValueError, match="has no validation split; configure one with data_loader.args.val_list"):
            method.check(data)
    EMPrior(calibration="training").check(data)  # calibrated on the training images: fine
