"""TADE's diverse-expert loss (docs/methods.md#tade-loss).

  L = CE(z1, y) + CE(z2 + log(pi + eps), y) + CE(z3 + log(pi + eps) - tau * log(pi_inv + eps), y)

Expert 1 fits the long-tailed training distribution, expert 2 (balanced softmax) the uniform one,
expert 3 the inverted one. ``pi_inv`` gives each class the prior value at its mirrored rank.
"""
import torch
import torch.nn.functional as F

from base.base_loss import LTLoss

EPS = 1e-9


def inverse_prior(prior):
    """Sort the prior ascending and give each class the value at the mirrored rank."""
    values, order = torch.sort(prior)
    rank = torch.argsort(order)
    return values[prior.numel() - 1 - rank]


class DiverseExpertLoss(LTLoss):
    required_experts = 3

    def __init__(self, cls_num_list=None, tau=2.0):
        super().__init__(cls_num_list)
        self.tau = float(tau)
        log_prior = torch.log(self.prior + EPS)
        self.register_buffer("offset_uniform", log_prior, persistent=False)
        self.register_buffer("offset_inverse", log_prior - self.tau * torch.log(inverse_prior(self.prior) + EPS),
                             persistent=False)

    def forward(self, outputs, target):
        logits = self.expert_logits(outputs).float()
        if logits.shape[1] != 3:
            raise ValueError("DiverseExpertLoss needs exactly 3 experts (arch.args.num_experts), "
                             f"got {logits.shape[1]}")
        return (F.cross_entropy(logits[:, 0], target)
                + F.cross_entropy(logits[:, 1] + self.offset_uniform, target)
                + F.cross_entropy(logits[:, 2] + self.offset_inverse, target))
