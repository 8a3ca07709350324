"""BalPoE's logit-adjusted expert loss (docs/methods.md#balpoe): the formula, the "limits" taus, the checks."""
import pytest
import torch
import torch.nn.functional as F

import model.loss as losses
from utils.long_tail import img_num_per_cls
from model.loss.logit_adjusted_loss import LogitAdjustedLoss, evenly_spaced_taus
from utils.errors import UserError
from utils.parse_config import ConfigParser


def formula(logits, target, counts, taus):
    """docs/methods.md#balpoe written out: mean over experts of CE(z_k + tau_k log(p + 1e-9), y), in float64."""
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    z = logits.double()
    per_expert = [F.cross_entropy(z[:, k] + tau * torch.log(prior + 1e-9), target) for k, tau in enumerate(taus)]
    return sum(per_expert) / len(per_expert)


@pytest.mark.parametrize("taus", [[0, 1, 2], [0, 1.25, 2.5], [-1, 1, 3], [1], [0.0, 0.5, 1.0, 1.5, 2.0]])
def test_loss_equals_formula(taus):
    counts = img_num_per_cls(500, 100, 0.01)
    torch.manual_seed(0)
    logits = torch.randn(16, len(taus), 100) * 5
    target = torch.randint(0, 100, (16,))
    loss = LogitAdjustedLoss(counts, tau_list=taus)({"logits": logits}, target)
    assert loss.item() == pytest.approx(formula(logits, target, counts, taus).item(), rel=1e-5)


def test_tau_zero_is_cross_entropy_and_tau_one_balanced_softmax():
    counts = [50, 10, 2]
    torch.manual_seed(1)
    logits, target = torch.randn(8, 1, 3), torch.randint(0, 3, (8,))
    ce = losses.CrossEntropyLoss(counts)({"logits": logits}, target)
    bs = losses.BalancedSoftmaxLoss(counts)({"logits": logits}, target)
    tau0 = LogitAdjustedLoss(counts, tau_list=[0])({"logits": logits}, target)
    tau1 = LogitAdjustedLoss(counts, tau_list=[1])({"logits": logits}, target)
    assert tau0.item() == pytest.approx(ce.item(), rel=1e-6) and tau1.item() == pytest.approx(bs.item(), rel=1e-6)


def test_mean_not_sum_over_experts():
    counts = [50, 10, 2]
    logits, target = torch.randn(4, 1, 3), torch.tensor([0, 1, 2, 0])
    one = LogitAdjustedLoss(counts, tau_list=[1])({"logits": logits}, target)
    three = LogitAdjustedLoss(counts, tau_list=[1, 1, 1])({"logits": logits.repeat(1, 3, 1)}, target)
    assert three.item() == pytest.approx(one.item(), rel=1e-6)


@pytest.mark.parametrize("m, expected", [(1, [1.0]), (2, [0.0, 2.0]), (3, [0.0, 1.0, 2.0]),
                                         (5, [0.0, 0.5, 1.0, 1.5, 2.0])])
def test_limits_spacing(m, expected):
    taus = evenly_spaced_taus(m)
    assert taus == pytest.approx(expected)
    assert sum(taus) / m == pytest.approx(1.0)


@pytest.mark.parametrize("m", [1, 2, 4, 7])
def test_limits_resolved_from_the_number_of_experts(m):
    loss = LogitAdjustedLoss([30, 20, 10], tau_list="limits")
    assert loss.tau_list is None
    loss.check_experts(m, "c.json")
    assert loss.tau_list == pytest.approx(evenly_spaced_taus(m)) and tuple(loss.offsets.shape) == (m, 3)
    # resolved at the first forward pass too, when nothing called check_experts
    lazy = LogitAdjustedLoss([30, 20, 10], tau_list="limits")
    lazy({"logits": torch.zeros(2, m, 3)}, torch.tensor([0, 2]))
    assert lazy.tau_list == loss.tau_list


@pytest.mark.parametrize("m, low, high, expected", [
    (3, -1.0, 3.0, [-1.0, 1.0, 3.0]), (3, 0.0, 2.5, [0.0, 1.25, 2.5]), (1, -1.0, 3.0, [1.0]),
    (5, 0.0, 2.0, [0.0, 0.5, 1.0, 1.5, 2.0])])
