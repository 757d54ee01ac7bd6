"""Export the encoder of a pretraining checkpoint as a shamisa encoder file (``shamisa export``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from shamisa.errors import TrainingError
from shamisa.models import build_encoder, save_encoder
from shamisa.training.checkpoint import read_checkpoint

__all__ = ["export_encoder"]


def export_encoder(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, fp16: bool = False) -> Path:
    """Write the encoder of a pretraining checkpoint as a shamisa encoder file.

    Args:
        checkpoint: a run folder, its ``ckpt`` folder, ``last.json`` or a checkpoint weights file.
        out: destination ``.safetensors`` (loadable by ``shamisa.models.load_encoder`` and
            ``shamisa evaluate --weights``).
        fp16: store the weights as float16 (half the size).

    Returns:
        The written path.
    """
    record, weights_path, _ = read_checkpoint(checkpoint)
    cfg = record["config"]
    state = load_file(str(weights_path))
    enc_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not enc_state:
        raise TrainingError(f"{weights_path}: no encoder weights in this checkpoint")
    encoder = build_encoder(cfg["encoder"])
    try:
        encoder.load_state_dict(enc_state, strict=True)
    except RuntimeError as e:
        raise TrainingError(f"{weights_path}: encoder weights do not fit {cfg['encoder']}: {e}") from None
    metadata = {
        "recipe": f"shamisa-pretrain/{cfg.get('method', 'shamisa')}",
        "step": record["step"],
        "total_steps": record.get("total_steps"),
        "finished": record.get("finished"),
        "stop_reason": record.get("stop_reason"),
        "epoch": record.get("epoch"),
        "summary": record.get("summary", {}),
        "config": cfg,
    }
    return save_encoder(out, encoder, metadata, dtype=torch.float16 if fp16 else None)
