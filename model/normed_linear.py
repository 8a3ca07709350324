"""Cosine classifier of the release: logits = cos(feature, w_c); the model scales them by s."""
import torch
import torch.nn.functional as F
from torch import nn


class NormedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        # Stored (in_features, out_features) as in the release, so its checkpoints load.
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))
