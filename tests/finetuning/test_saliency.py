"""Spectral-residual saliency, box means and the multi-scale crop layout used by LML-IQA."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shamisa.finetuning.saliency import (
    box_means,
    extract_crops,
    sample_crop_boxes,
    select_anchor,
    spectral_residual_saliency,
)


def _blob_image(top: int, left: int, size: int = 40, h: int = 160, w: int = 240, seed: int = 0) -> torch.Tensor:
    """A smooth gradient image with one textured (noise) square at (top, left)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = (0.35 + 0.25 * xx + 0.15 * yy).expand(3, h, w).clone()
    img[:, top : top + size, left : left + size] = torch.rand(3, size, size, generator=g)
    return img


# a 2 x 3 grid of non-overlapping 80 px boxes covering the 160 x 240 image
GRID = torch.tensor([[t, l, 80] for t in (0, 80) for l in (0, 80, 160)])


@pytest.mark.parametrize("cell", range(6))
def test_spectral_residual_picks_the_textured_blob(cell: int) -> None:
    top, left = GRID[cell, 0].item() + 20, GRID[cell, 1].item() + 20
    img = _blob_image(top, left, seed=cell)
    sal = spectral_residual_saliency(img)
    assert sal.shape == img.shape[-2:]
    assert float(sal.min()) >= 0.0 and float(sal.max()) <= 1.0
    scores = box_means(sal, GRID)
    assert int(select_anchor(scores)) == cell
    # the blob's box is clearly more salient than the average of the others
    others = torch.cat([scores[:cell], scores[cell + 1 :]])
    assert scores[cell] > 2 * others.mean()


def test_spectral_residual_batch_matches_single_and_constant_is_zero() -> None:
    a, b = _blob_image(10, 10), _blob_image(90, 170, seed=3)
    batch = spectral_residual_saliency(torch.stack([a, b]))
    assert torch.allclose(batch[0], spectral_residual_saliency(a), atol=1e-5)
    assert torch.allclose(batch[1], spectral_residual_saliency(b), atol=1e-5)
    flat = spectral_residual_saliency(torch.full((3, 64, 64), 0.5))
    assert torch.count_nonzero(flat) == 0
    with pytest.raises(ValueError):
        spectral_residual_saliency(torch.zeros(2, 64, 64))


def test_box_means_against_direct_mean() -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.rand(50, 70, generator=g)
    boxes = torch.tensor([[0, 0, 50], [3, 7, 11], [49, 69, 1], [10, 20, 30]])
    got = box_means(values, boxes)
    for k, (t, l, e) in enumerate(boxes.tolist()):
        assert got[k].item() == pytest.approx(values[t : t + e, l : l + e].double().mean().item(), abs=1e-9)
    with pytest.raises(ValueError):
        box_means(values, torch.tensor([[45, 0, 10]]))


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(32, 200),
    w=st.integers(32, 200),
    crop=st.integers(16, 32),
    m=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_crop_layout_properties(h: int, w: int, crop: int, m: int, seed: int) -> None:
    boxes = sample_crop_boxes(h, w, crop, m, (1.0, 0.5), generator=torch.Generator().manual_seed(seed))
    assert boxes.shape == (m, 4)
    top, left, ext, scale = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + ext <= h).all() and (left + ext <= w).all()
    # round-robin scales: even crops full scale, odd crops half scale
    assert scale.tolist() == [i % 2 for i in range(m)]
    assert (ext[scale == 0] == crop).all()
    assert (ext[scale == 1] == min(2 * crop, h, w)).all()
    # same generator seed -> same boxes
    again = sample_crop_boxes(h, w, crop, m, (1.0, 0.5), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(boxes, again)


def test_crop_layout_covers_positions_and_rejects_bad_input() -> None:
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(100, 100, 20, 400, (1.0,), generator=g)
    # uniform positions: both extremes of the valid range are reached
    assert boxes[:, 0].min() <= 2 and boxes[:, 0].max() >= 78
    with pytest.raises(ValueError):
        sample_crop_boxes(10, 100, 20, 2)
    with pytest.raises(ValueError):
        sample_crop_boxes(100, 100, 20, 0)
    with pytest.raises(ValueError):
        sample_crop_boxes(100, 100, 20, 2, (1.5,))


def test_extract_crops_reads_the_boxes() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 60, 80, generator=g)
    boxes = torch.tensor([[5, 7, 16, 0], [10, 20, 32, 1]])
    crops = extract_crops(img, boxes, 16)
    assert crops.shape == (2, 3, 16, 16)
    assert torch.equal(crops[0], img[:, 5:21, 7:23])
    # the half-scale crop is the 32 px region averaged down: its mean is preserved
    assert crops[1].mean().item() == pytest.approx(img[:, 10:42, 20:52].mean().item(), abs=2e-3)
