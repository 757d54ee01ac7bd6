"""Fixtures shared by the distortion tests."""

from __future__ import annotations

import pytest
import torch

from conftest import natural_like_image

H, W = 48, 64


@pytest.fixture
def batch(device: torch.device) -> torch.Tensor:
    """Three natural-looking test images, (3, 3, 48, 64), on the test's device (``--device``): every test that
    takes it runs once per device chosen."""
    return torch.stack([natural_like_image(H, W, seed=s) for s in range(3)]).to(device)
