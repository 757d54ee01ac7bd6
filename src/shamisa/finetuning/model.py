"""The LML-IQA network: encoder + quality head + contrastive projector, its EMA teacher update,
mixed precision, the scoring of image files and the model file it is saved in
(``format = "shamisa-lml-model"``: safetensors with the run config in the metadata)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from shamisa.errors import ModelFileError
from shamisa.fileio import atomic_path
from shamisa.finetuning.data import EvalMode, eval_views
from shamisa.images import load_image
from shamisa.models import build_encoder

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "LmlModel", "autocast", "ema_update", "load_lml_model", "predict_paths", "save_lml_model"]

FORMAT_NAME = "shamisa-lml-model"
FORMAT_VERSION = "1"


class LmlModel(nn.Module):
    """Encoder + quality head + contrastive projector.

    Args:
        encoder: an encoder with ``feature_dim`` and ``features(x) -> (N, D)``.
        head_hidden, proj_hidden, proj_dim: MLP sizes.
    """

    def __init__(self, encoder: nn.Module, head_hidden: int = 256, proj_hidden: int = 512, proj_dim: int = 128) -> None:
        super().__init__()
        dim = int(encoder.feature_dim)  # type: ignore[arg-type]
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(dim, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, 1))
        self.projector = nn.Sequential(
            nn.Linear(dim, proj_hidden), nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) in [0, 1] -> (scores (N,), z (N, E) L2-normalised, features (N, D))."""
        f = self.encoder.features(x)  # type: ignore[operator]
        score = self.head(f).squeeze(-1)
        z = F.normalize(self.projector(f).float(), dim=-1)
        return score, z, f

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of crops; no gradient."""
        return self.forward(x)[0]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student (parameters); buffers are copied."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_paths(
    model: LmlModel,
    paths: Sequence[str],
    *,
    crop: int,
    mode: EvalMode = "five_two_scale",
    batch: int = 50,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Predicted quality of each image = mean over its evaluation crops; (N,) float64."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[float] = []
    pending: list[torch.Tensor] = []
    counts: list[int] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.cat(pending).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            s = model.predict(x).float().cpu()
        i = 0
        for c in counts:
            preds.append(float(s[i : i + c].mean()))
            i += c
        pending.clear()
        counts.clear()

    for p in paths:
        v = eval_views(load_image(p), crop, mode)
        pending.append(v)
        counts.append(v.shape[0])
        if sum(counts) >= batch:
            flush()
    flush()
    model.train(was_training)
    return np.asarray(preds, dtype=np.float64)


def save_lml_model(model: LmlModel, path: Path, meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_lml_model(path: str | Path, *, device: str = "cpu") -> tuple[LmlModel, dict[str, Any]]:
    """Rebuild an :class:`LmlModel` from a checkpoint written by :func:`finetune`.

    Returns:
        ``(model in eval mode, metadata with the config decoded)``.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(p), device=device)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ModelFileError(f"{p}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{p}: not an LML-IQA model file (format {meta.get('format')!r})")
    cfg = json.loads(meta["config"])
    enc = build_encoder(cfg["encoder"], pretrained=False)
    model = LmlModel(enc, cfg["head_hidden"], cfg["proj_hidden"], cfg["proj_dim"])
    model.load_state_dict(tensors)
    meta["config"] = cfg
    return model.eval(), meta
