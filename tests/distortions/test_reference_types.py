"""Distortion types against independent references.

* Noise types: the measured strength (variance, replacement rate) against the level value, on a flat
  mid-grey image (no clipping), with a tolerance of 5 standard errors of the estimate for the sample size.
* Deterministic types: a direct formula written here (numpy / scipy, float64) on a small image at two
  levels of the table.

Only the public package ``shamisa.distortions`` is imported.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import natural_like_image
from distortions.filter_reference import correlate_replicate, gaussian_taps
from distortions.lab_reference import lab_to_rgb, rgb_to_lab
from shamisa.distortions import apply_distortion

H, W = 20, 28


def _image(seed: int = 0) -> torch.Tensor:
    return natural_like_image(H, W, seed=seed)[None].double()


def _flat(n: int, size: int, value: float = 0.5) -> torch.Tensor:
    return torch.full((n, 3, size, size), value, dtype=torch.float32)


def _apply(x: torch.Tensor, name: str, v: float, device: torch.device, seed: int = 0) -> np.ndarray:
    y = apply_distortion(x.to(device), name, v, generator=torch.Generator().manual_seed(seed))
    return y.cpu().double().numpy()


# --------------------------------------------------------------------------------------------------
# noise: strength measured statistically


def _check_variance(samples: np.ndarray, expected: float) -> None:
    """Sample variance of ``samples`` (zero-mean noise) against ``expected``: the standard error of a
    Gaussian sample variance is ``expected * sqrt(2 / (n - 1))``."""
    n = samples.size
    est = float(np.mean(samples**2))
    se = expected * math.sqrt(2.0 / (n - 1))
    assert abs(est - expected) < 5 * se, (est, expected, se)
    assert abs(float(samples.mean())) < 5 * math.sqrt(expected / n)


@pytest.mark.parametrize("v", [0.002, 0.01])
def test_whitenoise_variance(v, device):
    x = _flat(4, 48)
    noise = _apply(x, "whitenoise", v, device, seed=1) - 0.5
    _check_variance(noise, v)
    # independent channels: the correlation of R and G noise is within 5 standard errors of 0
    r, g = noise[:, 0].ravel(), noise[:, 1].ravel()
    assert abs(float(np.corrcoef(r, g)[0, 1])) < 5 / math.sqrt(r.size)


# YCbCr -> RGB (the inverse of the JPEG / ITU-R BT.601 full-range transform used for whitenoiseCC):
# R = Y + 1.403 Cr', G = Y - 0.344 Cb' - 0.714 Cr', B = Y + 1.773 Cb'
YCC_TO_RGB = np.array([[1.0, 0.0, 1.403], [1.0, -0.344, -0.714], [1.0, 1.773, 0.0]])


@pytest.mark.parametrize("v", [0.0005, 0.002])
def test_whitenoise_cc_covariance(v, device):
    x = _flat(4, 48)
    noise = _apply(x, "whitenoiseCC", v, device, seed=2) - 0.5
    expected_cov = v * YCC_TO_RGB @ YCC_TO_RGB.T
    for c in range(3):
        _check_variance(noise[:, c], float(expected_cov[c, c]))
    # cross-covariances: an estimate of E[ab] has standard error sqrt(var_a var_b + cov_ab^2) / sqrt(n)
    n = noise[:, 0].size
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        est = float(np.mean(noise[:, a] * noise[:, b]))
        se = math.sqrt(expected_cov[a, a] * expected_cov[b, b] + expected_cov[a, b] ** 2) / math.sqrt(n)
        assert abs(est - expected_cov[a, b]) < 5 * se, (a, b, est, expected_cov[a, b])


@pytest.mark.parametrize("v", [0.005, 0.05])
def test_multnoise_variance(v, device):
    for level in (0.25, 0.5):
        x = _flat(4, 48, level)
        noise = _apply(x, "multnoise", v, device, seed=3) - level
        _check_variance(noise, v * level**2)  # x + x n, n ~ N(0, v)


@pytest.mark.parametrize("d", [0.01, 0.03])
def test_impulsenoise_rate(d, device):
    x = _flat(4, 64)
    y = _apply(x, "impulsenoise", d, device, seed=4)
    n = y.size
    salt = float((y == 1.0).mean())
    pepper = float((y == 0.0).mean())
    kept = float((y == 0.5).mean())
    assert salt + pepper + kept == pytest.approx(1.0)
    # each value is replaced with probability d, half of the replacements by 1 and half by 0
    for p_obs, p in [(salt, d / 2), (pepper, d / 2), (1 - kept, d)]:
        assert abs(p_obs - p) < 5 * math.sqrt(p * (1 - p) / n), (p_obs, p)


def test_noise_levels_are_independent_per_sample(device):
    """Two samples of one call carry different noise (no shared draw)."""
    y = _apply(_flat(2, 16), "whitenoise", 0.01, device, seed=5)
    assert not np.allclose(y[0], y[1])


# --------------------------------------------------------------------------------------------------
# deterministic types: direct formulas


def test_meanshift(device):
    x = _image()
    for name, v in [("meanshiftpos", 0.08), ("meanshiftpos", 0.15), ("meanshiftneg", -0.08), ("meanshiftneg", -0.15)]:
        ref = np.clip(x.numpy() + v, 0, 1)
        np.testing.assert_allclose(_apply(x, name, v, device), ref, atol=1e-6)


@pytest.mark.parametrize("v", [0.3, 0.1])
def test_nonlincontrchange(v, device):
    x = _image().numpy()
    # [0, 1] mapped affinely onto [0.5 - v, 0.5 + v]
    ref = (0.5 - v) + 2 * v * x
    np.testing.assert_allclose(_apply(torch.from_numpy(x), "nonlincontrchange", v, device), ref, atol=1e-6)


@pytest.mark.parametrize("v", [0.2, 0.4])
def test_darken_parabola(v, device):
    x = _image().numpy()
    # the parabola through (0, 0), (0.5, 0.5 - v / 2), (1, 1): a x^2 + b x with a + b = 1, a / 4 + b / 2 = mid
    mid = 0.5 - v / 2
    b = 4 * mid - 1
    a = 1 - b
    ref = np.clip(a * x**2 + b * x, 0, 1)
    np.testing.assert_allclose(_apply(torch.from_numpy(x), "darken", v, device), ref, atol=1e-6)


@pytest.mark.parametrize(("name", "v"), [("lincontrchangepos", 0.15), ("lincontrchangepos", 0.4),
                                         ("lincontrchangeneg", -0.15), ("lincontrchangeneg", -0.4)])
def test_linear_contrast_spline(name, v, device):
    from scipy.interpolate import CubicSpline

    x = _image().numpy()
    knots = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    vals = np.array([0.0, 0.25 - v / 4, 0.5, 0.75 + v / 4, 1.0])
    ref = np.clip(CubicSpline(knots, vals, bc_type="not-a-knot")(x), 0, 1)
    np.testing.assert_allclose(_apply(torch.from_numpy(x), name, v, device), ref, atol=1e-6)


@pytest.mark.parametrize("v", [0.2, 0.0])
def test_colorsat1_hsv_saturation(v, device):
    import colorsys

    x = _image()
    y = _apply(x, "colorsat1", v, device)
    xn = x.numpy()[0]
    for i in range(0, H, 5):
        for j in range(0, W, 7):
            h, s, val = colorsys.rgb_to_hsv(*xn[:, i, j])
            ref = colorsys.hsv_to_rgb(h, min(max(s * v, 0.0), 1.0), val)
            np.testing.assert_allclose(y[0, :, i, j], ref, atol=1e-6)


@pytest.mark.parametrize("v", [16, 10])
def test_quantization_levels(v, device):
    x = _image().numpy()
    ref = np.round(x * (v - 1)) / (v - 1)  # v equally spaced levels 0 .. 1
    y = _apply(torch.from_numpy(x), "quantization", v, device)
    np.testing.assert_allclose(y, ref, atol=1e-6)
    assert len(np.unique(np.round(y * (v - 1), 6))) <= v


def _nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (C, h, w): output pixel i reads input floor(i * in / out)."""
    h, w = a.shape[-2:]
    ri = np.minimum(np.floor(np.arange(size[0]) * (h / size[0])).astype(int), h - 1)
    ci = np.minimum(np.floor(np.arange(size[1]) * (w / size[1])).astype(int), w - 1)
    return a[..., ri[:, None], ci[None, :]]


