"""The pretraining network and its optimisation settings: encoder f + projector g + loss as one
module (:class:`PretrainModel`), built from a config (:func:`build_model`), its SGD parameter groups,
the encoder warm-up freeze, the frozen-stage and batch-norm training modes, and mixed precision."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from shamisa.configs import PretrainConfig
from shamisa.errors import ConfigError
from shamisa.models import Projector, build_encoder, default_projector_dims, with_readout
from shamisa.models.encoder import freeze_stages, keep_frozen_stages_eval
from shamisa.objectives import build_loss
from shamisa.training.distributed import gather_plain, gather_split

__all__ = [
    "PretrainModel",
    "build_model",
    "build_optimizer",
    "freeze_encoder_lr",
    "param_groups",
    "resolve_amp",
    "set_train_mode",
]


class PretrainModel(nn.Module):
    """Encoder + projector + loss. ``forward(batch)`` returns the loss dict of the (gathered) batch.

    Args:
        encoder: ``shamisa.models.Encoder`` (``forward`` gives L2-normalised h).
        projector: maps h (D) to z (E).
        loss: a loss module (see ``shamisa.objectives.registry``).
        amp_dtype: autocast dtype for encoder + projector, or None.
        channels_last: feed the encoder channels-last tensors.
        gather: all-gather embeddings across processes before the loss (DDP).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.projector, self.loss = encoder, projector, loss
        self.amp_dtype, self.channels_last, self.gather = amp_dtype, channels_last, gather

    def forward(self, refs: torch.Tensor, dist_imgs: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, Any]:
        """refs (B,2R,3,P,P), dist_imgs (B,2R,F,L,3,P,P), meta {"indices" (B,F,L,S), "var_slot" (B,F)}."""
        n_views = refs.shape[1]
        x = torch.cat([refs.flatten(0, 1), dist_imgs.flatten(0, 3)])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n_ref = refs.shape[0] * n_views
        device_type = x.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            h = self.encoder(x)
            z = self.projector(h)
        h, z = h.float(), z.float()
        meta = dict(meta)
        if self.gather:
            h_ref, h_dist = gather_split(h, n_ref)
            z_ref, z_dist = gather_split(z, n_ref)
            meta = {k: gather_plain(v) if torch.is_tensor(v) else v for k, v in meta.items()}
        else:
            h_ref, h_dist, z_ref, z_dist = h[:n_ref], h[n_ref:], z[:n_ref], z[n_ref:]
        meta["n_views"] = n_views
        return self.loss(z_ref, z_dist, h_ref, h_dist, meta)


def build_model(cfg: PretrainConfig) -> PretrainModel:
    """Encoder (ImageNet / weights file / random), projector with the default dims, loss module."""

    encoder = with_readout(build_encoder(cfg.encoder, pretrained=cfg.pretrained, weights=cfg.weights), cfg.readout)
    freeze_stages(encoder, cfg.encoder_frozen_stages)
    hidden, out = default_projector_dims(encoder.feature_dim)
    scale = math.sqrt(encoder.feature_dim) if cfg.projector_input == "sqrt_dim" else 1.0
    projector = Projector(encoder.feature_dim, hidden, out, input_scale=scale)
    loss = build_loss(cfg, encoder.feature_dim, out)
    return PretrainModel(encoder, projector, loss, channels_last=cfg.channels_last)


def param_groups(model: PretrainModel, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters as SGD groups: one group at ``lr``, or, with ``encoder_lr_scale != 1`` or
    ``encoder_freeze_steps > 0``, the projector/prototypes at ``lr`` (first group, the one logged) and the
    encoder at ``lr * encoder_lr_scale`` (second group; see :func:`freeze_encoder_lr`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if cfg.encoder_lr_scale == 1.0 and cfg.encoder_freeze_steps == 0:
        return [{"params": trainable}]
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    head = [p for p in trainable if id(p) not in encoder_ids]
    enc = [p for p in trainable if id(p) in encoder_ids]
    return [{"params": head}, {"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale}]


def build_optimizer(model: PretrainModel, cfg: PretrainConfig) -> torch.optim.SGD:
    """SGD over :func:`param_groups` with the config's ``lr``, ``momentum`` and ``weight_decay`` (coupled
    decay: ``weight_decay * p`` is added to every trainable parameter's gradient, as in the reference)."""
    return torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def freeze_encoder_lr(opt: torch.optim.Optimizer, cfg: PretrainConfig, step: int) -> None:
    """Linear-probe-then-fine-tune warm-up: while ``step < encoder_freeze_steps`` (0-based, after the
    scheduler has set this step's rates) the encoder group's lr is 0, so only the projector and the
    prototypes move and the encoder starts adapting under a trained projector rather than a random one.
    SGD's momentum buffers still see the encoder's gradients, as they would with a tiny lr."""
    if step < cfg.encoder_freeze_steps and len(opt.param_groups) > 1:
        opt.param_groups[1]["lr"] = 0.0


def set_train_mode(model: nn.Module, bn_mode: str) -> None:
    """Training mode; with ``bn_mode == "frozen"`` batch-norm layers use their running statistics."""
    model.train()

    for module in model.modules():
        keep_frozen_stages_eval(module)
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def resolve_amp(cfg: PretrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    mode = cfg.amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError("amp=fp16 needs a CUDA device (use amp=bf16 on the CPU)")
    return torch.float16, True
