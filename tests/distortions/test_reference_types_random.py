"""The remaining distortion types against references written here from their definitions.

* colordiff and jpeg2000 are deterministic: a direct formula (colordiff: Lab chroma blurred and scaled)
  and the codec called with the documented settings (jpeg2000).
* motionblur, colorshift, jitter, noneccpatch and colorblock draw a direction, positions or colours per
  sample. Their references check everything the draw leaves fixed: the impulse response of motion blur
  (a centred line of the level's length, at any angle in [0, 180)), colour shift's blend of a shifted
  green channel through an edge weight computed here, the displacement statistics of jitter on a linear
  ramp (exact for one round), and the geometry of copied patches and painted blocks on a noise image.

Only the public package ``shamisa.distortions`` (and the module constants it documents) is imported.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from conftest import natural_like_image
from distortions.filter_reference import correlate_replicate, gaussian_taps
from distortions.lab_reference import lab_to_rgb, rgb_to_lab
from shamisa.distortions import apply_distortion


def _apply(x: torch.Tensor, name: str, v: float, device: torch.device, seed: int = 0) -> np.ndarray:
    y = apply_distortion(x.to(device), name, v, generator=torch.Generator().manual_seed(seed))
    return y.cpu().double().numpy()


# --------------------------------------------------------------------------------------------------
# deterministic


@pytest.mark.parametrize("v", [1, 6])
def test_colordiff_blurs_and_scales_the_chroma(v, device):
    x = natural_like_image(20, 28).double() * 0.6 + 0.2  # mostly in gamut after the chroma change
    lab = rgb_to_lab(x.numpy())
    lab[1:] = v * correlate_replicate(lab[1:], gaussian_taps(1.5 * v + 2.0))
    ref = lab_to_rgb(lab)
    y = _apply(x[None], "colordiff", v, device)[0]
    # the output is truncated to 8 bits: at most 1/255 below the exact value
    assert np.all(y <= ref + 2e-3) and np.all(y >= ref - 1 / 255 - 2e-3)
    assert np.abs(y - ref).mean() < 1 / 255  # and on average within the truncation step


@pytest.mark.parametrize("ratio", [16, 120])
def test_jpeg2000_is_the_codec_at_the_level_ratio(ratio, device):
    from PIL import Image, features

    if not features.check("jpg_2000"):
        pytest.skip("Pillow without OpenJPEG")
    x = natural_like_image(48, 64).double()
    arr = np.floor(x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    # rate mode, one layer at the compression ratio, 9/7 wavelet with the colour transform, as many
    # resolutions as the image allows (floor(log2(48)) + 1 = 6), LRCP progression
    Image.fromarray(arr).save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[ratio],
                              num_resolutions=6, prog_order="LRCP", irreversible=True, mct=1)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255.0
    y = _apply(torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255.0, "jpeg2000", ratio, device)[0]
    np.testing.assert_allclose(y.transpose(1, 2, 0), ref, atol=1e-6)
    # and the ratio matters: the other level's codec output differs
    assert np.abs(ref - arr / 255.0).mean() > 1e-3


# --------------------------------------------------------------------------------------------------
# motion blur: the impulse response


def _impulse_response(v: float, seed: int, device: torch.device, size: int = 41) -> np.ndarray:
    x = torch.zeros(1, 3, size, size, dtype=torch.float64)
    x[:, :, size // 2, size // 2] = 1.0
    return _apply(x, "motionblur", v, device, seed=seed)[0, 0]


def _moments(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (x, y) and 2x2 covariance of a non-negative kernel."""
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]].astype(np.float64)
    w = k / k.sum()
    c = np.array([(w * xx).sum(), (w * yy).sum()])
    dx, dy = xx - c[0], yy - c[1]
    cov = np.array([[(w * dx * dx).sum(), (w * dx * dy).sum()], [(w * dx * dy).sum(), (w * dy * dy).sum()]])
    return c, cov


@pytest.mark.parametrize("length", [4, 10])
def test_motionblur_impulse_response_is_a_centred_line_of_the_level_length(length, device):
    for seed in range(4):
        k = _impulse_response(length, seed, device)
        # (long kernels are applied through an FFT in single precision: 1e-6 round-off)
        assert k.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-6)  # symmetric about the centre
        c, cov = _moments(k)
        np.testing.assert_allclose(c, [20, 20], atol=1e-4)
        lam = np.linalg.eigvalsh(cov)  # ascending
        # a segment covering `length` pixels (end pixel centres length - 1 apart) has variance
        # (length - 1)^2 / 12 along it; the bilinear splat adds at most 1/4 along and across
        along = (length - 1) ** 2 / 12
        assert along - 0.05 <= lam[1] <= along + 0.25 + 0.05, (seed, lam, along)
        assert lam[0] <= 0.25 + 0.05, (seed, lam)


