"""Quality maps: geometry, batching, agreement with score(), the overlay, and a localisation check on a
half-distorted synthetic image with the bundled default model."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import shamisa
from conftest import natural_like_image
from shamisa.distortions import apply_distortion, severity_to_value
from shamisa.errors import ConfigError, ImageLoadError, ShamisaError
from shamisa.inference.maps import (
    heatmap_rgba,
    patch_grid,
    quality_map,
    quality_maps,
    render_overlay,
    save_overlay,
    upsample_grid,
)


@pytest.fixture(scope="module")
def model():
    return shamisa.load("default", device="cpu")


def _distort(x: torch.Tensor, name: str, severity: float, seed: int = 0) -> torch.Tensor:
    v, _ = severity_to_value(name, torch.tensor([severity]))
    return apply_distortion(x[None], name, v.float(), torch.Generator().manual_seed(seed))[0]


@pytest.fixture(scope="module")
def half_distorted() -> torch.Tensor:
    """256 x 448: the left half pristine, the right half strongly blurred then noised."""
    x = natural_like_image(256, 448, seed=3)
    bad = _distort(_distort(x, "gaublur", 3.5), "whitenoise", 3.0, seed=1)
    y = x.clone()
    y[:, :, 224:] = bad[:, :, 224:]
    return y


def test_patch_grid_covers_the_image_and_ends_on_the_edges():
    tops, lefts = patch_grid(300, 500, 224, 112)
    assert tops == [0, 76] and lefts == [0, 112, 224, 276]
    assert patch_grid(224, 224, 224, 112) == ([0], [0])
    assert patch_grid(448, 448, 224, 224) == ([0, 224], [0, 224])


@pytest.mark.parametrize(("patch", "stride"), [(16, 8), (224, 0), (224, 300), (224.0, 112), (True, 1)])
def test_patch_grid_rejects_bad_parameters(patch, stride):
    with pytest.raises(ConfigError):
        patch_grid(500, 500, patch, stride)


def test_upsample_grid_hits_the_centres_and_keeps_constants():
    grid = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    cy, cx = np.array([10.5, 30.5]), np.array([5.5, 45.5])
    m = upsample_grid(grid, cy, cx, 40, 50)
    assert m.shape == (40, 50) and m.dtype == np.float32
    assert m[10, 5] == pytest.approx(0.0) and m[30, 45] == pytest.approx(3.0) and m[10, 45] == pytest.approx(1.0)
    assert m[0, 0] == pytest.approx(0.0) and m[-1, -1] == pytest.approx(3.0)  # constant beyond the centres
    assert np.all(np.diff(m[20], axis=0) >= 0)  # monotone between increasing centres
    flat = upsample_grid(np.full((1, 1), 0.7, np.float32), np.array([5.0]), np.array([5.0]), 9, 13)
    assert np.allclose(flat, 0.7)


def test_map_marks_the_distorted_half_lower(model, half_distorted):
    qm = model.quality_map(half_distorted)
    assert qm.map.shape == (256, 448) and qm.map.dtype == np.float32
    assert qm.grid.shape == (2, 3) and qm.patch == model.crop and qm.stride == model.crop // 2
    assert 0.0 <= qm.map.min() and qm.map.max() <= 1.0
    left, right = float(qm.map[:, :224].mean()), float(qm.map[:, 224:].mean())
    assert left > right + 0.05, (left, right)
    assert qm.grid[:, 0].min() > qm.grid[:, 2].max()  # every clean-column patch above every distorted one


def test_a_patch_value_is_the_score_of_that_patch(model, half_distorted):
    qm = quality_map(model, half_distorted, stride=224)
    assert qm.grid.shape == (2, 2)
    patch = half_distorted[:, 32:256, 224:448]  # bottom-right patch: rows start at 256 - 224
    assert float(qm.grid[1, 1]) == pytest.approx(model.score(patch), abs=1e-5)
    assert float(qm.raw_grid[1, 1]) == pytest.approx(model.score(patch, return_raw=True).raw, abs=1e-3)


def test_batch_equals_one_at_a_time(model, half_distorted):
    other = natural_like_image(240, 300, seed=5)
    both = quality_maps(model, [half_distorted, other], batch_size=5)
    one = [quality_map(model, half_distorted), quality_map(model, other)]
    for a, b in zip(both, one, strict=True):
        assert a.map.shape == b.map.shape
        np.testing.assert_allclose(a.grid, b.grid, atol=1e-5)
        np.testing.assert_allclose(a.map, b.map, atol=1e-5)


def test_encoder_sees_batches_of_patches_not_whole_scorings(model, half_distorted, monkeypatch):
    calls: list[int] = []
    real = model._inference_encoder

    def spy(x):
        enc = real(x)
        return lambda t: (calls.append(t.shape[0]), enc(t))[1]

    monkeypatch.setattr(model, "_inference_encoder", spy)
    quality_maps(model, [half_distorted, half_distorted], batch_size=8)  # 12 patches x 2 views
    assert calls == [16, 8]


@pytest.mark.parametrize(("h", "w"), [(250, 301), (100, 150), (230, 40)])
def test_map_has_the_image_shape_whatever_its_size(model, h, w):
    arr = (natural_like_image(h, w, seed=2).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    qm = quality_map(model, arr)
    assert qm.map.shape == (h, w) and (qm.width, qm.height) == (w, h)
    if min(h, w) < model.crop:
        assert qm.flags == ("enlarged",) and min(qm.grid.shape) == 1
    assert np.isfinite(qm.map).all()


def test_paths_and_custom_patch(model, tmp_path, half_distorted):
    p = tmp_path / "half.png"
    Image.fromarray((half_distorted.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(p)
    qm = quality_map(model, p, patch=128, stride=64)
    assert qm.name.endswith("half.png") and qm.map.shape == (256, 448) and qm.grid.shape == (3, 6)
    big = quality_map(model, p, patch=256, stride=192)  # larger than the crop: the full protocol per patch
    assert big.grid.shape == (1, 2) and big.grid[0, 0] > big.grid[0, 1]


def test_bad_inputs_raise_typed_errors(model, tmp_path):
    x = natural_like_image(240, 240)
    with pytest.raises(ConfigError):
        quality_map(model, x, patch=8)
    with pytest.raises(ConfigError):
        quality_map(model, x, stride=500)
    with pytest.raises(ConfigError):
        quality_maps(model, [])
    with pytest.raises(ConfigError):
        quality_map(model, [x, x])
    with pytest.raises(ConfigError):
        quality_maps(model, [x], batch_size=0)
    with pytest.raises(ImageLoadError):
        quality_map(model, tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError):
        quality_map(model, tmp_path / "text.png")
    with pytest.raises(ImageLoadError):
        quality_map(model, np.zeros((240, 240, 5), np.uint8))
    with pytest.raises(ImageLoadError):
        quality_map(model, x * 3)
    with pytest.raises(ImageLoadError):
        quality_map(model, torch.rand(3, 4, 300))
    with pytest.raises(ShamisaError):
        quality_map(model, object())


def test_overlay_png_has_a_colour_bar_and_the_heatmap_the_image_aspect(model, half_distorted, tmp_path):
    qm = quality_map(model, half_distorted)
    png = render_overlay(qm)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.width > im.height > 200
    out = save_overlay(qm, tmp_path / "maps" / "half.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data, lo, hi = heatmap_rgba(qm, max_side=224)
    heat = Image.open(io.BytesIO(data))
    assert heat.size == (224, 128) and lo <= float(qm.grid.min()) and hi >= float(qm.grid.max())
    d = qm.to_dict()
    assert d["width"] == 448 and len(d["grid"]) == 2 and len(d["map"]) == 256 and d["map_step"] == 1

