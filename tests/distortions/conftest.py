"""Fixtures shared by the distortion tests."""

from __future__ import annotations

import pytest
import torch

from conftest import natural_like_image

H, W = 48, 64


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Three natural-looking test images, (3, 3, 48, 64)."""
    return torch.stack([natural_like_image(H, W, seed=s) for s in range(3)])
