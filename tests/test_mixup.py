"""Mixup as a training option (trainer.mixup, docs/methods.md#balpoe): config errors, seeded draws, convex
combinations with the drawn lam, lam = 1 is exactly no mixup, the trainer's step, and a mixup run
on Digits-LT stopped after one epoch and resumed ends with the uninterrupted run's weights (in-process;
the kill itself is proven end to end in tests/test_fault_tolerance.py)."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from data_loader.digits_lt import DigitsLTDataLoader
from model.loss import DiverseExpertLoss, LogitAdjustedLoss
from model.resnet_cifar import ExpertResNetCifar
from tests.helpers import ROOT, assert_same_state, run_entry, write_config
from trainer import Trainer
from trainer.mixup import Mixup, MixupPlan, mix_inputs, mixed_loss
from trainer.train_step import forward_loss
from utils.errors import UserError
from utils.parse_config import ConfigParser
from utils.runtime import Runtime


def cfg(mixup, **extra):
    trainer = {"epochs": 1, "tensorboard": False, "monitor": "off"}
    if mixup != "absent":
        trainer["mixup"] = mixup
    return ConfigParser({"trainer": trainer, "seed": 3, **extra}, source="c.json")


# -- config ---------------------------------------------------------------------------------------
def test_config_off_and_on():
    assert Mixup.from_config(cfg("absent")) is None and Mixup.from_config(cfg(None)) is None
    m = Mixup.from_config(cfg({"alpha": 0.8}))
    assert m.alpha == 0.8 and m.seed == 3


@pytest.mark.parametrize("alpha", [0, -0.5, "0.8", True, float("inf"), None])
def test_bad_alpha_names_the_key(alpha):
    with pytest.raises(UserError, match=r"c.json: trainer.mixup.alpha is .*expected a number > 0"):
        Mixup.from_config(cfg({"alpha": alpha}))


@pytest.mark.parametrize("section", [0.8, {}, {"alpha": 0.8, "beta": 1}, [0.8]])
def test_bad_section_names_the_key(section):
    with pytest.raises(UserError, match=r"c.json: trainer.mixup is .*alpha"):
        Mixup.from_config(cfg(section))


# -- draws ----------------------------------------------------------------------------------------
def test_draws_depend_only_on_seed_and_epoch():
    def draws(seed, epoch):
        plan = Mixup(0.8, seed).epoch_plan(epoch, steps=5)
        return [tuple(t.clone() for t in plan.draw(s, 16 if s < 4 else 7)) for s in range(5)]

    torch.manual_seed(0)
    np.random.seed(0)
    a = draws(1, 2)
    torch.manual_seed(123)  # the global RNGs (augmentation, data order) play no part
    np.random.seed(123)
    torch.rand(10)
    b = draws(1, 2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    c = draws(1, 3)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c))
    for lam, perm in a:
        assert lam.dim() == 0 and lam.dtype == torch.float32 and 0 <= lam.item() <= 1
        assert sorted(perm.tolist()) == list(range(len(perm)))
    assert len(a[-1][1]) == 7  # the shorter last batch gets a permutation of its own size


def test_lam_follows_beta():
    plan = MixupPlan(0.4, seed=7, steps=20_000)
    lams = torch.stack([plan.draw(s, 4)[0] for s in range(0, 20_000)]).double()
    assert lams.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lams.var().item() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), rel=0.05)  # Var Beta(a, a) = 1/(4(2a+1))


def test_alpha_to_zero_gives_lam_zero_or_one():
    """Beta(alpha, alpha) -> Bernoulli(1/2) on {0, 1} as alpha -> 0: every batch is unmixed (lam 1)
    or the permuted batch with its permuted labels (lam 0)."""
    plan = MixupPlan(1e-6, seed=0, steps=200)
    lams = torch.stack([plan.draw(s, 8)[0] for s in range(200)])
    assert (torch.minimum(lams, 1 - lams) < 1e-3).all()
    assert 50 < (lams > 0.5).sum() < 150


def test_step_errors():
    plan = MixupPlan(1.0, seed=0, steps=2)
    plan.draw(0, 8)
    with pytest.raises(IndexError):
        plan.draw(2, 8)
    with pytest.raises(ValueError, match="batch of 9"):
        plan.draw(1, 9)
    with pytest.raises(ValueError, match="alpha"):
        Mixup(0)


# -- mixing -----------------------------------------------------------------------------------------
def test_mixed_batch_is_the_convex_combination_with_the_drawn_lam():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    lam, perm = Mixup(0.8, 1).epoch_plan(0, 3).draw(1, 16)
    assert 0 < lam.item() < 1 and not torch.equal(perm, torch.arange(16))
    mixed = mix_inputs(x, lam, perm)
    torch.testing.assert_close(mixed, lam.item() * x + (1 - lam.item()) * x[perm], rtol=1e-6, atol=1e-6)
    lo, hi = torch.minimum(x, x[perm]), torch.maximum(x, x[perm])
    assert ((mixed >= lo - 1e-6) & (mixed <= hi + 1e-6)).all()
    assert mixed.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("make_loss", [lambda c: DiverseExpertLoss(c), lambda c: LogitAdjustedLoss(c, [0, 1, 2])])
def test_mixed_loss_is_lam_weighted_for_any_loss(make_loss):
    counts = [40, 20, 10, 5]
    crit = make_loss(counts)
    torch.manual_seed(0)
    outputs = {"logits": torch.randn(6, 3, 4)}
    y = torch.randint(0, 4, (6,))
    perm = torch.randperm(6)
    lam = torch.tensor(0.3)
    want = 0.3 * crit(outputs, y).item() + 0.7 * crit(outputs, y[perm]).item()
    assert mixed_loss(crit, outputs, y, lam, perm).item() == pytest.approx(want, rel=1e-6)


def tiny_net():
    torch.manual_seed(0)
    return ExpertResNetCifar((1, 1, 1), num_classes=10, num_experts=3, reduce_dimension=True)


def test_lam_one_reproduces_the_unmixed_loss_and_step_exactly(tmp_path):
    """One trainer step with lam = 1 (any perm) leaves bit for bit the weights of a step without mixup."""
    data = DigitsLTDataLoader(img_max=12, imb_factor=0.5, batch_size=16)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
    mix = (torch.tensor(1.0), torch.randperm(16, generator=g))
    results = []
    for use_mix in (False, True):
        net = tiny_net()
        crit = LogitAdjustedLoss(data.cls_num_list, tau_list="limits")
        config = ConfigParser({"trainer": {"epochs": 1, "tensorboard": False, "monitor": "off",
                                           "mixup": {"alpha": 0.8}}, "seed": 0}, source="t")
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        trainer = Trainer(net, crit, opt, None, config, Runtime(torch.device("cpu")), data)
        results.append((trainer._eager_step(x, y, mix if use_mix else None), copy.deepcopy(net.state_dict())))
    (out_a, loss_a), weights_a = results[0]
    (out_b, loss_b), weights_b = results[1]
    assert torch.equal(loss_a, loss_b) and torch.equal(out_a, out_b)
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_lam_zero_is_the_permuted_batch():
    net, crit = tiny_net().eval(), LogitAdjustedLoss([5] * 10, [0, 1, 2])
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    perm = torch.randperm(8)
    _, mixed = forward_loss(net, crit, x, y, (torch.tensor(0.0), perm))
    _, plain = forward_loss(net, crit, x[perm], y[perm])
    assert mixed.item() == pytest.approx(plain.item(), rel=1e-6)


def test_trainer_epoch_with_mixup_differs_from_without(tmp_path):
    data = DigitsLTDataLoader(img_max=12, imb_factor=0.5, batch_size=16)
    losses = {}
    for mixup in (None, {"alpha": 0.8}):
        net = tiny_net()
        config = ConfigParser({"trainer": {"epochs": 1, "tensorboard": False, "monitor": "off", "mixup": mixup},
                               "seed": 0}, source="t")
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        trainer = Trainer(net, LogitAdjustedLoss(data.cls_num_list), opt, None, config,
                          Runtime(torch.device("cpu")), data)
        assert (trainer.mixup is None) == (mixup is None)
        losses[mixup is None] = trainer._train_epoch(0)["loss"]
    assert all(math.isfinite(v) for v in losses.values()) and losses[True] != losses[False]


# -- a run stopped and resumed -------------------------------------------------------------------------
def digits_mixup_config(save_dir, epochs=3):
    config = json.loads((ROOT / "configs" / "config_digits_lt_tade.json").read_text())
    config["name"] = "mix"
    config["data_loader"]["args"].update(img_max=16, imb_factor=0.25, batch_size=16, num_workers=0)
    config["loss"] = {"type": "LogitAdjustedLoss", "args": {"tau_list": "limits"}}
    config["lr_scheduler"]["args"].update(step1=2, step2=3, warmup_epoch=1)
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), save_period=1, tensorboard=False,
                             mixup={"alpha": 0.8})
    return config


def test_mixup_run_stopped_and_resumed_equals_uninterrupted(tmp_path, capfd):
    def train(*argv):
        code, _, err = run_entry("train.py", [*argv, "-d", "cpu"], capfd)
        assert code == 0, err

    cfg_path = write_config(tmp_path / "c.json", digits_mixup_config(tmp_path / "saved"))
    train("-c", cfg_path, "--run_id", "full", "--seed", "5")
    run = tmp_path / "saved" / "mix" / "half"
    train("-c", cfg_path, "--run_id", "half", "--seed", "5", "--epochs", "1")
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    train("-r", run / "last.pth", "--epochs", "3")
    reference = tmp_path / "saved" / "mix" / "full"
    assert_same_state(reference / "last.pth", run / "last.pth")
    saved = torch.load(reference / "last.pth", weights_only=True)
    assert saved["config"]["trainer"]["mixup"] == {"alpha": 0.8}
    # mixup was on: the run differs from the same run without it (epoch 1 checkpoints)
    plain_cfg = digits_mixup_config(tmp_path / "saved", epochs=1)
    plain_cfg["trainer"]["mixup"] = None
    train("-c", write_config(tmp_path / "p.json", plain_cfg), "--run_id", "plain", "--seed", "5")
    a = torch.load(reference / "checkpoint-epoch1.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "saved" / "mix" / "plain" / "last.pth", weights_only=True)["state_dict"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


# -- CUDA graphs: lam and perm as static tensors ------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by bench/gpu_checks.sh)")
def test_graph_replays_with_mixup_equal_eager_steps():
    from trainer.cuda_graph import GraphedTrainStep
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    counts = [40, 20, 10, 5, 3]
    torch.manual_seed(0)
    net = ExpertResNetCifar((1, 1, 1), num_classes=5, num_experts=3).cuda().to(memory_format=torch.channels_last)
    models = {"eager": net, "graph": copy.deepcopy(net)}
    crits = {k: LogitAdjustedLoss(counts, [0, 1, 2]).cuda() for k in models}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True) for k, m in models.items()}

    def eager_step(name):
        def step(x, y, mix=None):
            outputs, loss = forward_loss(models[name], crits[name], x, y, mix)
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
            return outputs["output"].detach(), loss.detach()
        return step

    eager = eager_step("eager")
    graphed = GraphedTrainStep(models["graph"], crits["graph"], opts["graph"], eager_step("graph"))
    g = torch.Generator().manual_seed(1)
    sizes = (16, 16, 16, 16, 16, 7)
    for epoch in range(2):
        plan = Mixup(0.8, 1).epoch_plan(epoch, len(sizes), "cuda")
        for step, size in enumerate(sizes):
            x = torch.randn(size, 3, 32, 32, generator=g).cuda().contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 5, (size,), generator=g).cuda()
            mix = plan.draw(step, size)
            out_e, loss_e = eager(x, y, mix)
            out_g, loss_g = graphed(x, y, mix)
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out_g, out_e, rtol=1e-3, atol=1e-3)
    assert graphed.captures == 1  # lam and perm change every step without a new capture
    for (name, a), b in zip(models["eager"].state_dict().items(), models["graph"].state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5, msg=name)
