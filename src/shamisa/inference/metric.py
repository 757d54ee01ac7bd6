"""The pyiqa-style metric: ``create_metric(name)`` gives a ``torch.nn.Module`` that maps images to
scores in [0, 1] (higher is better), with pyiqa's attributes (``lower_better``, ``score_range``,
``metric_mode``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from shamisa.inference.quality_model import QualityModel, load

__all__ = ["ShamisaMetric", "create_metric"]


class ShamisaMetric(nn.Module):
    """pyiqa-style metric module: ``metric(x) -> (N,)`` scores in [0, 1], higher is better.

    ``x`` is a tensor (N, 3, H, W) / (3, H, W) in [0, 1], a path, a list of paths or a PIL image.
    Gradients flow to a tensor input that requires them (the encoder itself stays frozen).
    """

    lower_better = False
    score_range = "0, 1"
    metric_mode = "NR"

    def __init__(self, model: QualityModel, name: str = "shamisa") -> None:
        super().__init__()
        self.net = model
        self.metric_name = name

    @property
    def device(self) -> torch.device:
        return self.net.device

    def forward(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            if x.requires_grad:
                return self.net(x)
            with torch.inference_mode():
                return self.net(x).clone()
        return torch.as_tensor(np.atleast_1d(self.net.score(x)), dtype=torch.float32)


def create_metric(name: str = "shamisa", device: str | torch.device | None = None, **kwargs: Any) -> ShamisaMetric:
    """A pyiqa-style ``nn.Module`` for a bundled model name (``"shamisa"`` = ``"default"``) or model file.

    Attributes of the result: ``lower_better=False``, ``score_range="0, 1"``, ``metric_mode="NR"``.
    """
    return ShamisaMetric(load(name, device=device, **kwargs), name=str(name))
