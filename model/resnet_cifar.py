"""Multi-expert ResNet for 32x32 images (docs/methods.md#backbones): shared stem and stage 1, one stage 2 + stage 3 +
classifier per expert. Parameter names match the release (``layer2s.{k}``, ``linears.{k}``)."""
import torch.nn.functional as F
from torch import nn
from torch.nn import init

from base.base_model import expert_outputs

from model.normed_linear import NormedLinear


def _weights_init(m):
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        init.kaiming_normal_(m.weight)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad channels; no parameters."""

    def __init__(self, in_planes, planes):
        super().__init__()
        self.pad = (planes - in_planes) // 2
        self.extra = planes - in_planes - 2 * self.pad

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad + self.extra))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ExpertResNetCifar(nn.Module):
    """ResNet-(6n+2) with ``num_experts`` copies of stages 2 and 3."""

    def __init__(self, num_blocks=(5, 5, 5), num_classes=100, num_experts=3, reduce_dimension=False,
                 use_norm=True, s=30):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        self.num_experts = num_experts
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, num_blocks[0], 1)
        width2, width3 = (24, 48) if reduce_dimension else (32, 64)
        self.layer2s = nn.ModuleList([self._make_layer(16, width2, num_blocks[1], 2) for _ in range(num_experts)])
        self.layer3s = nn.ModuleList([self._make_layer(width2, width3, num_blocks[2], 2)
                                      for _ in range(num_experts)])
        if use_norm:
            self.linears = nn.ModuleList([NormedLinear(width3, num_classes) for _ in range(num_experts)])
        else:
            self.linears = nn.ModuleList([nn.Linear(width3, num_classes) for _ in range(num_experts)])
            s = 1
        self.s = s
        self.apply(_weights_init)

    @staticmethod
    def _make_layer(in_planes, planes, blocks, stride):
        layers = []
        for i in range(blocks):
            layers.append(BasicBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1))
        return nn.Sequential(*layers)

    def forward(self, x):
        shared = self.layer1(F.relu(self.bn1(self.conv1(x))))
        return expert_outputs((layer3(layer2(shared)) for layer2, layer3 in zip(self.layer2s, self.layer3s)),
                              self.linears, self.s)
