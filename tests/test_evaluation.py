"""test.py: test distributions, one-pass metrics, outputs, release checkpoints, bad input."""
import json
import math
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from utils.long_tail import img_num_per_cls
from data_loader.test_distributions import distribution_names, generated_distributions
from model import ResNet32Model
from tests.helpers import one_line_error, run_entry, run_script, write_config
from trainer.evaluation import distribution_metrics
from trainer.forward import collect_expert_logits

SIZES = {"forward50": 2486, "forward25": 2956, "forward10": 3876, "forward5": 4932, "forward2": 7166,
         "uniform": 10000}


def cifar100_test_targets():
    rng = np.random.RandomState(5)
    targets = np.repeat(np.arange(100), 100)
    rng.shuffle(targets)
    return targets


def test_eleven_cifar100_distribution_sizes_and_counts():
    targets = cifar100_test_targets()
    dists = generated_distributions(targets, 100)
    assert list(dists) == distribution_names() == [
        "forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
        "backward2", "backward5", "backward10", "backward25", "backward50"]
    for name, idx in dists.items():
        ratio = name.replace("forward", "").replace("backward", "")
        assert len(idx) == SIZES.get(name, SIZES.get(f"forward{ratio}")), name
        assert len(set(idx.tolist())) == len(idx)
        if name != "uniform":
            counts = np.bincount(targets[idx], minlength=100)
            expected = [int(100 * (1 / int(ratio)) ** ((c if name.startswith("forward") else 99 - c) / 99))
                        for c in range(100)]
            assert counts.tolist() == expected, name


def test_distributions_follow_training_rank():
    targets = np.repeat(np.arange(4), 10)
    dists = generated_distributions(targets, 4, ratios=(10,), class_rank=[3, 0, 2, 1])
    counts = np.bincount(targets[dists["forward10"]], minlength=4)
    assert counts.tolist() == [img_num_per_cls(10, 4, 0.1)[r] for r in (3, 0, 2, 1)]


class LabelReader(torch.nn.Module):
    """A stub network that 'sees' the label written into pixel (0, 0) of the first channel and is
    right for even classes, wrong (predicts class + 1) for odd ones; all experts agree."""

    num_experts = 2

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        label = x[:, 0, 0, 0].round().long()
        pred = torch.where(label % 2 == 0, label, (label + 1) % self.num_classes)
        logits = torch.nn.functional.one_hot(pred, self.num_classes).float()
        logits = logits.unsqueeze(1).repeat(1, self.num_experts, 1)
        return {"output": logits.mean(1), "logits": logits}


def test_metrics_on_stub_equal_hand_computed_values():
    num_classes = 6
    targets = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 5, 5])
    x = torch.zeros(len(targets), 3, 2, 2)
    x[:, 0, 0, 0] = targets.float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, targets), batch_size=3)
    logits, got_targets = collect_expert_logits(LabelReader(num_classes), loader, "cpu")
    preds = logits.mean(1).argmax(1)
    masks = {"many": np.array([1, 1, 0, 0, 0, 0], bool), "medium": np.array([0, 0, 1, 1, 0, 0], bool),
             "few": np.array([0, 0, 0, 0, 1, 1], bool)}
    dists = {"all": np.arange(10), "evens": np.array([0, 1, 4, 6]), "odds": np.array([2, 3, 5, 7, 8, 9])}
    res = distribution_metrics(preds, got_targets, dists, num_classes, masks)
    # correct: the images of classes 0, 2, 4 (2 + 1 + 1 = 4 of 10); per-class acc: [1, 0, 1, 0, 1, 0]
    assert res["all"] == {"num_images": 10, "top1": 0.4, "many": 0.5, "medium": 0.5, "few": 0.5}
    assert res["evens"] == {"num_images": 4, "top1": 1.0, "many": 1.0, "medium": 1.0, "few": 1.0}
    # odds: only classes 1, 3, 5 present -> every group present, all wrong
    assert res["odds"] == {"num_images": 6, "top1": 0.0, "many": 0.0, "medium": 0.0, "few": 0.0}
    # a group with no class present in the subset is absent, not NaN
    res = distribution_metrics(preds, got_targets, {"head": np.array([0, 1, 2, 3])}, num_classes, masks)
    assert set(res["head"]) == {"num_images", "top1", "many"}


