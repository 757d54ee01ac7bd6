from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shamisa.errors import ImageLoadError
from shamisa.images import center_corners_crops, half_scale, load_image, two_scale_crops


def _save(tmp_path, name, img, **kw):
    p = tmp_path / name
    img.save(p, **kw)
    return p


def test_rgb_png_roundtrip(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = load_image(_save(tmp_path, "a.png", Image.fromarray(arr)))
    assert x.shape == (3, 20, 30) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1"])
def test_modes_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (16, 12), (200, 100, 50)).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    x = load_image(_save(tmp_path, f"m.{ext}", img))
    assert x.shape == (3, 12, 16)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_16bit_keeps_precision(tmp_path):
    arr = np.full((10, 10), 32768, dtype=np.uint16)
    x = load_image(_save(tmp_path, "g16.png", Image.fromarray(arr)))
    assert x.shape == (3, 10, 10)
    assert abs(float(x.mean()) - 32768 / 65535) < 1e-4


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    p = _save(tmp_path, "r.jpg", img, exif=exif)
    assert load_image(p).shape == (3, 40, 20)


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty"), (b"not an image at all", "not a recognised"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "")],
)
def test_bad_files_raise_clear_error(tmp_path, content, reason):
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    with pytest.raises(ImageLoadError) as e:
        load_image(p)
    assert str(p) in str(e.value) and reason in str(e.value)


def test_truncated_jpeg(tmp_path):
    p = _save(tmp_path, "t.jpg", Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError):
        load_image(p)


def test_missing_and_tiny(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="smaller than"):
        load_image(_save(tmp_path, "tiny.png", Image.new("RGB", (1, 1))))


def test_bomb_guard(tmp_path):
    p = _save(tmp_path, "big.png", Image.new("L", (300, 300)))
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(p, max_pixels=1000)


def test_crops_positions():
    x = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8)
    c = center_corners_crops(x, 4)
    assert c.shape == (5, 3, 4, 4)
    assert torch.equal(c[1], x[:, :4, :4]) and torch.equal(c[4], x[:, 2:, 4:])
    assert torch.equal(c[0], x[:, 1:5, 2:6])


def test_two_scale_crops_small_image_is_enlarged():
    full, half = two_scale_crops(torch.rand(3, 100, 150), 64)
    assert full.shape == half.shape == (5, 3, 64, 64)
    assert half_scale(torch.rand(3, 101, 150)).shape == (3, 50, 75)
