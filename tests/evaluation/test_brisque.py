"""Tests of shamisa.evaluation.brisque: distribution fits, the 36 features and their expected reactions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage, stats

from shamisa.evaluation.brisque import (
    FEATURE_NAMES,
    N_FEATURES,
    aggd_fit,
    brisque_features,
    brisque_features_from_paths,
    fit_svr,
    ggd_fit,
    mscn,
    select_svr,
)
from shamisa.errors import ImageLoadError
from shamisa.evaluation.metrics import srcc


def textured(seed: int = 0, h: int = 128, w: int = 144) -> torch.Tensor:
    """A natural-like image: smooth shading, edges and 1/f-ish texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / 20.0
    g = 0.5 + 0.2 * np.sin(xx * 1.3) * np.cos(yy * 0.7)
    g += sum(0.25 / s * ndimage.gaussian_filter(rng.normal(size=(h, w)), s) for s in (1, 2, 4, 8))
    g[h // 3 : h // 3 + 5] += 0.3
    g = np.clip(g, 0, 1)
    return torch.from_numpy(np.stack([g, 0.9 * g + 0.05, 0.8 * g + 0.1]).astype(np.float32)).clamp(0, 1)


@pytest.mark.parametrize("shape", [0.8, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_the_shape(shape) -> None:
    x = stats.gennorm.rvs(shape, scale=0.7, size=200_000, random_state=np.random.default_rng(1))
    est, var = ggd_fit(x)
    assert est == pytest.approx(shape, rel=0.05)
    assert var == pytest.approx(np.mean(x**2))


def test_aggd_fit_symmetric_and_skewed() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=200_000)
    shape, mean, lv, rv = aggd_fit(x)
    assert shape == pytest.approx(2.0, rel=0.05)
    assert abs(mean) < 0.02 and lv == pytest.approx(rv, rel=0.03)
    skew = np.where(x > 0, 2.0 * x, x)  # right side wider: positive mean, right variance 4x left
    _, mean2, lv2, rv2 = aggd_fit(skew)
    assert mean2 > 0.3 and rv2 / lv2 == pytest.approx(4.0, rel=0.05)


def test_mscn_is_normalised() -> None:
    img = textured().mean(0).numpy() * 255
    m = mscn(img)
    assert m.shape == img.shape and np.isfinite(m).all()
    assert abs(m.mean()) < 0.2 and 0.1 < m.std() < 2.0


def test_feature_vector_shape_and_finiteness() -> None:
    f = brisque_features(textured())
    assert f.shape == (N_FEATURES,) == (len(FEATURE_NAMES),) and f.dtype == np.float32
    assert np.isfinite(f).all()
    assert f[0] > 0 and f[1] > 0  # GGD shape and variance of the first scale
    gray = brisque_features(textured().mean(0, keepdim=True))
    assert np.allclose(gray, f, atol=0.05 * np.abs(f).max())  # gray input works; luma ~ mean here
    with pytest.raises(ValueError, match="too small"):
        brisque_features(torch.rand(3, 10, 10))


def test_blur_and_noise_move_the_ggd_shape_the_expected_way() -> None:
    for seed in range(3):
        x = textured(seed)
        blurred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 2.0, 2.0)))
        noisy = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)
        f, fb, fn = brisque_features(x), brisque_features(blurred), brisque_features(noisy)
        # Blur makes MSCN coefficients peakier / heavier-tailed (lower shape) and smaller in variance.
        assert fb[0] < f[0] and fb[1] < f[1]
        # White noise makes them more Gaussian (shape towards 2 and above) and larger in variance.
        assert fn[0] > fb[0] and fn[1] > f[1]


def test_paths_cache_and_bad_file(tmp_path) -> None:
    paths = []
    for i in range(3):
        p = tmp_path / f"t{i}.png"
        Image.fromarray((textured(i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(p)
        paths.append(p)
    feats = brisque_features_from_paths(paths, cache_dir=tmp_path / "c", dataset_name="t", progress=False)
    assert feats.shape == (3, 36)
    assert len(list((tmp_path / "c").glob("t-brisque-*.npy"))) == 1
    again = brisque_features_from_paths(paths, cache_dir=tmp_path / "c", dataset_name="t", progress=False)
    assert np.array_equal(feats, again)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageLoadError, match="bad.png"):
        brisque_features_from_paths([*paths, tmp_path / "bad.png"], progress=False)


def test_svr_selection_on_a_smooth_problem() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 6))
    y = 30 * np.tanh(X[:, 0]) + 10 * X[:, 1] ** 2 + rng.normal(0, 1, 120) + 50
    perm = [np.random.default_rng(s).permutation(120) for s in range(3)]
    train = [p[:84] for p in perm]
    val = [p[84:96] for p in perm]
    params, summary = select_svr(X, y, train, val)
    assert set(params) == {"C", "gamma"} and summary["best_median_val_srcc"] > 0.7
    model = fit_svr(X[train[0]], y[train[0]], **params)
    assert srcc(model.predict(X[perm[0][96:]]), y[perm[0][96:]]) > 0.7
