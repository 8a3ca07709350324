"""Softmax baseline: plain cross-entropy on every expert's logits (summed over experts)."""
import torch.nn.functional as F

from base.base_loss import LTLoss


class CrossEntropyLoss(LTLoss):
    def __init__(self, cls_num_list=None):
        super().__init__(cls_num_list or [1])

    def forward(self, outputs, target):
        logits = self.expert_logits(outputs)
        return sum(F.cross_entropy(logits[:, k].float(), target) for k in range(logits.shape[1]))
