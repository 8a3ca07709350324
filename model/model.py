"""Models chosen by the config's ``arch.type`` (contract: base/base_model.py). Each wraps its
network as ``self.backbone``, so parameter names are ``backbone.*`` as in the release's
checkpoints. forward() returns a dict: ``output`` [B, C] (mean of the experts), ``logits``
[B, E, C] (each expert), ``feat`` [B, E, D]."""
from base.base_model import ExpertModel
from model.resnet_cifar import ExpertResNetCifar
from model.resnet_imagenet import ExpertResNet


class _WrappedBackbone(ExpertModel):
    """A model whose multi-expert network is ``self.backbone`` (which knows its expert count)."""

    @property
    def num_experts(self):
        return self.backbone.num_experts

    def forward(self, x):
        return self.backbone(x)


class ResNet32Model(_WrappedBackbone):
    """Multi-expert ResNet-32 for CIFAR (docs/methods.md#backbones); ``num_experts: 1`` is the Softmax baseline."""

    def __init__(self, num_classes=100, num_experts=3, reduce_dimension=False, use_norm=True, s=30,
                 returns_feat=True):
        super().__init__()
        self.backbone = ExpertResNetCifar((5, 5, 5), num_classes=num_classes, num_experts=num_experts,
                                          reduce_dimension=reduce_dimension, use_norm=use_norm, s=s)


class _ExpertBottleneckModel(_WrappedBackbone):
    """Multi-expert Bottleneck ResNet(-Xt) for 224-px images (docs/methods.md#backbones). An ImageNet-pretrained start
    (Places-LT) is the config's ``arch.pretrained``, applied by train.py (model/pretrained.py)."""

    layers, groups, width_per_group = None, 1, 64

    def __init__(self, num_classes=1000, num_experts=3, reduce_dimension=False, use_norm=True, s=30,
                 returns_feat=True):
        super().__init__()
        self.backbone = ExpertResNet(self.layers, groups=self.groups, width_per_group=self.width_per_group,
                                     num_classes=num_classes, num_experts=num_experts,
                                     reduce_dimension=reduce_dimension, use_norm=use_norm, s=s)


class ResNeXt50Model(_ExpertBottleneckModel):
    """ResNeXt-50 32x4d (ImageNet-LT)."""
    layers, groups, width_per_group = (3, 4, 6, 3), 32, 4


class ResNet50Model(_ExpertBottleneckModel):
    """ResNet-50 (iNaturalist 2018)."""
    layers = (3, 4, 6, 3)


class ResNet152Model(_ExpertBottleneckModel):
    """ResNet-152 (Places-LT, from an ImageNet-pretrained network)."""
    layers = (3, 8, 36, 3)
