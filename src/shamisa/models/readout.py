"""How a frozen encoder's features are read out for the quality head.

Two readouts:

* ``head`` (the default, what SHAMISA and ARNIQA probe): the global average of the last feature map,
  L2-normalised (:class:`shamisa.models.Encoder`).
* ``multilevel``: the global averages of the outputs of every stage at stride 16 or 32 and of the last
  feature map, each L2-normalised, concatenated and divided by the square root of their number (a unit
  vector). EfficientNet-Lite: stages 5, 6 and 7 and the head (112 + 192 + 320 + 1280 = 1904 features for
  Lite0); ResNet: ``layer3`` and ``layer4`` (the last feature map). Middle stages keep the local,
  low-level statistics (noise, blur, compression) that the last, most semantic map averages away; the
  cost is one forward pass, as for ``head``.

The readout changes only what a frozen encoder gives the ridge head (probe, fit, scoring); pretraining
and fine-tuning always use the encoder's own ``features``.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from shamisa.errors import ConfigError
from shamisa.models.efficientnet_lite import LITE_VARIANTS, scaled_stages
from shamisa.models.encoder import Encoder
from shamisa.models.paired import PairedEncoder

__all__ = [
    "READOUTS",
    "MultiLevelEncoder",
    "check_readout",
    "lite_level_maps",
    "lite_stage_ends",
    "readout_of",
    "with_readout",
]

#: the readouts :func:`with_readout` knows.
READOUTS: tuple[str, ...] = ("head", "multilevel")


def check_readout(name: str) -> str:
    """``name`` if it is one of :data:`READOUTS`; ConfigError otherwise."""
    if name not in READOUTS:
        raise ConfigError(f"unknown readout {name!r} (choose from {', '.join(READOUTS)})")
    return name


def lite_stage_ends(name: str, first_stage: int = 5) -> list[int]:
    """Block counts after which EfficientNet-Lite ``name``'s stages ``first_stage``..7 (1-based) end; the
    default, 5, gives the stages at stride 16 and 32 that the ``multilevel`` readout reads."""
    ends, total = [], 0
    for i, stage in enumerate(scaled_stages(*LITE_VARIANTS[name][:2])):
        total += stage.repeats
        if i + 1 >= first_stage:
            ends.append(total)
    return ends


def lite_level_maps(encoder: Encoder, x: torch.Tensor, ends: list[int]) -> list[torch.Tensor]:
    """(B,3,H,W) in [0,1] -> the feature maps of a Lite encoder after each block count in ``ends``, then
    its head's map (one forward pass, shallowest first)."""
    net = encoder.backbone
    h = F.relu6(net._bn0(net._conv_stem(encoder.normalize(x))))
    maps = []
    for i, block in enumerate(net._blocks):
        h = block(h)
        if i + 1 in ends:
            maps.append(h)
    maps.append(F.relu6(net._bn1(net._conv_head(h))))
    return maps


def _out_channels(module: torch.nn.Module) -> int:
    """Channels of a stage's output: those of its last batch norm (every stage read out ends in one)."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return int(norms[-1].num_features)


class MultiLevelEncoder(Encoder):
    """An encoder read out at several levels (see the module docstring); the same backbone and weights
    (``state_dict`` keys unchanged), so it saves and loads like the encoder it wraps."""

    readout = "multilevel"

    def __init__(self, encoder: Encoder) -> None:
        if getattr(encoder, "readout", "head") != "head":
            raise ConfigError("the encoder already has a multilevel readout")
        super().__init__(encoder.name, encoder.backbone, encoder.feature_dim)
        self.train(encoder.training)
        self._ends = lite_stage_ends(encoder.name) if self.family == "lite" else []
        net = self.backbone
        if self.family == "lite":
            levels = [net._blocks[end - 1] for end in self._ends] + [net._bn1]
        else:
            levels = [net.layer3, net.layer4]
        self.level_dims = tuple(_out_channels(m) for m in levels)
        self.feature_dim = sum(self.level_dims)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, readout='multilevel', level_dims={self.level_dims}"

    def level_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B,3,H,W) in [0,1] -> the feature maps read out, shallowest first."""
        if self.family == "lite":
            return lite_level_maps(self, x, self._ends)
        net, h = self.backbone, self.normalize(x)
        h = F.max_pool2d(F.relu(net.bn1(net.conv1(h))), kernel_size=3, stride=2, padding=1)
        h = net.layer2(net.layer1(h))
        h3 = net.layer3(h)
        return [h3, net.layer4(h3)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B, feature_dim) float32: the levels' pooled features, each unit-norm,
        concatenated and scaled to unit norm."""
        parts = [F.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in self.level_maps(x)]
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))

    def weights_hash(self) -> str:
        """The backbone's hash and the readout in one SHA-256 hex string (feature caches keep the two
        readouts apart)."""
        return hashlib.sha256(f"{super().weights_hash()}:multilevel".encode()).hexdigest()


def readout_of(encoder: torch.nn.Module) -> str:
    """The readout of an encoder or of a content + quality pair (its quality branch's)."""
    if isinstance(encoder, PairedEncoder):
        return readout_of(encoder.quality)
    return str(getattr(encoder, "readout", "head"))


def with_readout(encoder: Encoder | PairedEncoder, readout: str) -> Encoder | PairedEncoder:
    """``encoder`` read out as ``readout``: itself for ``head``; for ``multilevel`` a
    :class:`MultiLevelEncoder` on the same backbone (both branches of a pair, which then computes its
    shared stages once per branch: the same features).

    Raises:
        ConfigError: an unknown readout, or a readout other than the encoder's when it is not ``head``.
    """
    check_readout(readout)
    current = readout_of(encoder)
    if readout == current:
        return encoder
    if current != "head":
        raise ConfigError(f"the encoder is read out as {current!r}; cannot change it to {readout!r}")
    if isinstance(encoder, PairedEncoder):
        return PairedEncoder(
            MultiLevelEncoder(encoder.content), MultiLevelEncoder(encoder.quality), shared_stages=encoder.shared_stages
        )
    return MultiLevelEncoder(encoder)
