"""The encoder wrapper f: image batch in [0,1] -> global-average-pooled features -> L2-normalised h.

ImageNet mean/std normalisation happens inside :class:`Encoder` (non-persistent buffers: they follow
``.to(device)`` but are not part of ``state_dict()`` and never written to weight files).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shamisa.errors import ConfigError, ModelFileError
from shamisa.models.efficientnet_lite import LITE_VARIANTS, efficientnet_lite, scaled_stages
from shamisa.models.imagenet import imagenet_state_dict
from shamisa.models.resnet import RESNET_VARIANTS, resnet
from shamisa.models.weights import (
    check_encoder_file,
    load_state_file,
    read_encoder_metadata,
    read_safetensors,
    tensors_sha256,
)

#: every encoder :func:`build_encoder` knows.
ENCODER_NAMES: tuple[str, ...] = (
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet50",
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIDE = 32

#: wrappers that training code and checkpoints commonly put in front of backbone keys.
KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "encoder.", "backbone.")
#: top-level modules of each backbone family; keys outside them are ignored on load (e.g. projector.*).
_TOP_LEVEL = {
    "lite": frozenset({"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc"}),
    "resnet": frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}),
}
_CLASSIFIER = {"lite": "_fc.", "resnet": "fc."}


class Encoder(nn.Module):
    """A backbone plus input normalisation and global average pooling.

    Attributes:
        name: encoder name (one of :data:`ENCODER_NAMES`).
        feature_dim: D, the size of the pooled feature (1280 for Lite, 512 ResNet-18, 2048 ResNet-50).
        backbone: the network; its ``state_dict`` keys are those of the public checkpoints.

    Works with ``channels_last`` inputs/weights and under fp16/bf16 autocast; any H, W >= 32.
    """

    #: how the features are read out (:mod:`shamisa.models.readout`): the last map's global average.
    readout = "head"

    def __init__(self, name: str, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.name = name
        self.feature_dim = int(feature_dim)
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def family(self) -> str:
        return "lite" if self.name.startswith("efficientnet_lite") else "resnet"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> ImageNet-normalised, same shape."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B,3,H,W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIDE:
            raise ValueError(f"image side must be >= {MIN_SIDE} px, got {tuple(x.shape[-2:])}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float image batch in [0,1], got dtype {x.dtype}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,D,H/32,W/32) last feature map (autocast dtype if active)."""
        return self.backbone.forward_features(self.normalize(x))  # type: ignore[operator]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,D) float32 global-average-pooled features, not normalised."""
        return self.feature_map(x).float().mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) in [0,1] -> (B,D) float32 L2-normalised representation h."""
        return F.normalize(self.features(x), dim=1)

    def weights_hash(self) -> str:
        """Stable SHA-256 hex of the backbone ``state_dict`` (names, dtypes, shapes, values)."""
        return tensors_sha256(self.backbone.state_dict())


def strip_key_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``, ``encoder.``, ``backbone.``)
    from the front of every key, repeatedly (``module.encoder.conv1.weight`` -> ``conv1.weight``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for pre in KEY_PREFIXES:
                if k.startswith(pre):
                    k = k[len(pre) :]
                    changed = True
        out[k] = value
    return out


def load_backbone_state(
    encoder: Encoder, state: Mapping[str, torch.Tensor], *, source: str = "weights"
) -> list[str]:
    """Load a (foreign) state dict into ``encoder.backbone``, strictly but tolerantly.

    Prefixes are stripped (:func:`strip_key_prefixes`); a classifier (``fc`` / ``_fc``) and keys outside
    the backbone's top-level modules (e.g. ``projector.*``) are ignored; missing ``num_batches_tracked``
    counters are tolerated. Everything else must match exactly.

    Returns:
        The ignored keys (after prefix stripping).

    Raises:
        ModelFileError: missing or unexpected backbone keys, or shape mismatches (lists a few of each).
    """
    family = encoder.family
    stripped = strip_key_prefixes(state)
    own = encoder.backbone.state_dict()
    keep: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for k, v in stripped.items():
        top = k.split(".", 1)[0]
        if k not in own and (k.startswith(_CLASSIFIER[family]) or top not in _TOP_LEVEL[family]):
            ignored.append(k)
        else:
            keep[k] = v
    missing = [k for k in own if k not in keep and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in keep if k not in own]
    bad_shape = [
        f"{k} {tuple(keep[k].shape)} != {tuple(own[k].shape)}"
        for k in keep
        if k in own and tuple(keep[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {'; '.join(bad_shape[:3])})")
        raise ModelFileError(f"{source}: does not fit {encoder.name}: " + "; ".join(parts))
    for k in own:
        if k not in keep:  # a missing num_batches_tracked counter
            keep[k] = own[k]
    with torch.no_grad():
        encoder.backbone.load_state_dict(keep, strict=True)
    return ignored


def stage_modules(encoder: Encoder, n_stages: int) -> list[nn.Module]:
    """The stem and the first ``n_stages`` stages of the backbone, in forward order.

    Stages are the backbone's own: the 7 MBConv stages of EfficientNet-Lite (its block table) and
    ``layer1..layer4`` of a ResNet. 0 gives an empty list.

    Raises:
        ConfigError: ``n_stages`` is negative or more than the backbone has.
    """
    net = encoder.backbone
    if n_stages == 0:
        return []
    if encoder.family == "lite":
        stages = scaled_stages(*LITE_VARIANTS[encoder.name][:2])
        if not 0 < n_stages <= len(stages):
            raise ConfigError(f"{encoder.name} has {len(stages)} stages; cannot freeze {n_stages}")
        n_blocks = sum(s.repeats for s in stages[:n_stages])
        return [net._conv_stem, net._bn0, *net._blocks[:n_blocks]]
    layers = ["layer1", "layer2", "layer3", "layer4"]
    if not 0 < n_stages <= len(layers):
        raise ConfigError(f"{encoder.name} has {len(layers)} stages; cannot freeze {n_stages}")
    return [net.conv1, net.bn1, *(getattr(net, name) for name in layers[:n_stages])]


def freeze_stages(encoder: Encoder, n_stages: int) -> list[nn.Module]:
    """Keep the stem and the first ``n_stages`` stages at their current weights: no gradients, and
    their batch-norm layers always on running statistics (see :func:`keep_frozen_stages_eval`).
    Returns the frozen modules (also kept as ``encoder.frozen_modules``)."""
    modules = stage_modules(encoder, n_stages)
    for module in modules:
        module.requires_grad_(False)
        module.eval()
    encoder.frozen_modules = modules
    return modules


def keep_frozen_stages_eval(encoder: nn.Module) -> None:
    """Put the modules frozen by :func:`freeze_stages` back in eval mode (after ``model.train()``)."""
    for module in getattr(encoder, "frozen_modules", ()):
        module.eval()


def build_backbone(name: str) -> tuple[nn.Module, int]:
    """A randomly initialised backbone (without classifier) and its feature size."""
    if name in LITE_VARIANTS:
        net = efficientnet_lite(name)
        return net, net.feature_dim
    if name in RESNET_VARIANTS:
        rn = resnet(name)
        return rn, rn.feature_dim
    raise ConfigError(f"unknown encoder {name!r}; choose from {', '.join(ENCODER_NAMES)}")


def build_encoder(
    name: str, *, pretrained: bool = False, weights: str | os.PathLike[str] | Path | None = None
) -> Encoder:
    """Create an encoder.

    Args:
        name: one of :data:`ENCODER_NAMES`.
        pretrained: load ImageNet weights (offline; EfficientNet-Lite only).
        weights: a weights file to load instead: a shamisa encoder file, a torchvision-style
            ``.safetensors`` state dict, or a ``.pth``/``.pt`` read with ``weights_only=True``.

    Returns:
        The encoder on the CPU, in training mode (call ``.eval()`` for inference).

    Raises:
        ConfigError: unknown name, both ``pretrained`` and ``weights`` given, or ``pretrained`` for a
            ResNet (no offline ImageNet ResNet weights: pass ``weights``).
        ModelFileError: the weights file is missing, unreadable or does not fit.
    """
    backbone, dim = build_backbone(name)
    encoder = Encoder(name, backbone, dim)
    if pretrained and weights is not None:
        raise ConfigError("give either pretrained=True (ImageNet) or a weights file, not both")
    if pretrained:
        load_backbone_state(encoder, imagenet_state_dict(name), source=f"ImageNet weights of {name}")
    elif weights is not None:
        load_backbone_state(encoder, load_state_file(weights), source=str(weights))
    return encoder


def load_encoder(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[Encoder, dict[str, Any]]:
    """Load an encoder file written by :func:`save_encoder`.

    Verifies format, version and the tensor checksum; fp16-stored weights come back as fp32.

    Args:
        path: the ``.safetensors`` encoder file.
        device: where to put the encoder.

    Returns:
        ``(encoder, metadata)``: the encoder in eval mode and the user metadata given to
        :func:`save_encoder` (``{}`` when none).

    Raises:
        ModelFileError: missing / non-safetensors / truncated / corrupted file, wrong format or version,
            checksum mismatch, unknown encoder name, or tensors that do not fit the encoder.
    """
    p = Path(path)
    tensors, meta = read_safetensors(p)
    check_encoder_file(p, tensors, meta)
    name = meta.get("encoder", "")
    try:
        encoder = build_encoder(name)
    except ConfigError:
        raise ModelFileError(f"{p}: unknown encoder {name!r}") from None
    if meta.get("feature_dim") not in (None, str(encoder.feature_dim)):
        raise ModelFileError(
            f"{p}: feature_dim {meta.get('feature_dim')} does not match {name} ({encoder.feature_dim})"
        )
    load_backbone_state(encoder, tensors, source=str(p))
    try:
        user_meta = json.loads(meta.get("meta") or "{}")
    except json.JSONDecodeError:
        raise ModelFileError(f"{p}: unreadable metadata") from None
    return encoder.to(device).eval(), user_meta


def encoder_from_weights(
    weights: str | os.PathLike[str], architecture: str | None = None
) -> tuple[Encoder, dict[str, Any]]:
    """An encoder from a weights file: a shamisa encoder file (its own architecture and metadata), or a
    foreign state dict (``.safetensors``, or ``.pth`` read with ``weights_only``) of ``architecture``.

    Raises:
        ConfigError: a foreign state dict without ``architecture``, or a shamisa encoder file of another
            architecture than the one named.
        ModelFileError: the file is missing, unreadable or does not fit.
    """
    try:
        read_encoder_metadata(weights)
    except ModelFileError:
        if architecture is None:
            raise ConfigError(f"{weights} is not a shamisa encoder file: also give --encoder NAME (its architecture)") from None
        return build_encoder(architecture, weights=weights), {}
    enc, meta = load_encoder(weights)
    if architecture is not None and architecture != enc.name:
        raise ConfigError(f"{weights} holds a {enc.name} encoder, not {architecture}")
    return enc, meta
