"""EfficientNet-Lite0/1/2 backbones.

EfficientNet-Lite is the mobile variant of EfficientNet: MBConv blocks without squeeze-and-excitation,
ReLU6 activations everywhere, and a stem (32 channels) and head (1280 channels) that are *not* scaled
with the width multiplier; the first and last stages are not repeated with the depth multiplier either.

Parameter names follow the widely distributed ImageNet checkpoints (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``), so those files load with no key conversion.

Conventions of the original (TensorFlow-trained) weights, all reproduced here:

* convolutions have no bias; every convolution is followed by BatchNorm with ``eps=1e-3`` and
  ``momentum=0.01`` (TensorFlow's decay 0.99);
* "SAME" padding as TensorFlow computes it: for a stride-2 convolution on an even-sized input the
  extra row/column of padding goes to the bottom/right (computed at run time, so any input size works);
* a residual connection when a block keeps stride 1 and its channel count, with optional stochastic
  depth (drop path) during training.

Input resolution is the caller's business (the nominal sizes are 224, 240 and 260 px); the network is
fully convolutional up to the global pooling done by :class:`shamisa.models.encoder.Encoder`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks before width/depth scaling."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


#: The EfficientNet-B0 / Lite0 stage table.
BASE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)

#: name -> (width multiplier, depth multiplier, nominal resolution)
LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (never below 90 %)."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth`` (ceil)."""
    return int(math.ceil(depth * repeats))


def scaled_stages(width: float, depth: float) -> list[StageSpec]:
    """The stage table of a Lite variant: stem/head fixed, first and last stage not repeated more."""
    out: list[StageSpec] = []
    last = len(BASE_STAGES) - 1
    for i, s in enumerate(BASE_STAGES):
        reps = s.repeats if i in (0, last) else round_repeats(s.repeats, depth)
        in_ch = STEM_CHANNELS if i == 0 else round_channels(s.in_ch, width)
        out.append(StageSpec(reps, s.kernel, s.stride, s.expand, in_ch, round_channels(s.out_ch, width)))
    return out


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" padding: output size ceil(n / stride), extra padding at the bottom/right."""
    h, w = x.shape[-2:]
    pad_h = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pad_w = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class SameConv2d(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` with TensorFlow "SAME" padding (parameter name ``weight``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)
        self._k = kernel
        self._s = stride
        if stride == 1:
            # symmetric: identical to TF SAME for odd kernels, so use the fused conv padding
            self.padding = ((kernel - 1) // 2, (kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._s != 1:
            x = _same_pad(x, self._k, self._s)
        return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples with probability ``p`` and rescale the rest."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0], 1, 1, 1), device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask / keep


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 ->
    1x1 project -> BN (+ identity)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path_rate: float = 0.0
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.use_residual:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite backbone.

    Args:
        width: channel multiplier (1.0 for Lite0/1, 1.1 for Lite2).
        depth: block-count multiplier (1.0, 1.1, 1.2).
        num_classes: add the ImageNet-style ``_fc`` classifier with this many outputs (None: no head).
        drop_path_rate: stochastic-depth rate of the last block (linearly increasing over blocks).

    ``forward_features`` maps (B,3,H,W) (already normalised) to the (B,1280,H/32,W/32) head activations;
    ``forward`` adds global average pooling and, if present, the classifier.
    """

    feature_dim = HEAD_CHANNELS

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        *,
        num_classes: int | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        stages = scaled_stages(width, depth)
        total = sum(s.repeats for s in stages)
        blocks: list[nn.Module] = []
        for s in stages:
            for j in range(s.repeats):
                rate = drop_path_rate * len(blocks) / total
                blocks.append(
                    MBConv(
                        s.in_ch if j == 0 else s.out_ch,
                        s.out_ch,
                        s.kernel,
                        s.stride if j == 0 else 1,
                        s.expand,
                        rate,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(stages[-1].out_ch, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF-style init: fan-out normal for convs, uniform(1/sqrt(out)) for the classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised input -> (B,1280,h,w) feature map."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> (B,num_classes) logits, or (B,1280) pooled features without a classifier."""
        f = self.forward_features(x).mean(dim=(2, 3))
        return self._fc(f) if self._fc is not None else f


def efficientnet_lite(
    name: str, *, num_classes: int | None = None, drop_path_rate: float = 0.0
) -> EfficientNetLite:
    """Build ``efficientnet_lite0|1|2`` (random init)."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose from {sorted(LITE_VARIANTS)}")
    width, depth, _ = LITE_VARIANTS[name]
    return EfficientNetLite(width, depth, num_classes=num_classes, drop_path_rate=drop_path_rate)