def test_motionblur_angle_covers_the_half_turn(device):
    angles = []
    for seed in range(24):
        _, cov = _moments(_impulse_response(10, seed, device))
        w, vecs = np.linalg.eigh(cov)
        ex, ey = vecs[:, 1]
        angles.append(math.degrees(math.atan2(-ey, ex)) % 180.0)  # counter-clockwise, y axis down
    angles = np.array(angles)
    # uniform on [0, 180): each quarter of the range is hit (the chance of missing one is < 4 * 0.75^24)
    counts = np.histogram(angles, bins=4, range=(0, 180))[0]
    assert np.all(counts > 0), angles


# --------------------------------------------------------------------------------------------------
# colour shift: a shifted green channel blended in through an edge weight


def _edge_weight(x: np.ndarray) -> np.ndarray:
    """(3, H, W) -> (H, W): the luma's central-difference gradient magnitude (replicate borders), a
    Gaussian of sigma 4, min-max normalised, clipped to its 1 % and 99 % percentiles (ascending rank
    round(0.99 n), 1-based)."""
    gray = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    p = np.pad(gray, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) / 2
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
    e = correlate_replicate(np.sqrt(gx**2 + gy**2), gaussian_taps(4.0))
    e = (e - e.min()) / (e.max() - e.min())
    n = e.size
    k = int(round(0.99 * n))
    hi = np.sort(e.ravel())[k - 1]
    lo = 1 - np.sort((1 - e).ravel())[k - 1]
    return np.clip(e, lo, hi)


@pytest.mark.parametrize(("v", "n_seeds"), [(1, 8), (3, 3), (8, 3)])
def test_colorshift_blends_a_shifted_green_through_the_edge_weight(v, n_seeds, device):
    x = natural_like_image(32, 40).double().numpy()
    e = _edge_weight(x)
    h, w = e.shape
    seen = set()
    for seed in range(n_seeds):
        y = _apply(torch.from_numpy(x)[None], "colorshift", v, device, seed=seed)[0]
        np.testing.assert_array_equal(y[0], x[0])
        np.testing.assert_array_equal(y[2], x[2])
        matches = []
        # the shift is v pixels down/right, each component rounded: |shift| within 1/sqrt(2) of v
        for dy in range(0, v + 1):
            for dx in range(0, v + 1):
                if abs(math.hypot(dx, dy) - v) > math.sqrt(0.5):
                    continue
                rows = np.clip(np.arange(h) - dy, 0, h - 1)
                cols = np.clip(np.arange(w) - dx, 0, w - 1)
                shifted = x[1][rows][:, cols]
                if np.allclose(y[1], e * shifted + (1 - e) * x[1], atol=1e-6):
                    matches.append((dx, dy))
        assert len(matches) == 1, (seed, matches)
        seen.add(matches[0])
    if v == 1:
        # one-pixel shifts: the draws reach shifts with a zero component, whose edge rows or columns
        # are replicated from the last one
        assert {(1, 0), (0, 1)} & seen, seen


def test_colorshift_leaves_an_image_without_edges_unchanged(device):
    """A flat image has no edges: the edge weight is zero everywhere (not 0/0) and the image comes back
    as it went in."""
    x = torch.empty(2, 3, 24, 30, dtype=torch.float64)
    x[0] = torch.tensor([0.2, 0.5, 0.7])[:, None, None]
    x[1] = 0.0
    for seed in range(2):
        y = _apply(x, "colorshift", 5, device, seed=seed)
        np.testing.assert_array_equal(y, x.numpy())


# --------------------------------------------------------------------------------------------------
# jitter: displacement statistics on a linear ramp


def _ramps(size: int) -> torch.Tensor:
    t = torch.linspace(0.1, 0.9, size, dtype=torch.float64)
    x = torch.empty(1, 3, size, size, dtype=torch.float64)
    x[0, 0] = t[None, :]  # horizontal ramp: reads the x displacement
    x[0, 1] = t[:, None]  # vertical ramp: reads the y displacement
    x[0, 2] = 0.5
    return x


@pytest.mark.parametrize("v", [0.5, 1.0])
def test_jitter_one_round_displaces_by_normal_v_pixels(v, device, monkeypatch):
    import shamisa.distortions.functional as functional

    monkeypatch.setattr(functional, "JITTER_ITERATIONS", 1)
    size = 96
    x = _ramps(size)
    slope = 0.8 / (size - 1)  # value per pixel
    y = _apply(x, "jitter", v, device, seed=3)[0]
    m = 6  # away from the borders (clamped there)
    dx = (x[0, 0].numpy() - y[0])[m:-m, m:-m].ravel() / slope
    dy = (x[0, 1].numpy() - y[1])[m:-m, m:-m].ravel() / slope
    n = dx.size
    for d in (dx, dy):
        se = v**2 * math.sqrt(2.0 / (n - 1))
        assert abs(float(np.mean(d**2)) - v**2) < 5 * se, (float(np.mean(d**2)), v**2)
        assert abs(float(d.mean())) < 5 * v / math.sqrt(n)
    assert abs(float(np.corrcoef(dx, dy)[0, 1])) < 5 / math.sqrt(n)
    np.testing.assert_allclose(y[2], 0.5, atol=1e-12)  # a flat channel stays flat


