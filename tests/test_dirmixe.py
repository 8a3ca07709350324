"""DirMixE's loss (docs/methods.md#dirmixe): the inverse anchor, the pool's size and reshuffle, each
draw's loss and the semi-variance against direct computations of its authors' formula, the gate's
epochs, the large-concentration limit (BalPoE's logit adjustment with tau = power), the bad inputs,
and a Digits-LT run resumed from its checkpoint ending with the uninterrupted run's weights."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.studies.dirmixe_formula import authors_formula
from model.loss import DirMixELoss, LogitAdjustedLoss
from model.loss.dirmixe_loss import anchor_priors, penalty_active, rank_mirrored_prior
from tests.helpers import ROOT, one_line_error, run_entry, write_config
from utils.errors import UserError
from utils.long_tail import img_num_per_cls
from utils.parse_config import ConfigParser

COUNTS = [500, 300, 180, 100, 60, 36, 22, 13, 8, 5]


def ready(counts=COUNTS, epochs=10, steps=4, seed=1, epoch=0, **args):
    loss = DirMixELoss(counts, **args)
    loss.set_run(epochs, steps, seed)
    loss.set_epoch(epoch)
    return loss


def batch(b=16, c=len(COUNTS), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, c, generator=g), torch.randint(0, c, (b,), generator=g)


# -- anchors --------------------------------------------------------------------------------------
def test_inverse_anchor_of_a_head_to_tail_prior_is_the_prior_reversed_ties_included():
    counts = img_num_per_cls(500, 100, 0.01)  # CIFAR-100-LT IR100: equal counts in the tail
    assert len(set(counts)) < len(counts)
    prior = np.asarray(counts, float) / sum(counts)
    np.testing.assert_array_equal(rank_mirrored_prior(counts), prior[::-1])


def test_inverse_anchor_mirrors_ranks_of_unsorted_counts():
    counts = [5, 50, 20, 7, 100]  # ranks (largest first): class 4, 1, 2, 3, 0
    expected = np.array([100, 7, 20, 50, 5], float)
    np.testing.assert_allclose(rank_mirrored_prior(counts), expected / expected.sum(), rtol=0, atol=1e-15)
    # its authors' ImageNet construction (the sorted counts, descending rank by rank), distinct counts
    order = np.argsort(counts)[::-1]
    theirs = np.zeros(5)
    theirs[order] = np.sort(counts)
    np.testing.assert_allclose(rank_mirrored_prior(counts), theirs / theirs.sum(), rtol=0, atol=1e-15)
    a = anchor_priors(counts)
    np.testing.assert_allclose(a.sum(1), 1.0)
    np.testing.assert_allclose(a[1], 0.2)


# -- the pool -------------------------------------------------------------------------------------
def test_pool_size_experts_and_every_draw_once_per_epoch_in_a_new_order():
    loss = ready(steps=5, trials=7, alpha_sum=50)
    assert tuple(loss.pool_weights.shape) == (35, 10) and tuple(loss.pool_experts.shape) == (35,)
    torch.testing.assert_close(loss.pool_weights.double().sum(1), torch.ones(35, dtype=torch.float64))
    assert set(loss.pool_experts.tolist()) == {0, 1, 2}
    pool = loss.pool_weights.clone()
    orders = []
    for epoch in range(2):
        loss.set_epoch(epoch)
        rows = []
        for _ in range(5):
            w, k = loss.draws()
            idx = [int(torch.nonzero((pool == r).all(1))[0]) for r in w]
            assert torch.equal(k, loss.pool_experts[idx])
            rows += idx
        assert sorted(rows) == list(range(35))  # each draw once per epoch
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled
    assert torch.equal(loss.pool_weights, pool)  # drawn once, not again
    loss.set_run(10, 5, 1)
    assert torch.equal(loss.pool_weights, pool)  # the same run: the same pool
    draws = loss.pool_experts.bincount(minlength=3)
    assert draws.sum() == 35 and draws.min() > 0


def test_draws_center_on_the_anchor_of_their_expert():
    loss = ready(steps=200, trials=3, alpha_sum=10000)
    anchors = torch.tensor(anchor_priors(COUNTS), dtype=torch.float32)
    for k in range(3):
        mean = loss.pool_weights[loss.pool_experts == k].mean(0)
        torch.testing.assert_close(mean, anchors[k], rtol=0.05, atol=2e-4)


def test_the_pool_follows_the_seed_and_the_seed_follows_the_checkpoint():
    a, b = ready(seed=1), ready(seed=2)
    assert not torch.equal(a.pool_weights, b.pool_weights)
    state = a.state_dict()
    assert state["_extra_state"] == {"seed": 1, "steps_per_epoch": 4, "trials": 60}
    resumed = DirMixELoss(COUNTS)
    resumed.load_state_dict(state)
    resumed.set_run(10, 4, 2)  # the run's seed loses against the checkpoint's
    resumed.set_epoch(0)
    assert torch.equal(resumed.pool_weights, a.pool_weights)
    assert torch.equal(resumed.draws()[0], a.draws()[0])


# -- one step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch", [0, 9])
def test_loss_equals_its_authors_formula(epoch):
    loss = ready(epochs=10, epoch=epoch, power=1.3, lambda_var=15)
    assert loss.penalty == (epoch == 9)
    logits, target = batch()
    slot_weights, slot_experts = loss.draws()
    loss.set_epoch(epoch)  # the counter back to the first slot
    value = loss({"logits": logits, "output": logits.mean(1)}, target)
    per_draw, expected = authors_formula(logits, target, slot_weights, slot_experts, COUNTS, 1.3, 15, epoch == 9)
    torch.testing.assert_close(loss.per_draw_losses(logits, target, slot_weights, slot_experts), per_draw,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_gradient_of_the_loss_matches_its_authors_formula():
    loss = ready(epoch=9, lambda_var=5)
    logits, target = batch()
    w, k = loss.draws()
    loss.set_epoch(9)
    a = logits.clone().requires_grad_()
    loss({"logits": a}, target).backward()
    b = logits.clone().requires_grad_()
    authors_formula(b, target, w, k, COUNTS, 1.3, 5, True)[1].backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_upper_semivariance_against_numpy(seed):
    x = np.random.default_rng(seed).gamma(2.0, size=60 if seed else 2)
    m = x.mean()
    above = x[x > m]
    expected = ((above - m) ** 2).sum() / max(above.size - 1, 1)
    got = DirMixELoss.upper_semivariance(torch.tensor(x))
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_the_gate_counts_as_its_authors_trainer():
    def on(epochs):
        return [e + 1 for e in range(epochs) if penalty_active(e, epochs)]  # 1-based
    assert on(200) == list(range(161, 201))
    assert on(30) == list(range(25, 31))
    assert on(180) == list(range(145, 181))
    assert on(9) == [9]  # int(0.8 * 10) = 8: without the +1 it would be 8 and 9
    assert on(4) == []  # int(0.8 * 5) = 4: never
    loss = ready(epochs=30, epoch=23)
    assert not loss.penalty and loss.schedule_state()[0] is False
    loss.set_epoch(24)
    assert loss.penalty and loss.schedule_state()[0] is True


def test_large_concentration_uniform_expert_is_logit_adjustment_with_tau_power():
    counts, power = COUNTS, 1.6
    loss = ready(counts, alpha_sum=1e12, trials=30, power=power)
    logits, target = batch(seed=3)
    w, k = loss.draws()
    per_draw = loss.per_draw_losses(logits, target, w, k)
    uniform = k == 1
    assert uniform.sum() > 0
    adjusted = LogitAdjustedLoss(counts, tau_list=[power])({"logits": logits[:, 1:2]}, target)
    torch.testing.assert_close(per_draw[uniform], adjusted.expand(int(uniform.sum())), rtol=0, atol=2e-5)
    # the forward expert (w = p): plain cross-entropy
    forward = k == 0
    torch.testing.assert_close(per_draw[forward], F.cross_entropy(logits[:, 0], target).expand(int(forward.sum())),
                               rtol=0, atol=2e-5)


def test_a_step_before_set_run_says_what_is_missing():
    logits, target = batch()
    with pytest.raises(RuntimeError, match="set_run"):
        DirMixELoss(COUNTS)({"logits": logits}, target)


# -- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,fragment", [
    ({"power": 0}, "power must be a positive number, got 0"),
    ({"lambda_var": -1}, "lambda_var must be a positive number, got -1"),
    ({"alpha_sum": float("nan")}, "alpha_sum"),
    ({"trials": 1.5}, "trials must be a positive integer, got 1.5"),
    ({"trials": 0}, "trials must be a positive integer"),
    ({"power": True}, "power must be a positive number"),
])
def test_bad_arguments_are_one_line_config_errors(args, fragment):
    import model.loss as losses
    config = ConfigParser({"loss": {"type": "DirMixELoss", "args": args}}, source="c.json")
    with pytest.raises(UserError) as e:
        config.init_obj("loss", losses, cls_num_list=COUNTS)
    assert "c.json" in str(e.value) and fragment in str(e.value) and "\n" not in str(e.value)


def test_a_prior_with_an_empty_class_is_refused():
    import model.loss as losses
    config = ConfigParser({"loss": {"type": "DirMixELoss", "args": {}}}, source="c.json")
    with pytest.raises(UserError, match=r"c.json: loss.args rejected by DirMixELoss: .*class 2 has 0 images"):
        config.init_obj("loss", losses, cls_num_list=[10, 5, 0, 2])


def test_other_than_three_experts_is_refused():
    with pytest.raises(UserError, match="c.json: loss.type DirMixELoss needs arch.args.num_experts 3, got 2"):
        DirMixELoss(COUNTS).check_experts(2, "c.json")


# -- train.py: bad input, and resume ----------------------------------------------------------------
def digits_config(save_dir, epochs=5):
    config = json.loads((ROOT / "configs" / "config_digits_lt_tade.json").read_text())
    config["name"] = "dirmixe"
    config["data_loader"]["args"].update(img_max=16, imb_factor=0.25, batch_size=16, num_workers=0)
    config["loss"] = {"type": "DirMixELoss", "args": {"power": 1.3, "lambda_var": 5, "trials": 8}}
    config["lr_scheduler"]["args"].update(step1=3, step2=4, warmup_epoch=1)
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), save_period=1, tensorboard=False,
                             monitor="off", valid_period=0)
    return config


@pytest.mark.parametrize("option,fragment", [
    ("loss.args.alpha_sum=-3", "alpha_sum must be a positive number, got -3"),
    ("arch.args.num_experts=2", "needs arch.args.num_experts 3, got 2"),
])
def test_train_py_refuses_bad_input_in_one_line(tmp_path, capfd, option, fragment):
    cfg = write_config(tmp_path / "c.json", digits_config(tmp_path / "saved"))
    code, _, err = run_entry("train.py", ["-c", cfg, "-d", "cpu", "--set", option], capfd)
    one_line_error(code, err, "c.json", fragment)
    assert not (tmp_path / "saved").exists()


def test_resumed_run_equals_the_uninterrupted_run(tmp_path, capfd):
    """Five epochs (the penalty on in the fifth) against three, then resumed from the epoch-3
    checkpoint in another folder: the same weights, bit for bit; the pool's seed is in the checkpoint."""
    cfg = write_config(tmp_path / "c.json", digits_config(tmp_path / "saved"))
    code, _, err = run_entry("train.py", ["-c", cfg, "-d", "cpu", "--run_id", "full", "--seed", "5"], capfd)
    assert code == 0, err[-3000:]
    full = tmp_path / "saved" / "dirmixe" / "full"
    third = torch.load(full / "checkpoint-epoch3.pth", weights_only=True)
    assert third["loss"]["_extra_state"]["seed"] == 5 and third["loss"]["_extra_state"]["trials"] == 8
    code, _, err = run_entry("train.py", ["-r", full / "checkpoint-epoch3.pth", "-d", "cpu", "--run_id", "resumed"],
                             capfd)
    assert code == 0, err[-3000:]
    a = torch.load(full / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "saved" / "dirmixe" / "resumed" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 5
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["history"][-1]["loss"] == b["history"][-1]["loss"]
    assert a["loss"] == b["loss"]


# -- CUDA graphs: the draws are device tensors read through a device step counter -----------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by bench/gpu_checks.sh)")
def test_graph_replays_equal_eager_steps_across_epochs_and_the_gate():
    import copy
    from model.resnet_cifar import ExpertResNetCifar
    from tests.test_cuda_graph import _eager_step
    from trainer.cuda_graph import GraphedTrainStep
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    counts = [40, 20, 10, 5, 3]
    torch.manual_seed(0)
    net = ExpertResNetCifar((1, 1, 1), num_classes=5, num_experts=3).cuda()
    models = {"eager": net, "graph": copy.deepcopy(net)}
    crits = {k: DirMixELoss(counts, trials=6, lambda_var=5).cuda() for k in models}
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for k, m in models.items()}
    eager = _eager_step(models["eager"], crits["eager"], opts["eager"], None)
    graphed = GraphedTrainStep(models["graph"], crits["graph"], opts["graph"],
                               _eager_step(models["graph"], crits["graph"], opts["graph"], None))
    g = torch.Generator().manual_seed(1)
    sizes = (16, 16, 16, 16, 16, 7)
    for epoch in range(5):  # the penalty is on in the fifth epoch: a new capture
        for crit in crits.values():
            crit.set_run(5, len(sizes), 3)
            crit.set_epoch(epoch)
        for size in sizes:
            x = torch.randn(size, 3, 32, 32, generator=g).cuda()
            y = torch.randint(0, 5, (size,), generator=g).cuda()
            out_e, loss_e = eager(x, y)
            out_g, loss_g = graphed(x, y)
            torch.testing.assert_close(loss_g, loss_e, rtol=1e-4, atol=1e-5)
        assert int(crits["graph"].step) == int(crits["eager"].step) == len(sizes)
    assert graphed.captures == 2
    for (name, a), b in zip(models["eager"].state_dict().items(), models["graph"].state_dict().values()):
        torch.testing.assert_close(b.float(), a.float(), rtol=1e-4, atol=1e-5, msg=name)


