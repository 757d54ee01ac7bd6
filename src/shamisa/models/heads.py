"""Heads on top of the encoder representation h."""

from __future__ import annotations

import torch
from torch import nn


def default_projector_dims(feature_dim: int) -> tuple[int, int]:
    """(hidden, out) sizes of the SHAMISA expander for a representation of size ``feature_dim``.

    The paper's ResNet-50 expander is 2048 -> 3072 -> 768, i.e. hidden = 1.5 D and out = 0.375 D;
    the same ratios give 1280 -> 1920 -> 480 for EfficientNet-Lite and 512 -> 768 -> 192 for ResNet-18.
    """
    if feature_dim <= 0:
        raise ValueError(f"feature_dim must be positive, got {feature_dim}")
    return max(1, round(1.5 * feature_dim)), max(1, round(0.375 * feature_dim))


class Projector(nn.Module):
    """Expander g: Linear(in, hidden) -> ReLU -> Linear(hidden, out); no BatchNorm, output not normalised.

    Args:
        in_dim: representation size D.
        hidden_dim: hidden width.
        out_dim: embedding size of z.
        input_scale: factor applied to h before the first layer. The paper feeds the L2-normalised h
            as is (1.0): its components are ~1/sqrt(D), so a freshly initialised expander outputs z
            with a per-dimension spread near 0.01 and the VICReg variance hinge sits at its ceiling
            for thousands of steps. ``sqrt(D)`` gives h unit-size components instead (the ``cpu``
            preset's ``projector_input="sqrt_dim"``); h itself, the evaluated representation, is
            unchanged.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, input_scale: float = 1.0) -> None:
        super().__init__()
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.input_scale = float(input_scale)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        if self.input_scale != 1.0:
            h = h * self.input_scale
        return self.net(h)
