"""The linear probe's crops against a reference computed here: five crops (center, top-left, top-right,
bottom-left, bottom-right) of the full image and of the image resized to (W // 2, H // 2) with an
anti-aliased bicubic filter (Pillow's, per channel in float mode), crop ``k`` of the full scale paired
with crop ``k`` of the half scale.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import natural_like_image
from shamisa.evaluation.features import encode_image

CROP = 48


def _boxes(h: int, w: int, size: int) -> list[tuple[int, int]]:
    return [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]


def _pil_half(img: np.ndarray) -> np.ndarray:
    """(3, H, W) float -> (3, H // 2, W // 2), Pillow's anti-aliased bicubic resize of each channel."""
    _, h, w = img.shape
    chans = [
        np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w // 2, h // 2), Image.Resampling.BICUBIC))
        for c in img
    ]
    return np.clip(np.stack(chans), 0.0, 1.0)


def _reference_features(img: np.ndarray, size: int) -> np.ndarray:
    half = _pil_half(img)
    rows = []
    for (t, l), (th, lh) in zip(_boxes(*img.shape[1:], size), _boxes(*half.shape[1:], size), strict=True):
        full_crop = img[:, t : t + size, l : l + size].reshape(-1)
        half_crop = half[:, th : th + size, lh : lh + size].reshape(-1)
        rows.append(np.concatenate([full_crop, half_crop]))
    return np.stack(rows)


@pytest.mark.parametrize(("h", "w"), [(110, 150), (131, 97)])
def test_probe_crops_are_resize_then_crop(h, w):
    image = natural_like_image(h, w, seed=3)
    # an "encoder" that returns its input pixels: the probe features are then the crops themselves
    feats = encode_image(lambda x: x.float().flatten(1), image, crop=CROP)
    ref = _reference_features(image.double().numpy(), CROP)
    assert feats.shape == ref.shape == (5, 2 * 3 * CROP * CROP)
    d = 3 * CROP * CROP
    np.testing.assert_array_equal(feats[:, :d], ref[:, :d].astype(np.float32))  # full scale: exact pixels
    np.testing.assert_allclose(feats[:, d:], ref[:, d:], atol=1e-5)  # half scale: the two resamplers agree to ~2e-7


def test_crop_helpers_edges_defaults_and_messages() -> None:
    """resize on a batch equals per image and never undershoots 0; half scale of a tiny image keeps one
    pixel; enlargement keeps the aspect on both sides; the default crop is 224; the messages."""
    import re

    import pytest

    from shamisa.images import center_corners_crops, ensure_min_side, half_scale, resize, two_scale_crops

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 40, 30, generator=g) > 0.5).float()  # hard 0/1 edges: bicubic over/undershoots
    out = resize(x, (17, 23))
    assert out.shape == (2, 3, 17, 23) and out.min() >= 0.0 and out.max() <= 1.0
    torch.testing.assert_close(out[1], resize(x[1], (17, 23)))
    assert half_scale(torch.rand(3, 3, 3, generator=g)).shape == (3, 1, 1)
    wide = ensure_min_side(torch.rand(3, 50, 100, generator=g), 224)
    assert wide.shape == (3, 224, 448)  # scale 224 / 50 on both sides
    tall = ensure_min_side(torch.rand(3, 100, 50, generator=g), 224)
    assert tall.shape == (3, 448, 224)
    big = torch.rand(3, 230, 240, generator=g)
    assert center_corners_crops(big).shape == (5, 3, 224, 224)
    full, halfs = two_scale_crops(big)
    assert full.shape == halfs.shape == (5, 3, 224, 224)
    with pytest.raises(ValueError, match=re.escape("expected (3, H, W), got (1, 3, 230, 240)")):
        center_corners_crops(big[None])
    with pytest.raises(ValueError, match=re.escape("image 240x100 is smaller than the crop size 224")):
        center_corners_crops(torch.rand(3, 100, 240, generator=g))
