"""Test-time aggregation: the loss, the stopping rule, only alpha learns, --online order, outputs."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from trainer.test_time.self_supervised import (AggregationWeightLearner, NetworkViewBatches, aggregate,
                                               consistency_loss, should_stop)
from tests.helpers import ROOT, one_line_error, run_entry, run_script, write_config


def sgd(lr=0.1):
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def test_loss_equals_formula_on_fixed_logits():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 3, 7), torch.randn(5, 3, 7)
    w = torch.tensor([0.5, 0.3, 0.2])
    a1 = w[0] * z1[:, 0] + w[1] * z1[:, 1] + w[2] * z1[:, 2]
    a2 = w[0] * z2[:, 0] + w[1] * z2[:, 1] + w[2] * z2[:, 2]
    p1, p2 = F.softmax(a1, 1), F.softmax(a2, 1)
    cos = (p1 * p2).sum(1) / (p1.norm(dim=1) * p2.norm(dim=1))
    assert consistency_loss(z1, z2, w).item() == pytest.approx(-cos.mean().item(), rel=1e-6)
    ent = -(p1 * p1.log()).sum(1).mean() - (p2 * p2.log()).sum(1).mean()
    assert consistency_loss(z1, z2, w, 0.01).item() == pytest.approx((-cos.mean() - 0.01 * ent).item(), rel=1e-5)
    assert torch.allclose(aggregate(z1, w), a1, atol=1e-6)


def test_stopping_rule_rounds_to_two_decimals():
    assert not should_stop(torch.tensor([0.5, 0.45, 0.05]))
    assert not should_stop(torch.tensor([0.5, 0.451, 0.0451]))  # rounds to 0.05
    assert should_stop(torch.tensor([0.5, 0.456, 0.044]))  # rounds to 0.04


class ViewStub(torch.nn.Module):
    """Three experts over 2-channel 'images': expert 1 reads channel 0 (the content, identical in
    both views), experts 2 and 3 read channel 1 (per-view noise). ``scale`` sharpens the logits."""

    def __init__(self, num_classes=5, scale=4.0):
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(4, num_classes, bias=False)
        self.scale = scale
        self.register_buffer("counter", torch.zeros(()))

    def forward(self, x):
        content, noise = x[:, 0].flatten(1), x[:, 1].flatten(1)
        e1 = self.proj(content) * self.scale
        e2 = self.proj(noise) * self.scale
        e3 = self.proj(noise.flip(1)) * self.scale
        logits = torch.stack([e1, e2, e3], dim=1)
        return {"output": logits.mean(1), "logits": logits}


def through(net, loader):
    """The learner's batches: ``loader``'s views through ``net`` (the per-set path)."""
    return NetworkViewBatches(loader, net, None, "cpu")


def view_loader(n=96, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    content = torch.randn(n, 2, 2, generator=g)
    items = []
    for i in range(n):
        v1 = torch.stack([content[i], torch.randn(2, 2, generator=g)])
        v2 = torch.stack([content[i], torch.randn(2, 2, generator=g)])
        items.append((v1, v2, i))
    return torch.utils.data.DataLoader(items, batch_size=batch, shuffle=False)


def test_weights_move_toward_the_augmentation_invariant_expert_and_only_alpha_learns():
    net = ViewStub()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    learner = AggregationWeightLearner(3, sgd(0.5), "cpu", epochs=5, stop_weight=0.0)
    fit = learner.fit(through(net, view_loader()))
    w = fit["weights"]
    assert w.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert w[0] > 0.5 and w[0] > w[1] and w[0] > w[2], w
    assert fit["epochs_run"] == 5
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())


def test_stops_after_the_epoch_in_which_a_weight_falls_below_threshold():
    net = ViewStub()
    full = AggregationWeightLearner(3, sgd(0.5), "cpu", epochs=8, stop_weight=0.0).fit(through(net, view_loader()))
    per_epoch = full["history"].reshape(8, -1, 3)[:, -1]  # weights at the end of each epoch
    rounded_min = (torch.round(per_epoch * 100) / 100).min(1).values
    threshold = float(rounded_min[2]) + 0.005  # crossed first at the end of epoch 3
    first = int(np.argmax((rounded_min < threshold).numpy())) + 1
    assert 1 < first < 8
    stopped = AggregationWeightLearner(3, sgd(0.5), "cpu", epochs=8, stop_weight=threshold).fit(
        through(net, view_loader()))
    assert stopped["epochs_run"] == first
    assert torch.allclose(stopped["weights"], per_epoch[first - 1])


def test_online_classifies_each_batch_after_its_own_update():
    net = ViewStub()
    loader = view_loader(n=64, batch=16)
    clean = torch.randn(64, 3, 5)
    fit = AggregationWeightLearner(3, sgd(0.5), "cpu").fit(through(net, loader), clean_logits=clean, online=True)
    assert fit["epochs_run"] == 1 and len(fit["history"]) == 4
    assert fit["online_index"].tolist() == list(range(64))
    uniform = torch.full((3,), 1 / 3)
    before_update = [uniform] + list(fit["history"][:-1])
    for b in range(4):
        sl = slice(16 * b, 16 * (b + 1))
        expected = aggregate(clean[sl], fit["history"][b]).argmax(1)
        assert torch.equal(fit["online_preds"][sl], expected)
    # the check can fail: with the weights before each update, some predictions differ
    stale = torch.cat([aggregate(clean[16 * b:16 * (b + 1)], before_update[b]).argmax(1) for b in range(4)])
    assert not torch.equal(stale, fit["online_preds"])


@pytest.fixture
def trained(small_run):
    root, _, ckpt = small_run
    return root, ckpt


def test_test_train_py_writes_json_csv_png_with_weights(trained, tmp_path):
    from PIL import Image
    _, ckpt = trained
    out = tmp_path / "tt.json"
    proc = run_script("test_train.py", "-c", "configs/test_time_cifar100_tade.json", "-r", ckpt, "--out", out,
                      "--distributions", "forward50,uniform,backward50", "--epochs", "2", "--bs", "64",
                      "--seed", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr  # no progress bars in a pipe
    payload = json.loads(out.read_text())
    assert list(payload["distributions"]) == ["forward50", "uniform", "backward50"]
    for m in payload["distributions"].values():
        assert len(m["weights"]) == 3 and sum(m["weights"]) == pytest.approx(1, abs=1e-3)
        assert 1 <= m["epochs_run"] <= 2 and 0 <= m["top1"] <= 1 and 0 <= m["top1_average"] <= 1
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert csv["distribution"].tolist() == ["forward50", "uniform", "backward50"]
    assert json.loads(csv["weights"][0]) == payload["distributions"]["forward50"]["weights"]
    with Image.open(out.with_suffix(".png")) as img:
        assert img.size[0] > 100 and img.size[1] > 100


def test_test_train_py_online_and_bad_input(trained, tmp_path, capfd):
    _, ckpt = trained
    out = tmp_path / "on.json"
    code, _, err = run_entry("test_train.py", ["-c", ROOT / "configs" / "test_time_cifar100_tade.json", "-r", ckpt,
                                               "--out", out, "--distributions", "uniform", "--online"], capfd)
    assert code == 0, err
    row = json.loads(out.read_text())["distributions"]["uniform"]
    assert row["epochs_run"] == 1 and 0 <= row["top1_online"] <= 1

    def error(*argv):
        code, _, err = run_entry("test_train.py", argv, capfd)
        return code, err

    tt_config = ROOT / "configs" / "test_time_cifar100_tade.json"
    one_line_error(*error("-c", ROOT / "configs" / "config_cifar100_ir100_tade.json", "-r", ckpt), "test_time")
    one_line_error(*error("-c", tt_config, "-r", ckpt, "--distributions", "forward3"), "forward3")
    one_line_error(*error("-c", tt_config, "-r", tmp_path / "missing.pth"), "missing.pth")
    bad = json.loads(tt_config.read_text())
    bad["test_time"]["args"]["augmentation"] = {"blur": 0.3}
    bad_path = write_config(tmp_path / "bad_tt.json", bad)
    one_line_error(*error("-c", bad_path, "-r", ckpt, "--distributions", "uniform"),
                   "bad_tt.json", "test_time.args", "augmentation", "blur_p")