@pytest.fixture
def trained(small_run):
    return small_run


def test_one_pass_equals_separate_subsets(trained):
    from trainer.build import load_trained
    _, _, ckpt = trained
    t = load_trained(ckpt)
    net, data = t.net, t.data
    dists = data.test_distributions()
    logits, targets = collect_expert_logits(net, data.test_loader(), "cpu")
    one_pass = distribution_metrics(logits.mean(1).argmax(1), targets, dists, 100, data.shot_masks())
    for name in ("forward50", "uniform", "backward10"):
        sub_logits, sub_targets = collect_expert_logits(net, data.test_loader(indices=dists[name]), "cpu")
        separate = distribution_metrics(sub_logits.mean(1).argmax(1), sub_targets,
                                        {name: np.arange(len(sub_targets))}, 100, data.shot_masks())
        assert separate[name] == pytest.approx(one_pass[name]), name


def test_test_py_writes_json_csv_and_logits(trained, tmp_path):
    """test.py run as a user runs it, in its own process (the other tests call its main here)."""
    _, _, ckpt = trained
    out = tmp_path / "res" / "eval.json"
    proc = run_script("test.py", "-r", ckpt, "--out", out, "--save_logits", "--macs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MACs per image" in proc.stdout
    payload = json.loads(out.read_text())
    assert list(payload["distributions"]) == distribution_names()
    for m in payload["distributions"].values():
        assert 0 <= m["top1"] <= 1 and not any(isinstance(v, float) and math.isnan(v) for v in m.values())
    assert payload["distributions"]["uniform"]["num_images"] == 400
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert csv["distribution"].tolist() == distribution_names()
    assert csv.loc[csv.distribution == "uniform", "top1"].item() == pytest.approx(
        payload["distributions"]["uniform"]["top1"])
    from trainer.saved_logits import load_logits
    saved = load_logits(tmp_path / "res" / "eval_logits.npz")
    test_logits, test_targets = saved.splits["test"]
    assert test_logits.shape == (400, 3, 100) and test_logits.dtype == torch.float32
    assert saved.splits["training"][0].shape[1:] == (3, 100)
    assert list(saved.data.distributions) == distribution_names()
    # calibration of the ensemble, from the same logits; the reliability diagram beside the results
    from model.calibration import calibration_metrics
    uniform = calibration_metrics(test_logits.mean(1), test_targets, from_logits=True)
    for key in ("ece", "mce", "nll", "class_tv", "class_kl"):
        assert payload["distributions"]["uniform"][key] == pytest.approx(uniform[key]), key
        assert key in csv.columns
    assert payload["checkpoint_epoch"] == torch.load(ckpt, weights_only=True)["epoch"]
    assert (tmp_path / "res" / "eval_reliability.png").stat().st_size > 1000
    # the table is printed in the published order
    header = next(line for line in proc.stdout.splitlines() if "forward50" in line)
    assert header.split() == distribution_names()


def test_distribution_selection_and_unknown_name(trained, tmp_path, capfd):
    _, _, ckpt = trained
    out = tmp_path / "sel.json"
    code, _, err = run_entry("test.py", ["-r", ckpt, "--out", out, "--distributions", "backward50,uniform"], capfd)
    assert code == 0, err[-3000:]
    assert list(json.loads(out.read_text())["distributions"]) == ["uniform", "backward50"]
    code, _, err = run_entry("test.py", ["-r", ckpt, "--distributions", "sideways7"], capfd)
    one_line_error(code, err, "sideways7")


def test_dataparallel_checkpoint_evaluates_the_same(trained, tmp_path, capfd):
    _, _, ckpt = trained
    state = torch.load(ckpt, weights_only=True)
    wrapped = torch.nn.DataParallel(ResNet32Model(num_classes=100, num_experts=3, reduce_dimension=True))
    wrapped.module.load_state_dict(state["state_dict"])
    # as written by other code (no checksum of its contents: the edit would not match the original's)
    dp = dict({k: v for k, v in state.items() if k != "checksum"}, state_dict=wrapped.state_dict())
    assert all(k.startswith("module.") for k in dp["state_dict"])
    torch.save(dp, tmp_path / "dp.pth")
    assert run_entry("test.py", ["-r", ckpt, "--out", tmp_path / "a.json"], capfd)[0] == 0
    code, _, err = run_entry("test.py", ["-r", tmp_path / "dp.pth", "--out", tmp_path / "b.json"], capfd)
    assert code == 0, err[-2000:]
    assert (json.loads((tmp_path / "a.json").read_text())["distributions"]
            == json.loads((tmp_path / "b.json").read_text())["distributions"])


def _release_checkpoint(path, net, config):
    """A checkpoint as the release writes it: a pickled ``parse_config.ConfigParser`` inside."""
    from pathlib import Path as _Path
    module = types.ModuleType("parse_config")

    class ConfigParser:
        def __init__(self, config):
            self._config = config
            self.resume = None
            self._save_dir = _Path("saved/models")

    ConfigParser.__module__ = "parse_config"
    ConfigParser.__qualname__ = "ConfigParser"
    module.ConfigParser = ConfigParser
    sys.modules["parse_config"] = module
    try:
        sd = {"module." + k: v for k, v in net.state_dict().items()}
        torch.save({"arch": "ResNet32Model", "epoch": 200, "state_dict": sd, "optimizer": {}, "monitor_best": 0.5,
                    "criterion": {}, "config": ConfigParser(config)}, path)
    finally:
        del sys.modules["parse_config"]


def test_release_checkpoint_loads_and_gives_the_release_logits(trained, tmp_path, capfd):
    from tests.release_reference import ResNet32Model as ReleaseModel
    from trainer.build import load_trained
    root, data_dir, _ = trained
    torch.manual_seed(0)
    release = ReleaseModel(num_classes=100, reduce_dimension=True, num_experts=3)
    for m in release.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    release.eval()
    config = {"name": "release", "arch": {"type": "ResNet32Model", "args": {
        "num_classes": 100, "reduce_dimension": True, "use_norm": True, "returns_feat": True, "num_experts": 3}},
        "data_loader": {"type": "ImbalanceCIFAR100DataLoader", "args": {
            "data_dir": str(data_dir), "batch_size": 32, "shuffle": True, "num_workers": 0, "imb_factor": 0.1,
            "img_max": 10}}}
    path = tmp_path / "release.pth"
    _release_checkpoint(path, release, config)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # plain weights_only cannot: the config object is code
    t = load_trained(path)
    net, cfg = t.net, t.config
    assert cfg["arch"]["type"] == "ResNet32Model"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x)["logits"], release(x), atol=1e-5)
    out = tmp_path / "rel.json"
    code, _, err = run_entry("test.py", ["-r", path, "--out", out, "--distributions", "uniform"], capfd)
    assert code == 0, err[-2000:]


def test_bad_checkpoints_and_data(trained, tmp_path, capfd):
    root, _, ckpt = trained

    def error(*argv):
        code, _, err = run_entry("test.py", argv, capfd)
        return code, err

    one_line_error(*error("-r", tmp_path / "none.pth"), "none.pth", "does not exist")
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(ckpt.read_bytes()[:5000])
    one_line_error(*error("-r", truncated), "trunc.pth")
    other = json.loads((root / "c.json").read_text())
    other["arch"]["args"]["reduce_dimension"] = False
    cfg = write_config(tmp_path / "other.json", other)
    one_line_error(*error("-r", ckpt, "-c", cfg), "last.pth", "does not match")
    one_line_error(*error("-r", ckpt, "--data_dir", tmp_path / "nodata"), "nodata")
