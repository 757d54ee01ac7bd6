"""ResNet-18 and ResNet-50 backbones whose ``state_dict`` keys and shapes are those of the common
torchvision layout (``conv1``, ``bn1``, ``layer1``..``layer4`` of ``BasicBlock`` / ``Bottleneck`` with
``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN), ``fc``), so
checkpoints saved by other ResNet code load without conversion.

Stride is placed on the 3x3 convolution of a bottleneck ("ResNet v1.5"). BatchNorm uses PyTorch's
defaults (``eps=1e-5``, ``momentum=0.1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: name -> (block type, blocks per stage)
RESNET_VARIANTS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), with a projection shortcut when needed."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + identity)


class ResNet(nn.Module):
    """ResNet backbone.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50/101/152).
        layers: number of blocks in each of the four stages.
        num_classes: add an ``fc`` classifier with this many outputs (None: no classifier).
        zero_init_residual: initialise the last BN of every block to zero (each block starts as identity).

    ``forward_features`` maps a normalised (B,3,H,W) batch to the (B,D,H/32,W/32) last-stage map
    (D = 512 for basic blocks, 2048 for bottlenecks).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, int, int, int],
        *,
        num_classes: int | None = None,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        block_cls: type[BasicBlock] | type[Bottleneck]
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        stages = []
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(cin, width, stride))
                cin = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes) if num_classes else None
        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """Kaiming-normal (fan-out, ReLU) convolutions, unit BN, PyTorch-default linear layers."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised input -> (B,D,h,w) feature map."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,num_classes) logits, or (B,D) pooled features without a classifier."""
        f = self.forward_features(x).mean(dim=(2, 3))
        return self.fc(f) if self.fc is not None else f


def resnet(name: str, *, num_classes: int | None = None, zero_init_residual: bool = False) -> ResNet:
    """Build ``resnet18`` or ``resnet50`` (random init)."""
    if name not in RESNET_VARIANTS:
        raise ValueError(f"unknown ResNet variant {name!r}; choose from {sorted(RESNET_VARIANTS)}")
    block, layers = RESNET_VARIANTS[name]
    return ResNet(block, layers, num_classes=num_classes, zero_init_residual=zero_init_residual)
