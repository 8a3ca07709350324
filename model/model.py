"""Models chosen by the config's ``arch.type``. Each wraps its network as ``self.backbone``, so
parameter names are ``backbone.*`` as in the release's checkpoints. forward() returns a dict:
``output`` [B, C] (mean of the experts), ``logits`` [B, E, C] (each expert), ``feat`` [B, E, D]."""
from torch import nn

from model.resnet_cifar import ExpertResNetCifar


class ResNet32Model(nn.Module):
    """Multi-expert ResNet-32 for CIFAR (SPEC 3); ``num_experts: 1`` is the Softmax baseline."""

    def __init__(self, num_classes=100, num_experts=3, reduce_dimension=False, use_norm=True, s=30,
                 returns_feat=True):
        super().__init__()
        self.backbone = ExpertResNetCifar((5, 5, 5), num_classes=num_classes, num_experts=num_experts,
                                          reduce_dimension=reduce_dimension, use_norm=use_norm, s=s)

    @property
    def num_experts(self):
        return self.backbone.num_experts

    def forward(self, x):
        return self.backbone(x)
