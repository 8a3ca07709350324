"""A backbone: a small CNN with a shared stem and one head per expert."""
import torch
from torch import nn

from base.base_model import ExpertModel


class TinyCNNModel(ExpertModel):
    def __init__(self, num_classes=10, num_experts=3, width=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linears = nn.ModuleList([nn.Linear(width, num_classes) for _ in range(num_experts)])

    @property
    def num_experts(self):
        return len(self.linears)

    def forward(self, x):
        feat = self.stem(x)
        logits = torch.stack([head(feat) for head in self.linears], 1)  # [B, E, C]
        return {"output": logits.mean(1), "logits": logits, "feat": feat[:, None].expand(-1, self.num_experts, -1)}
