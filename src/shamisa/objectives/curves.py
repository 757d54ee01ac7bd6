"""Severity-gap -> relation-strength curves.

A relation between two images whose (variable-slot) severity indices differ by ``gap`` on the
continuous index scale ``[0, 4]`` gets the strength ``s(gap)``; ``s(0) = 1`` and ``s`` decreases.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from shamisa.errors import ConfigError

Curve = Callable[[Tensor], Tensor]


def exponential_curve(gap: Tensor) -> Tensor:
    """``s(d) = exp(-3 d / 4)`` (the default; ``s(4) = exp(-3) ~ 0.05``).

    Args:
        gap: severity gaps, any shape, ``>= 0``.

    Returns:
        Strengths of the same shape, float.
    """
    return torch.exp(-0.75 * gap.float())


def reciprocal_curve(gap: Tensor) -> Tensor:
    """``s(d) = 1 / (1 + d / 4)`` (the "original" curve, ablation F1; ``s(4) = 0.5``)."""
    return torch.reciprocal(1.0 + gap.float() / 4.0)


CURVES: dict[str, Curve] = {"exponential": exponential_curve, "original": reciprocal_curve}


def get_curve(curve: str | Curve) -> Curve:
    """Resolve a curve name (``"exponential"`` or ``"original"``) or pass a callable through.

    Raises:
        ConfigError: for an unknown name.
    """
    if callable(curve):
        return curve
    try:
        return CURVES[curve]
    except KeyError:
        raise ConfigError(
            f"unknown severity curve {curve!r}; choose one of {', '.join(sorted(CURVES))}"
        ) from None
