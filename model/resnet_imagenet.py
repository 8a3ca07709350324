"""Multi-expert ResNet / ResNeXt with Bottleneck blocks for 224-px images (docs/methods.md#backbones).

Shared stem (conv1 7x7/2, bn1, ReLU, max-pool), layer1 and layer2; one layer3 + layer4 +
classifier per expert. With ``reduce_dimension`` layer3/layer4 have 192/384 planes instead of
256/512. Parameter names match the release: ``conv1``, ``bn1``, ``layer1``, ``layer2``,
``layer3s.{k}``, ``layer4s.{k}``, ``linears.{k}``; blocks are torchvision's ``Bottleneck``, whose
names (``conv1..3``, ``bn1..3``, ``downsample.0/1``) and shapes are those of the release.
"""
import math

import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from base.base_model import expert_outputs

from model.normed_linear import NormedLinear


def _make_layer(inplanes, planes, blocks, stride, groups, base_width):
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(planes * Bottleneck.expansion))
    layers = [Bottleneck(inplanes, planes, stride, downsample, groups=groups, base_width=base_width)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes, groups=groups, base_width=base_width)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ExpertResNet(nn.Module):
    """Bottleneck ResNet(-Xt) with ``num_experts`` copies of layer3, layer4 and the classifier."""

    def __init__(self, layers, groups=1, width_per_group=64, num_classes=1000, num_experts=3,
                 reduce_dimension=False, use_norm=True, s=30):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = num_experts
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, layers[0], 1, groups, width_per_group)
        self.layer2 = _make_layer(256, 128, layers[1], 2, groups, width_per_group)
        planes3, planes4 = (192, 384) if reduce_dimension else (256, 512)
        self.layer3s = nn.ModuleList([_make_layer(512, planes3, layers[2], 2, groups, width_per_group)
                                      for _ in range(num_experts)])
        self.layer4s = nn.ModuleList([_make_layer(planes3 * 4, planes4, layers[3], 2, groups, width_per_group)
                                      for _ in range(num_experts)])
        self.feature_dim = planes4 * Bottleneck.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # the release's init: normal(0, sqrt(2 / (k * k * out_channels)))
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if use_norm:
            self.linears = nn.ModuleList([NormedLinear(self.feature_dim, num_classes) for _ in range(num_experts)])
        else:
            self.linears = nn.ModuleList([nn.Linear(self.feature_dim, num_classes) for _ in range(num_experts)])
            s = 1
        self.s = s

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        shared = self.layer2(self.layer1(x))
        return expert_outputs((layer4(layer3(shared)) for layer3, layer4 in zip(self.layer3s, self.layer4s)),
                              self.linears, self.s)
