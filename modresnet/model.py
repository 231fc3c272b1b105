"""ModifiedResNet for CIFAR-10 (NYU ECE-GY 7123, "Optimizing Deep Learning Models for
Image Classification on CIFAR-10"), in the style of kuangliu/pytorch-cifar's resnet.py.

Three stages of two BasicBlocks at widths 64/128/256, a 3x3 stem conv + BN, stride 2 at
stages 2 and 3 with 1x1 conv + BN shortcuts, global average pooling and a linear head:
2,777,674 trainable parameters. Convolutions carry no bias (BN follows each one), which is
the only way the paper's count works out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modresnet.config import FLAVORS, ModelConfig


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ModifiedResNet(nn.Module):
    def __init__(self, config: ModelConfig = FLAVORS["paper"]) -> None:
        super().__init__()
        self.config = config
        stem = config.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        stages = []
        in_planes = stem
        for i, (width, n) in enumerate(zip(config.widths, config.blocks, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, config.num_classes)
        if config.zero_init_residual:  # each block starts as its shortcut (Goyal et al.)
            for block in self.modules():
                if isinstance(block, BasicBlock):
                    nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits: torch.Tensor = self.linear(out)
        return logits


def build_model(config: ModelConfig) -> ModifiedResNet:
    return ModifiedResNet(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
