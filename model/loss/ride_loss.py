"""RIDE's stage-one loss (Wang et al., ICLR 2021), the three-expert baseline
(docs/methods.md#baselines).

For every expert: an LDAM margin loss (margin m_c proportional to n_c^(-1/4), the largest 0.5,
subtracted from the true-class logit as m_c * s) with deferred re-weighting by effective numbers
(beta 0.9999) once ``reweight_epoch`` epochs are done, plus a distribution-aware diversity term
``additional_diversity_factor * T^2 * KL(softmax(z_k / T) || softmax(mean_z / T))`` whose
temperature T is scaled per class by the training prior once re-weighting is on.
"""
import numpy as np
import torch
import torch.nn.functional as F

from base.base_loss import LTLoss
from base.base_model import average_experts


class RIDELoss(LTLoss):
    def __init__(self, cls_num_list=None, base_diversity_temperature=1.0, max_m=0.5, s=30, reweight=True,
                 reweight_epoch=160, base_loss_factor=1.0, additional_diversity_factor=-0.2, reweight_factor=0.05):
        super().__init__(cls_num_list)
        counts = np.asarray(cls_num_list, dtype=np.float64)
        m = 1.0 / np.sqrt(np.sqrt(counts))
        m = m * (max_m / m.max())
        self.register_buffer("m_list", torch.tensor(m, dtype=torch.float32), persistent=False)
        self.s = float(s)
        self.reweight_epoch = int(reweight_epoch) if reweight else -1
        self.base_loss_factor = float(base_loss_factor)
        self.base_diversity_temperature = float(base_diversity_temperature)
        self.additional_diversity_factor = float(additional_diversity_factor)

        effective_num = 1.0 - np.power(0.9999, counts)
        weights = (1.0 - 0.9999) / effective_num
        weights = weights / weights.sum() * len(counts)
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        prior = counts / counts.sum()
        temp = len(counts) * prior * reweight_factor + 1 - reweight_factor
        temp = temp / temp.max()
        if not np.all(temp > 0):
            raise ValueError("reweight_factor is too large: per-class temperatures must stay positive")
        self.register_buffer("diversity_temperature", torch.tensor(temp, dtype=torch.float32), persistent=False)
        self.reweighting = False

    def set_epoch(self, epoch):
        """Called by the trainer before each 0-based epoch: re-weighting is on from epoch
        ``reweight_epoch`` (0-based), i.e. after ``reweight_epoch`` finished epochs, as in RIDE."""
        self.reweighting = self.reweight_epoch >= 0 and epoch >= self.reweight_epoch

    def schedule_state(self):
        return self.reweighting

    def margin_logits(self, logits, target):
        """Subtract m_y * s from each sample's true-class logit (LDAM)."""
        margin = self.m_list[target].unsqueeze(1) * self.s
        return logits - margin * F.one_hot(target, logits.shape[1]).to(logits.dtype)

    def forward(self, outputs, target):
        logits = self.expert_logits(outputs).float()
        mean_logits = average_experts(logits)
        weight = self.class_weights if self.reweighting else None
        if self.reweighting:
            temperature = self.base_diversity_temperature * self.diversity_temperature.view(1, -1)
            t_mean = temperature.mean()
        else:
            temperature = t_mean = self.base_diversity_temperature
        with torch.no_grad():
            mean_dist = F.softmax(mean_logits / temperature, dim=1)
        loss = 0.0
        for k in range(logits.shape[1]):
            z = logits[:, k] if self.additional_diversity_factor != 0 else mean_logits
            loss = loss + self.base_loss_factor * F.cross_entropy(self.margin_logits(z, target), target, weight=weight)
            log_dist = F.log_softmax(logits[:, k] / temperature, dim=1)
            loss = loss + self.additional_diversity_factor * t_mean * t_mean * F.kl_div(log_dist, mean_dist,
                                                                                          reduction="batchmean")
        return loss
