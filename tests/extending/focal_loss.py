"""A loss: focal loss (Lin et al., 2017) on every expert, summed like the other losses."""
import torch.nn.functional as F

from base.base_loss import LTLoss


class FocalLoss(LTLoss):
    def __init__(self, cls_num_list, gamma=2.0):
        super().__init__(cls_num_list)  # self.prior: the training class frequencies
        self.gamma = float(gamma)

    def forward(self, outputs, target):
        total = 0
        for logits in self.expert_logits(outputs).float().unbind(1):  # [B, C] per expert
            log_p = F.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
            total = total + (-(1 - log_p.exp()) ** self.gamma * log_p).mean()
        return total
