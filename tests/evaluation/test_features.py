"""Tests of shamisa.evaluation.features: feature layout (crop order, scale concatenation) and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shamisa.evaluation import features as feature_module
from shamisa.errors import ImageLoadError
from shamisa.images import load_image, two_scale_crops
from shamisa.evaluation.features import extract_features, feature_cache_key, feature_cache_paths

CROP = 32


class StubEncoder(torch.nn.Module):
    """Deterministic tiny encoder: h = L2-normalise([mean R, mean G, mean B, mean of top rows, 1])."""

    def __init__(self, tag: str = "a") -> None:
        super().__init__()
        self.name = "stub"
        self.feature_dim = 5
        self.tag = tag
        self.calls = 0

    def weights_hash(self) -> str:
        return f"stub-{self.tag}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.stack(
            [x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2)), x[:, :, :4].mean((1, 2, 3)), torch.ones(len(x))],
            dim=1,
        )
        return torch.nn.functional.normalize(h, dim=1)


def quadrant_image(path: Path, seed: int, h: int = 70, w: int = 90) -> Path:
    """An image whose four corners and center differ, so every crop has its own mean colour."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    colours = rng.integers(0, 256, size=(5, 3))
    arr[: h // 2, : w // 2] = colours[0]
    arr[: h // 2, w // 2 :] = colours[1]
    arr[h // 2 :, : w // 2] = colours[2]
    arr[h // 2 :, w // 2 :] = colours[3]
    arr[h // 2 - 6 : h // 2 + 6, w // 2 - 6 : w // 2 + 6] = colours[4]
    arr = np.clip(arr.astype(int) + rng.integers(-20, 20, size=arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def image_paths(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    return [quadrant_image(folder / f"q{i}.png", seed=i, h=70 + 5 * i, w=90 - 3 * i) for i in range(5)]


def test_layout_matches_crops_and_scales(image_paths) -> None:
    enc = StubEncoder()
    feats = extract_features(enc, image_paths, crop=CROP, batch_size=2, num_workers=0, progress=False)
    assert feats.shape == (5, 5, 10) and feats.dtype == np.float32
    for i, p in enumerate(image_paths):
        full, half = two_scale_crops(load_image(p), CROP)
        with torch.no_grad():
            hf, hh = enc(full).numpy(), enc(half).numpy()
        assert np.allclose(feats[i, :, :5], hf, atol=1e-6)  # first half: full-scale crop k
        assert np.allclose(feats[i, :, 5:], hh, atol=1e-6)  # second half: half-scale crop k
    # Crop order center, TL, TR, BL, BR: the TL crop of the full image is dominated by the TL colour.
    img = np.asarray(Image.open(image_paths[0]), dtype=np.float64) / 255.0
    tl = img[:CROP, :CROP].mean((0, 1))
    br = img[-CROP:, -CROP:].mean((0, 1))
    f_tl = feats[0, 1, :3] / feats[0, 1, 4]  # undo the normalisation with the constant-1 entry
    f_br = feats[0, 4, :3] / feats[0, 4, 4]
    assert np.allclose(f_tl, tl, atol=1e-3) and np.allclose(f_br, br, atol=1e-3)
    # Each half of the feature is L2-normalised.
    assert np.allclose(np.linalg.norm(feats[..., :5], axis=-1), 1.0, atol=1e-5)


def test_worker_processes_give_the_same_features(image_paths) -> None:
    a = extract_features(StubEncoder(), image_paths, crop=CROP, batch_size=3, num_workers=0, progress=False)
    b = extract_features(StubEncoder(), image_paths, crop=CROP, batch_size=2, num_workers=1, progress=False)
    assert np.array_equal(a, b)


def test_cache_hit_miss_stale_truncated(image_paths, tmp_path) -> None:
    cache = tmp_path / "cache"
    kw = dict(crop=CROP, batch_size=4, num_workers=0, progress=False, cache_dir=cache, dataset_name="toy")
    enc = StubEncoder()
    first = extract_features(enc, image_paths, **kw)
    assert enc.calls > 0 and not feature_module.last_stats.cache_hit
    key = feature_cache_key(enc, image_paths, dataset_name="toy", crop=CROP, amp=False)
    npy, meta = feature_cache_paths(cache, key, dataset_name="toy", encoder_name="stub")
    info = json.loads(meta.read_text())
    assert info["shape"] == [5, 5, 10] and info["weights_hash"] == "stub-a" and npy.exists()

    # Hit: no encoder call.
    enc2 = StubEncoder()
    again = extract_features(enc2, image_paths, **kw)
    assert enc2.calls == 0 and feature_module.last_stats.cache_hit
    assert np.array_equal(first, again)

    # Other weights, crop, dataset or image list: another key, so a miss.
    other = StubEncoder(tag="b")
    extract_features(other, image_paths, **kw)
    assert other.calls > 0
    assert feature_cache_key(enc, image_paths[:4], dataset_name="toy", crop=CROP, amp=False) != key
    assert feature_cache_key(enc, image_paths, dataset_name="toy", crop=CROP + 1, amp=False) != key
    assert feature_cache_key(enc, image_paths, dataset_name="toy", crop=CROP, amp=True) != key

    # Truncated array file: rebuilt.
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])
    enc3 = StubEncoder()
    rebuilt = extract_features(enc3, image_paths, **kw)
    assert enc3.calls > 0 and np.array_equal(rebuilt, first)
    assert npy.stat().st_size == len(data)

    # Same size, altered bytes: checksum mismatch, rebuilt.
    raw = bytearray(npy.read_bytes())
    raw[-3] ^= 0xFF
    npy.write_bytes(bytes(raw))
    enc4 = StubEncoder()
    assert np.array_equal(extract_features(enc4, image_paths, **kw), first) and enc4.calls > 0

    # Stale or broken sidecar: rebuilt.
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "key": "0" * 64}))
    enc5 = StubEncoder()
    extract_features(enc5, image_paths, **kw)
    assert enc5.calls > 0
    meta.write_text("{not json")
    enc6 = StubEncoder()
    extract_features(enc6, image_paths, **kw)
    assert enc6.calls > 0
    # No temporary files left behind.
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_bad_image_names_the_file(image_paths, tmp_path) -> None:
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for workers in (0, 1):
        with pytest.raises(ImageLoadError, match="broken.jpg"):
            extract_features(StubEncoder(), [*image_paths, bad], crop=CROP, num_workers=workers, progress=False)


def test_empty_list_and_small_images(tmp_path) -> None:
    assert extract_features(StubEncoder(), [], crop=CROP, progress=False).shape == (0, 5, 10)
    small = quadrant_image(tmp_path / "small.png", seed=9, h=20, w=24)  # smaller than a crop: enlarged
    feats = extract_features(StubEncoder(), [small], crop=CROP, num_workers=0, progress=False)
    assert feats.shape == (1, 5, 10) and np.isfinite(feats).all()


def test_progress_lines_when_not_a_terminal(image_paths, capsys) -> None:
    extract_features(StubEncoder(), image_paths, crop=CROP, batch_size=2, num_workers=0, progress=True, dataset_name="toy")
    err = capsys.readouterr().err
    assert "features toy: 5/5" in err
    assert capsys.readouterr().out == ""  # nothing on stdout