def test_limits_between_tau_min_and_tau_max(m, low, high, expected):
    """BalPoE's bounds of "limits" (its iNaturalist taus are -1..3): from loss.args, through the config."""
    cfg = ConfigParser({"loss": {"type": "LogitAdjustedLoss",
                                 "args": {"tau_list": "limits", "tau_min": low, "tau_max": high}}}, source="c.json")
    loss = cfg.init_obj("loss", losses, cls_num_list=[30, 20, 10])
    loss.check_experts(m, "c.json")
    assert loss.tau_list == pytest.approx(expected) and loss.tau_bounds == (low, high)
    # one bound alone keeps the other's default; neither gives today's [0, 2]
    assert LogitAdjustedLoss([3, 1], tau_list="limits", tau_max=4).resolve(3) == pytest.approx([0.0, 2.0, 4.0])
    assert LogitAdjustedLoss([3, 1], tau_list="limits").tau_bounds == (0.0, 2.0)


@pytest.mark.parametrize("args, message", [
    ({"tau_list": [0, 1, 2], "tau_min": 0}, "apply only to tau_list \"limits\""),
    ({"tau_list": "limits", "tau_min": "low"}, "tau_min must be a finite number"),
    ({"tau_list": "limits", "tau_max": float("inf")}, "tau_max must be a finite number"),
    ({"tau_list": "limits", "tau_min": True}, "tau_min must be a finite number"),
    ({"tau_list": "limits", "tau_min": 3, "tau_max": 1}, "must not exceed tau_max")])
def test_bad_tau_bounds_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        LogitAdjustedLoss([5, 3, 1], **args)
    cfg = ConfigParser({"loss": {"type": "LogitAdjustedLoss", "args": args}}, source="c.json")
    with pytest.raises(UserError, match="c.json.*tau_"):
        cfg.init_obj("loss", losses, cls_num_list=[5, 3, 1])


def test_offsets_cifar100_ir100():
    """tau_k log p: between class 0 (p max) and class 99 (100x rarer) expert k's offset is tau_k ln 100."""
    loss = LogitAdjustedLoss(img_num_per_cls(500, 100, 0.01), tau_list=[0, 1, 2])
    gap = (loss.offsets[:, 0] - loss.offsets[:, 99]).tolist()
    assert gap == pytest.approx([0.0, 4.6052, 9.2103], abs=1e-4)


def test_wrong_number_of_taus_is_a_user_error_naming_the_key():
    loss = LogitAdjustedLoss([5, 3, 1], tau_list=[0, 1, 2])
    loss.check_experts(3, "c.json")
    with pytest.raises(UserError, match=r"c.json.*loss.args.tau_list has 3 value.*num_experts is 4"):
        loss.check_experts(4, "c.json")
    with pytest.raises(ValueError, match="tau_list"):
        loss({"logits": torch.zeros(2, 2, 3)}, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("bad", [[0, "one", 2], "fast", 3, [], [0, True], [0, float("nan")]])
def test_non_numeric_taus_are_refused(bad):
    with pytest.raises(ValueError, match="tau_list"):
        LogitAdjustedLoss([5, 3, 1], tau_list=bad)
    cfg = ConfigParser({"loss": {"type": "LogitAdjustedLoss", "args": {"tau_list": bad}}}, source="c.json")
    with pytest.raises(UserError, match="c.json.*tau_list"):  # through the config: one line
        cfg.init_obj("loss", losses, cls_num_list=[5, 3, 1])


def test_found_by_config_and_moves_with_the_module():
    cfg = ConfigParser({"loss": {"type": "LogitAdjustedLoss", "args": {"tau_list": [0, 1, 2]}}}, source="c.json")
    loss = cfg.init_obj("loss", losses, cls_num_list=[5, 3, 1]).to(torch.float64)
    assert loss.tau_list == [0.0, 1.0, 2.0] and loss.required_experts is None
    assert loss.offsets.dtype == torch.float64 and loss.schedule_state() is None


def test_gradient_drives_each_expert_to_its_prior():
    """At the optimum expert k's softmax(z_k) is p^(1 - tau_k), normalised (docs/methods.md#balpoe): fit free
    logits (one vector per expert) to labels drawn from p and compare."""
    counts = [60, 30, 10]
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    target = torch.tensor(sum(([c] * n for c, n in enumerate(counts)), []))
    taus = [0.0, 1.0, 2.0]
    loss_fn = LogitAdjustedLoss(counts, tau_list=taus).double()
    z = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([z], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = loss_fn({"logits": z.expand(len(target), 3, 3)}, target)
        loss.backward()
        return loss

    opt.step(closure)
    for k, tau in enumerate(taus):
        want = prior ** (1 - tau)
        torch.testing.assert_close(torch.softmax(z[0, k].detach(), 0), want / want.sum(), atol=1e-5, rtol=1e-5)
