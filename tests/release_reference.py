"""The reference release's CIFAR expert ResNet (ResNet_s), re-typed from its published source for
comparison: option-A LambdaLayer shortcut, NormedLinear, per-expert layer2s/layer3s/linears."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import Parameter


class NormedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = Parameter(torch.Tensor(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class LambdaLayer(nn.Module):
    def __init__(self, lambd):
        super().__init__()
        self.lambd = lambd

    def forward(self, x):
        return self.lambd(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, (planes - in_planes) // 2,
                                                                            (planes - in_planes) // 2), "constant", 0))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class ResNet_s(nn.Module):
    def __init__(self, block, num_blocks, num_experts, num_classes=10, reduce_dimension=False, use_norm=False, s=30):
        super().__init__()
        self.in_planes = 16
        self.num_experts = num_experts
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(block, 16, num_blocks[0], stride=1)
        self.in_planes = self.next_in_planes
        layer2_output_dim = 24 if reduce_dimension else 32
        layer3_output_dim = 48 if reduce_dimension else 64
        self.layer2s = nn.ModuleList([self._make_layer(block, layer2_output_dim, num_blocks[1], stride=2)
                                      for _ in range(num_experts)])
        self.in_planes = self.next_in_planes
        self.layer3s = nn.ModuleList([self._make_layer(block, layer3_output_dim, num_blocks[2], stride=2)
                                      for _ in range(num_experts)])
        self.in_planes = self.next_in_planes
        if use_norm:
            self.linears = nn.ModuleList([NormedLinear(layer3_output_dim, num_classes) for _ in range(num_experts)])
        else:
            self.linears = nn.ModuleList([nn.Linear(layer3_output_dim, num_classes) for _ in range(num_experts)])
            s = 1
        self.s = s

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        layers = []
        self.next_in_planes = self.in_planes
        for stride in strides:
            layers.append(block(self.next_in_planes, planes, stride))
            self.next_in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _separate_part(self, x, ind):
        out = self.layer2s[ind](x)
        out = self.layer3s[ind](out)
        out = F.avg_pool2d(out, out.size()[3])
        out = out.view(out.size(0), -1)
        return self.linears[ind](out) * self.s

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        outs = [self._separate_part(out, ind) for ind in range(self.num_experts)]
        return torch.stack(outs, dim=1)


class ResNet32Model(nn.Module):
    """The release wraps the network as ``self.backbone``."""

    def __init__(self, num_classes, reduce_dimension, num_experts, use_norm=True):
        super().__init__()
        self.backbone = ResNet_s(BasicBlock, [5, 5, 5], num_experts, num_classes, reduce_dimension, use_norm)

    def forward(self, x):
        return self.backbone(x)
