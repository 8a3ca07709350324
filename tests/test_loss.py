import math

import pytest
import torch
import torch.nn.functional as F

from data_loader.long_tail import img_num_per_cls
from model.loss import BalancedSoftmaxLoss, CrossEntropyLoss, DiverseExpertLoss


def formula(logits, target, counts, tau):
    """SPEC 4, written out independently of the implementation."""
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
