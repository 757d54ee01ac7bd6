"""Content + quality: a frozen ImageNet encoder's features beside a SHAMISA encoder's.

Re-IQA pairs a content encoder (ImageNet) with a quality encoder (self-supervised on distortions) and
fits the quality head on both. :class:`PairedEncoder` does that for any two encoders of one family:
``h = [h_content, h_quality] / sqrt(2)`` (each part L2-normalised, so ``h`` is unit-norm too).

When the quality encoder was pretrained with its stem and first ``k`` stages frozen
(``encoder_frozen_stages=k``), those stages are the content encoder's, weight for weight; the pair
then runs them once and branches after them (``shared_stages=k``), which is what keeps scoring with
two encoders well under twice the cost of one.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from shamisa.errors import ConfigError
from shamisa.models.encoder import Encoder, build_encoder, stage_modules


def _lite_trunk(net: nn.Module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    x = F.relu6(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:n_blocks]:
        x = block(x)
    return x


def _lite_rest(net: nn.Module, x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    for block in net._blocks[n_blocks:]:
        x = block(x)
    return F.relu6(net._bn1(net._conv_head(x)))


_RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def _resnet_trunk(net: nn.Module, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    x = F.max_pool2d(F.relu(net.bn1(net.conv1(x))), kernel_size=3, stride=2, padding=1)
    for name in _RESNET_LAYERS[:n_layers]:
        x = getattr(net, name)(x)
    return x


def _resnet_rest(net: nn.Module, x: torch.Tensor, n_layers: int) -> torch.Tensor:
    for name in _RESNET_LAYERS[n_layers:]:
        x = getattr(net, name)(x)
    return x


def _same_weights(a: list[nn.Module], b: list[nn.Module]) -> bool:
    for ma, mb in zip(a, b, strict=True):
        sa, sb = ma.state_dict(), mb.state_dict()
        if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
            return False
    return True


class PairedEncoder(nn.Module):
    """Two encoders side by side: ``forward(x) = cat(content(x), quality(x)) / sqrt(2)``.

    Args:
        content: the content encoder (usually ImageNet weights, frozen).
        quality: the quality encoder (usually SHAMISA-pretrained), same architecture.
        shared_stages: run the stem and the first N stages once for both (their weights must be equal).

    Raises:
        ConfigError: different architectures, or shared stages whose weights differ.
    """

    def __init__(self, content: Encoder, quality: Encoder, *, shared_stages: int = 0) -> None:
        super().__init__()
        if content.name != quality.name:
            raise ConfigError(f"a pair needs one architecture, got {content.name} and {quality.name}")
        if content.readout != quality.readout:
            raise ConfigError(f"a pair needs one readout, got {content.readout} and {quality.readout}")
        self.content, self.quality = content, quality
        self.name = f"{quality.name}+content"
        self.feature_dim = content.feature_dim + quality.feature_dim
        self.shared_stages = int(shared_stages)
        if self.shared_stages and not _same_weights(
            stage_modules(content, self.shared_stages), stage_modules(quality, self.shared_stages)
        ):
            raise ConfigError(
                f"the first {self.shared_stages} stages of the two encoders differ: they cannot be shared "
                "(was the quality encoder pretrained with encoder_frozen_stages set to this value?)"
            )
        self._split = 0
        if self.shared_stages:
            if content.family == "lite":
                self._split = len(stage_modules(content, self.shared_stages)) - 2  # minus stem conv + bn
            else:
                self._split = self.shared_stages

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, shared_stages={self.shared_stages}"

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, Dc + Dq) float32 pooled features (each part L2-normalised)."""
        if not self.shared_stages or self.content.readout != "head":  # other readouts: no shared trunk
            c, q = self.content.features(x), self.quality.features(x)
        else:
            lite = self.content.family == "lite"
            trunk, rest = (_lite_trunk, _lite_rest) if lite else (_resnet_trunk, _resnet_rest)
            t = trunk(self.content.backbone, self.content.normalize(x), self._split)
            c = rest(self.content.backbone, t, self._split).float().mean(dim=(2, 3))
            q = rest(self.quality.backbone, t, self._split).float().mean(dim=(2, 3))
        return torch.cat([F.normalize(c, dim=1), F.normalize(q, dim=1)], dim=1) / math.sqrt(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, Dc + Dq) unit-norm representation."""
        return self.features(x)

    def weights_hash(self) -> str:
        """Both encoders' hashes (and the sharing) in one SHA-256 hex string."""
        text = f"{self.content.weights_hash()}:{self.quality.weights_hash()}:{self.shared_stages}"
        return hashlib.sha256(text.encode()).hexdigest()


def shared_stage_count(content: Encoder, quality: Encoder) -> int:
    """The largest N such that the stem and the first N stages of the two encoders are equal."""
    n_max = 7 if content.family == "lite" else 4
    for n in range(n_max, 0, -1):
        if _same_weights(stage_modules(content, n), stage_modules(quality, n)):
            return n
    return 0


def with_content(quality: Encoder) -> PairedEncoder:
    """Pair ``quality`` with the ImageNet encoder of its architecture (the content branch), sharing
    every leading stage whose weights the two have in common.

    Raises:
        ConfigError: the architecture has no offline ImageNet weights (ResNets: none ship here).
    """
    content = build_encoder(quality.name, pretrained=True).eval()
    return PairedEncoder(content, quality.eval(), shared_stages=shared_stage_count(content, quality))