# -- the shipped configs ------------------------------------------------------------------------------
CONFIGS = {  # name: (classes, power, lambda_var, alpha_sum, weight decay, lr, epochs, reduced)
    "cifar100_ir100": (100, 1.3, 5, 10000, 1e-3, 0.1, 200, True),
    "cifar100_ir50": (100, 1.3, 5, 10000, 1e-3, 0.1, 200, True),
    "cifar100_ir10": (100, 1.3, 5, 10000, 1e-3, 0.1, 200, True),
    "cifar10_ir100": (10, 1.3, 15, 10000, 5e-4, 0.1, 200, True),
    "imagenet_lt_resnext50": (1000, 1.6, 1.0, 10000, 7e-4, 0.025, 180, True),
    "inat2018_resnet50": (8142, 1.3, 1.0, 100000, 2e-4, 0.2, 100, True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_configs_carry_its_authors_constants(name):
    classes, power, lambda_var, alpha_sum, wd, lr, epochs, reduced = CONFIGS[name]
    config = json.loads((ROOT / "configs" / f"config_{name}_dirmixe.json").read_text())
    assert config["loss"] == {"type": "DirMixELoss", "args": {"power": power, "lambda_var": lambda_var, "trials": 60,
                                                                "alpha_sum": alpha_sum}}
    assert config["optimizer"]["args"]["weight_decay"] == wd and config["optimizer"]["args"]["lr"] == lr
    assert config["trainer"]["epochs"] == epochs
    assert config["arch"]["args"]["num_classes"] == classes and config["arch"]["args"]["num_experts"] == 3
    assert config["arch"]["args"]["reduce_dimension"] is reduced
    if name.startswith("imagenet"):
        assert config["lr_scheduler"] == {"type": "CosineAnnealingLR", "args": {"T_max": 180, "eta_min": 0}}
    else:
        assert config["lr_scheduler"]["args"]["warmup_epoch"] == 5


def test_the_inaturalist_config_builds_its_anchors_and_steps():
    """Its authors' code raises on its own iNaturalist config (no inverse anchor for that data set);
    here the rank-mirrored anchor serves every data set. 8,142 classes with many equal counts."""
    import model.loss as losses
    config = ConfigParser(json.loads((ROOT / "configs" / "config_inat2018_resnet50_dirmixe.json").read_text()),
                          source="inat.json")
    counts = img_num_per_cls(1000, 8142, 0.002)
    loss = config.init_obj("loss", losses, cls_num_list=counts)
    loss.set_run(100, 2, 1)
    loss.set_epoch(99)
    assert tuple(loss.pool_weights.shape) == (120, 8142) and loss.penalty
    inverse = torch.tensor(loss.anchors[2])
    torch.testing.assert_close(inverse, loss.prior.double().flip(0), rtol=1e-6, atol=0)
    logits = torch.randn(4, 3, 8142, requires_grad=True)
    value = loss({"logits": logits}, torch.randint(0, 8142, (4,)))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