@pytest.mark.parametrize("v", [0.05, 0.2])
def test_pixelate_nearest_down_up(v, device):
    x = _image().numpy()[0]
    z = 0.95 - v**0.6
    lo = _nearest(x, (int(H * z), int(W * z)))
    ref = _nearest(lo, (H, W))
    np.testing.assert_allclose(_apply(torch.from_numpy(x)[None], "pixelate", v, device)[0], ref, atol=1e-7)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_gaublur_separable_gaussian(sigma, device):
    x = _image().numpy()
    k = gaussian_taps(sigma)  # size 2 ceil(2 sigma) + 1, replicate borders
    ref = correlate_replicate(x, k)
    np.testing.assert_allclose(_apply(torch.from_numpy(x), "gaublur", sigma, device), ref, atol=1e-6)


def _disk_area(radius: float, n_sub: int = 200) -> np.ndarray:
    """Disk kernel: each tap = the fraction of its unit pixel inside the circle of ``radius``."""
    n = math.ceil(radius - 0.5)
    sub = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    k = np.zeros((2 * n + 1, 2 * n + 1))
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            yy = (i + sub)[:, None] ** 2
            xx = (j + sub)[None, :] ** 2
            k[i + n, j + n] = ((yy + xx) <= radius * radius).mean()
    return k / k.sum()


