"""Balanced Softmax: cross-entropy on logits + log(prior), for every expert (summed)."""
import torch
import torch.nn.functional as F

from base.base_loss import LTLoss

EPS = 1e-9


class BalancedSoftmaxLoss(LTLoss):
    def forward(self, outputs, target):
        logits = self.expert_logits(outputs).float() + torch.log(self.prior + EPS)
        return sum(F.cross_entropy(logits[:, k], target) for k in range(logits.shape[1]))
