import math

import pytest
import torch
import torch.nn.functional as F

from utils.long_tail import img_num_per_cls
from model.loss import BalancedSoftmaxLoss, CrossEntropyLoss, DiverseExpertLoss


def formula(logits, target, counts, tau):
    """docs/methods.md#tade-loss, written out independently of the implementation."""
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    inv = torch.tensor(list(reversed(sorted(counts))), dtype=torch.float64)
    # CIFAR counts are sorted descending, so the mirrored rank of class c is C-1-c
    inv = torch.tensor([counts[len(counts) - 1 - c] for c in range(len(counts))], dtype=torch.float64) / sum(counts)
    eps = 1e-9
    z = logits.double()
    return (F.cross_entropy(z[:, 0], target) + F.cross_entropy(z[:, 1] + torch.log(prior + eps), target)
            + F.cross_entropy(z[:, 2] + torch.log(prior + eps) - tau * torch.log(inv + eps), target))


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_diverse_expert_loss_equals_formula(tau):
    counts = img_num_per_cls(500, 100, 0.01)
    torch.manual_seed(0)
    logits = torch.randn(16, 3, 100) * 5
    target = torch.randint(0, 100, (16,))
    loss = DiverseExpertLoss(counts, tau=tau)({"logits": logits}, target)
    assert loss.item() == pytest.approx(formula(logits, target, counts, tau).item(), rel=1e-5)


def test_expert_offsets_cifar100_ir100():
    loss = DiverseExpertLoss(img_num_per_cls(500, 100, 0.01), tau=2)
    inverse = loss.offset_inverse
    uniform = loss.offset_uniform
    assert (uniform[0] - uniform[99]).item() == pytest.approx(math.log(100), abs=1e-4)
    assert (uniform[0] - uniform[99]).item() == pytest.approx(4.6052, abs=1e-4)
    assert (inverse[0] - inverse[99]).item() == pytest.approx(13.8155, abs=1e-4)


def test_inverse_prior_for_unsorted_counts():
    from model.loss.diverse_expert_loss import inverse_prior
    prior = torch.tensor([0.1, 0.6, 0.3])
    assert inverse_prior(prior).tolist() == pytest.approx([0.6, 0.1, 0.3])


def test_diverse_loss_needs_three_experts():
    loss = DiverseExpertLoss([5, 3, 1])
    with pytest.raises(ValueError, match="3 experts"):
        loss({"logits": torch.zeros(2, 2, 3)}, torch.zeros(2, dtype=torch.long))


def test_cross_entropy_and_balanced_softmax():
    counts = [50, 10, 2]
    logits = torch.randn(8, 1, 3)
    target = torch.randint(0, 3, (8,))
    ce = CrossEntropyLoss(counts)({"logits": logits}, target)
    assert ce.item() == pytest.approx(F.cross_entropy(logits[:, 0], target).item(), rel=1e-6)
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    bs = BalancedSoftmaxLoss(counts)({"logits": logits}, target)
    assert bs.item() == pytest.approx(F.cross_entropy(logits[:, 0] + torch.log(prior + 1e-9), target).item(), rel=1e-5)


def test_priors_move_with_the_module():
    loss = DiverseExpertLoss([5, 3, 1]).to(torch.float64)
    assert "prior" in dict(loss.named_buffers())


def test_ride_margins_proportional_to_n_pow_minus_quarter():
    from model.loss import RIDELoss
    counts = img_num_per_cls(500, 100, 0.01)
    loss = RIDELoss(counts, max_m=0.5, s=30)
    m = loss.m_list.double()
    assert m.max().item() == pytest.approx(0.5) and m[99].item() == pytest.approx(0.5)  # rarest class
    expected = torch.tensor(counts, dtype=torch.float64) ** -0.25
    assert torch.allclose(m / m[0], expected / expected[0], rtol=1e-5)
    z = torch.zeros(2, 100)
    out = loss.margin_logits(z, torch.tensor([0, 99]))
    assert out[0, 0].item() == pytest.approx(-30 * m[0].item(), rel=1e-5)
    assert out[1, 99].item() == pytest.approx(-15.0, rel=1e-5) and out[0, 1].item() == 0


def test_ride_diversity_term_is_zero_when_experts_agree():
    from model.loss import RIDELoss
    counts = [100, 30, 5]
    torch.manual_seed(0)
    same = torch.randn(6, 1, 3).repeat(1, 3, 1)
    target = torch.randint(0, 3, (6,))
    with_div = RIDELoss(counts, additional_diversity_factor=-0.45)
    no_div = RIDELoss(counts, additional_diversity_factor=0.0)
    assert with_div({"logits": same}, target).item() == pytest.approx(no_div({"logits": same}, target).item(), rel=1e-6)
    differ = same + torch.randn(6, 3, 3)
    assert with_div({"logits": differ}, target).item() != pytest.approx(
        RIDELoss(counts, additional_diversity_factor=0.0)({"logits": differ}, target).item(), rel=1e-3)


def test_ride_reweighting_switches_on_at_configured_epoch():
    from model.loss import RIDELoss
    counts = img_num_per_cls(500, 100, 0.01)
    loss = RIDELoss(counts, reweight_epoch=160)
    torch.manual_seed(1)
    logits, target = torch.randn(8, 3, 100), torch.randint(0, 100, (8,))
    loss.set_epoch(159)
    assert not loss.reweighting
    before = loss({"logits": logits}, target)
    loss.set_epoch(160)  # 0-based: the 161st epoch, after 160 finished ones
    assert loss.reweighting
    after = loss({"logits": logits}, target)
    assert before.item() != pytest.approx(after.item(), rel=1e-4)
    never = RIDELoss(counts, reweight=False)
    never.set_epoch(500)
    assert not never.reweighting