def test_jitter_five_rounds_compose(device):
    # each later round moves the previous displacement field, interpolated: its variance adds between
    # a quarter of v^2 and v^2, so five rounds give between 2 v^2 and 5 v^2
    v, size = 1.0, 96
    x = _ramps(size)
    slope = 0.8 / (size - 1)
    y = _apply(x, "jitter", v, device, seed=4)[0]
    d = (x[0, 0].numpy() - y[0])[10:-10, 10:-10].ravel() / slope
    var = float(np.mean(d**2))
    assert 2.0 * v**2 * 0.9 < var < 5.0 * v**2 * 1.1, var


# --------------------------------------------------------------------------------------------------
# patches and blocks: geometry on a noise image


def _noise_image(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, size, size, generator=g, dtype=torch.float64)


def _changed_box(x: np.ndarray, y: np.ndarray) -> tuple[int, int, int, int] | None:
    changed = np.any(x != y, axis=0)
    if not changed.any():
        return None
    rows, cols = np.nonzero(changed)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_noneccpatch_one_copy_is_a_16px_patch_moved_at_most_8px(device):
    size = 64
    x = _noise_image(size)
    xn = x[0].numpy()
    moved = 0
    for seed in range(12):
        y = _apply(x, "noneccpatch", 1, device, seed=seed)[0]
        box = _changed_box(xn, y)
        if box is None:  # a zero displacement: nothing changes
            continue
        moved += 1
        top, bottom, left, right = box
        assert (bottom - top, right - left) == (16, 16), box
        patch = y[:, top:bottom, left:right]
        sources = [
            (top + sy, left + sx)
            for sy in range(-8, 9)
            for sx in range(-8, 9)
            if 0 <= top + sy <= size - 16 and 0 <= left + sx <= size - 16
            and np.array_equal(xn[:, top + sy : top + sy + 16, left + sx : left + sx + 16], patch)
        ]
        assert len(sources) == 1, (seed, box, sources)
        st, sl = sources[0]
        # sources keep a 16 px margin from every border
        assert 16 <= st <= size - 32 and 16 <= sl <= size - 32, (seed, sources)
    assert moved >= 9


@pytest.mark.parametrize("v", [20, 60])
def test_noneccpatch_changes_at_most_v_patches(v, device):
    size = 96
    x = _noise_image(size, seed=1)
    y = _apply(x, "noneccpatch", v, device, seed=5)[0]
    changed = np.any(x[0].numpy() != y, axis=0).sum()
    assert 0 < changed <= v * 16 * 16
    # more copies change more of the image (same seed: the first 20 draws are shared)
    fewer = _apply(x, "noneccpatch", v // 2, device, seed=5)[0]
    assert np.any(x[0].numpy() != fewer, axis=0).sum() < changed


def test_colorblock_one_block_is_a_32px_square_of_one_colour(device):
    size = 80
    x = _noise_image(size, seed=2)
    xn = x[0].numpy()
    for seed in range(12):
        y = _apply(x, "colorblock", 1, device, seed=seed)[0]
        top, bottom, left, right = _changed_box(xn, y)
        assert (bottom - top, right - left) == (32, 32)
        assert 0 <= top <= size - 32 and 0 <= left <= size - 32
        block = y[:, top:bottom, left:right].reshape(3, -1)
        assert np.all(block == block[:, :1])


def test_colorblock_colours_are_uniform_on_the_unit_cube(device):
    from scipy import stats

    n = 200  # one block per image, each drawn from its own seed
    x = torch.zeros(n, 3, 40, 40, dtype=torch.float64)
    y = apply_distortion(x.to(device), "colorblock", 1, generator=torch.Generator().manual_seed(11))
    # the block's top-left corner is in [0, 8): pixel (16, 16) is always inside it
    c = y[:, :, 16, 16].cpu().double().numpy().ravel()
    assert c.max() > 0.95 and c.min() < 0.05
    assert stats.kstest(c, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("v", [4, 10])
def test_colorblock_paints_at_most_v_squares(v, device):
    size = 128
    x = _noise_image(size, seed=3)
    xn = x[0].numpy()
    y = _apply(x, "colorblock", v, device, seed=7)[0]
    changed = np.any(xn != y, axis=0)
    colours = {tuple(c) for c in y[:, changed].T}
    assert 1 <= len(colours) <= v
    for c in colours:
        where = np.all(y == np.array(c)[:, None, None], axis=0) & changed
        rows, cols = np.nonzero(where)
        assert rows.max() - rows.min() < 32 and cols.max() - cols.min() < 32  # inside one square
    assert changed.sum() <= v * 32 * 32
