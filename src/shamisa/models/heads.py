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
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(h)