@pytest.mark.parametrize("radius", [2, 6])
def test_lensblur_impulse_response_is_the_disk(radius, device):
    size = 21
    x = torch.zeros(1, 3, size, size, dtype=torch.float64)
    x[:, :, size // 2, size // 2] = 1.0
    y = _apply(x, "lensblur", radius, device)[0, 0]
    k = _disk_area(radius)
    n = k.shape[0] // 2
    ref = np.zeros((size, size))
    ref[size // 2 - n : size // 2 + n + 1, size // 2 - n : size // 2 + n + 1] = k[::-1, ::-1]
    # the package integrates with a coarser sub-pixel grid: 2e-3 per tap at most
    np.testing.assert_allclose(y, ref, atol=2e-3)
    assert y.sum() == pytest.approx(1.0, abs=1e-6)


def test_lab_reference_round_trip():
    x = natural_like_image(H, W).double().numpy()
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-9)


@pytest.mark.parametrize("v", [2, 6])
def test_colorsat2_lab_chroma(v, device):
    x = natural_like_image(H, W).double() * 0.6 + 0.2  # chroma scaled up but mostly in gamut
    lab = rgb_to_lab(x.numpy())
    lab[1:] *= v
    ref = lab_to_rgb(lab)
    y = _apply(x[None], "colorsat2", v, device)[0]
    # the output is truncated to 8 bits: at most 1/255 below the exact value
    assert np.all(y <= ref + 2e-3) and np.all(y >= ref - 1 / 255 - 2e-3)


@pytest.mark.parametrize("v", [0.2, 0.7])
def test_brighten_curve(v, device):
    x = _image().numpy()[0]
    mid = 0.5 + v / 2
    b = 4 * mid - 1
    a = 1 - b

    def curve(t):
        return np.clip(a * t**2 + b * t, 0, 1)

    lab = rgb_to_lab(x)
    lab[0] = curve(lab[0] / 100) * 100
    ref = (2 * curve(x) + lab_to_rgb(lab)) / 3  # RGB curve averaged 2:1 with the same curve on L*
    y = _apply(torch.from_numpy(x)[None], "brighten", v, device)[0]
    np.testing.assert_allclose(y, ref, atol=2e-3)


@pytest.mark.parametrize("v", [2, 6])
def test_highsharpen_unsharp_mask_on_lightness(v, device):
    x = _image().numpy()[0]
    lab = rgb_to_lab(x)
    blurred = correlate_replicate(lab[0], gaussian_taps(6.0, 6))  # 13 taps, sigma 6
    lab[0] = lab[0] + v * (lab[0] - blurred)
    ref = lab_to_rgb(lab)
    y = _apply(torch.from_numpy(x)[None], "highsharpen", v, device)[0]
    np.testing.assert_allclose(y, ref, atol=2e-3)


@pytest.mark.parametrize("q", [36, 7])
def test_jpeg_is_the_baseline_codec(q, device):
    import io

    from PIL import Image

    x = natural_like_image(32, 48).double()
    arr = np.floor(x.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=q, subsampling=2)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64) / 255.0
    y = _apply(torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255.0, "jpeg", q, device)[0]
    np.testing.assert_allclose(y.transpose(1, 2, 0), ref, atol=1.5 / 255)
