"""BRISQUE (Mittal, Moorthy & Bovik, 2012): the classic natural-scene-statistics floor.

Features (36 per image), computed on the grayscale image (ITU-R BT.601 luma, 0-255 scale) at two
scales (full, and half-scale by anti-aliased bicubic downsampling):

* MSCN coefficients ``(I - mu) / (sigma + 1)`` with ``mu``, ``sigma`` the local mean and standard
  deviation under a 7x7 Gaussian window (sigma 7/6).
* A generalised Gaussian (GGD) fit of the MSCN coefficients: (shape, variance) -> 2 features.
* Asymmetric generalised Gaussian (AGGD) fits of the products of neighbouring MSCN coefficients in
  4 orientations (horizontal, vertical, main diagonal, anti-diagonal): (shape, mean, left variance,
  right variance) -> 16 features.

Both fits use moment matching with a lookup over shapes 0.2..10 (step 0.001).

Regression: an RBF support-vector regressor (scikit-learn) on standardised features and targets, C
and gamma chosen on the validation images of every split (median SRCC), retrained per split; or a ridge
head on standardised features. Per-image features are cached like the probe features.

No BRISQUE package is used: the maintained PyPI ones need OpenCV, scikit-image or a compiled LIBSVM
(and fetch a model file at run time), and ``piq`` imports torchvision.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.special import gammaln

from shamisa.errors import ImageLoadError
from shamisa.evaluation.features import absolute_path, cached_array, safe_name
from shamisa.evaluation.ridge import RegressionInputError, columnwise_srcc
from shamisa.images import load_image
from shamisa.progress import progress_bar

__all__ = [
    "BRISQUE_VERSION",
    "N_FEATURES",
    "FEATURE_NAMES",
    "mscn",
    "ggd_fit",
    "aggd_fit",
    "brisque_features",
    "brisque_features_from_paths",
    "SVRModel",
    "fit_svr",
    "select_svr",
    "SVR_C_GRID",
    "SVR_GAMMA_GRID",
]

BRISQUE_VERSION = "brisque-v1"
N_FEATURES = 36
_ORIENTS = ("h", "v", "d1", "d2")
FEATURE_NAMES = tuple(
    f"s{scale}_{name}"
    for scale in (1, 2)
    for name in ("ggd_shape", "ggd_var", *(f"{o}_{p}" for o in _ORIENTS for p in ("shape", "mean", "lvar", "rvar")))
)

SVR_C_GRID = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SVR_GAMMA_GRID = (0.003, 0.01, 0.03, 0.1, 0.3)


# --------------------------------------------------------------------------------------------------
# statistics


@lru_cache(maxsize=1)
def _shape_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shapes g and the two moment ratios used to invert them."""
    g = np.arange(0.2, 10.0 + 1e-9, 0.001)
    lg1, lg2, lg3 = gammaln(1.0 / g), gammaln(2.0 / g), gammaln(3.0 / g)
    r_ggd = np.exp(lg1 + lg3 - 2.0 * lg2)  # E[x^2] / E[|x|]^2 of a GGD with shape g
    r_aggd = np.exp(2.0 * lg2 - lg1 - lg3)  # its inverse, used by the AGGD estimator
    return g, r_ggd, r_aggd


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """Moment-matching fit of a zero-mean generalised Gaussian.

    Args:
        x: samples (any shape).

    Returns:
        (shape, variance): shape 2 is Gaussian, 1 Laplacian; smaller = peakier, heavier-tailed.
    """
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    var = float(np.mean(v * v))
    e_abs = float(np.mean(np.abs(v)))
    if var <= 0 or e_abs <= 0:
        return 10.0, 0.0
    g, r_ggd, _ = _shape_table()
    rho = var / (e_abs * e_abs)
    return float(g[np.argmin(np.abs(r_ggd - rho))]), var


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Moment-matching fit of an asymmetric generalised Gaussian.

    Returns:
        (shape, mean, left variance, right variance).
    """
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    left = v[v < 0]
    right = v[v > 0]
    l_var = float(np.mean(left * left)) if left.size else 0.0
    r_var = float(np.mean(right * right)) if right.size else 0.0
    if l_var <= 0 or r_var <= 0:
        return 10.0, 0.0, l_var, r_var
    l_std, r_std = np.sqrt(l_var), np.sqrt(r_var)
    gamma_hat = l_std / r_std
    r_hat = float(np.mean(np.abs(v))) ** 2 / float(np.mean(v * v))
    big_r = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    g, _, r_aggd = _shape_table()
    shape = float(g[np.argmin((r_aggd - big_r) ** 2)])
    lg1, lg2, lg3 = gammaln(1.0 / shape), gammaln(2.0 / shape), gammaln(3.0 / shape)
    const = np.exp(0.5 * (lg1 - lg3))
    mean = float((r_std - l_std) * const * np.exp(lg2 - lg1))
    return shape, mean, l_var, r_var


def mscn(gray: np.ndarray, *, sigma: float = 7.0 / 6.0, c: float = 1.0) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients of a (H, W) image on the 0-255 scale."""
    img = np.asarray(gray, dtype=np.float64)
    truncate = 3.0 / sigma  # a 7x7 window
    mu = ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=truncate)
    var = ndimage.gaussian_filter(img * img, sigma, mode="nearest", truncate=truncate) - mu * mu
    return (img - mu) / (np.sqrt(np.abs(var)) + c)


def _scale_features(gray: np.ndarray) -> list[float]:
    m = mscn(gray)
    feats = list(ggd_fit(m))
    products = (
        m[:, :-1] * m[:, 1:],  # horizontal
        m[:-1, :] * m[1:, :],  # vertical
        m[:-1, :-1] * m[1:, 1:],  # main diagonal
        m[:-1, 1:] * m[1:, :-1],  # anti-diagonal
    )
    for p in products:
        feats.extend(aggd_fit(p))
    return feats


def _gray255(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) or (1, H, W) image, got {tuple(image.shape)}")
    x = image.float()
    if x.shape[0] == 3:
        x = 0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]
    return x * 255.0


def brisque_features(image: torch.Tensor) -> np.ndarray:
    """The 36 BRISQUE features of one image.

    Args:
        image: (3, H, W) RGB (or (1, H, W) gray) float in [0, 1], at least 16 px a side.

    Returns:
        (36,) float32, ordered as :data:`FEATURE_NAMES` (scale 1 then scale 2; per scale the GGD shape
        and variance, then for h, v, d1, d2: AGGD shape, mean, left and right variance).
    """
    g = _gray255(image)
    if min(g.shape[-2:]) < 16:
        raise ValueError(f"image is {tuple(g.shape[-2:])}, too small for BRISQUE (16 px minimum)")
    h, w = g.shape[-2:]
    g_half = torch.nn.functional.interpolate(
        g.unsqueeze(0), size=(h // 2, w // 2), mode="bicubic", align_corners=False, antialias=True
    )[0]
    f1 = _scale_features(g[0].numpy())
    f2 = _scale_features(g_half[0].numpy())
    return np.asarray(f1 + f2, dtype=np.float32)


def _features_of(path: str) -> np.ndarray:
    return brisque_features(load_image(path))


def brisque_features_from_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    num_workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    dataset_name: str = "images",
    progress: bool = True,
) -> np.ndarray:
    """BRISQUE features of many image files (threads; cached like the probe features).

    Returns:
        (N, 36) float32.

    Raises:
        ImageLoadError: an image cannot be read.
    """
    abs_paths = [absolute_path(p) for p in paths]
    shape = (len(abs_paths), N_FEATURES)
    if not abs_paths:
        return np.empty(shape, dtype=np.float32)

    def compute() -> np.ndarray:
        out = np.empty(shape, dtype=np.float32)
        t0 = time.perf_counter()
        with progress_bar(enabled=progress) as bar, ThreadPoolExecutor(max(1, num_workers)) as pool:
            task = bar.add_task(f"brisque {dataset_name}", total=len(abs_paths), info="")
            for i, f in enumerate(pool.map(_features_of, abs_paths)):
                out[i] = f
                bar.update(task, advance=1, info=f"{(i + 1) / max(time.perf_counter() - t0, 1e-9):.1f} img/s")
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
            raise ImageLoadError(abs_paths[bad], "BRISQUE features are not finite (flat or degenerate image?)")
        return out

    if cache_dir is None:
        return compute()
    h = hashlib.sha256(json.dumps({"protocol": BRISQUE_VERSION, "dataset": dataset_name, "n": len(abs_paths)}).encode())
    for p in abs_paths:
        h.update(b"\0" + p.encode("utf-8", "surrogateescape"))
    arr, _ = cached_array(
        cache_dir,
        h.hexdigest(),
        stem=f"{safe_name(dataset_name)}-brisque",
        shape=shape,
        compute=compute,
        info={"protocol": BRISQUE_VERSION, "dataset": dataset_name, "n_images": len(abs_paths), "features": list(FEATURE_NAMES)},
        progress=progress,
    )
    return arr


# --------------------------------------------------------------------------------------------------
# SVR regressor


@dataclass(frozen=True, eq=False)
class SVRModel:
    """An RBF SVR on standardised features predicting standardised targets."""

    svr: Any
    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: float
    y_scale: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, F) -> (N,) predictions on the original score scale."""
        z = (np.asarray(X, dtype=np.float64) - self.x_mean) / self.x_scale
        return self.svr.predict(z) * self.y_scale + self.y_mean


def fit_svr(X: np.ndarray, y: np.ndarray, *, C: float = 1.0, gamma: float = 0.03, epsilon: float = 0.1) -> SVRModel:
    """Fit an RBF SVR on z-scored features and targets (the scale statistics come from ``X``, ``y``)."""
    from sklearn.svm import SVR

    x = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != t.shape[0] or x.shape[0] < 2:
        raise RegressionInputError(f"SVR needs (N, F) features and (N,) targets, got {x.shape} and {t.shape}")
    if not (np.isfinite(x).all() and np.isfinite(t).all()):
        raise RegressionInputError("features or targets contain NaN or infinite values; cannot fit an SVR")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1.0
    ym, ys = float(t.mean()), float(t.std()) or 1.0
    svr = SVR(kernel="rbf", C=float(C), gamma=float(gamma), epsilon=float(epsilon))
    svr.fit((x - mean) / scale, (t - ym) / ys)
    return SVRModel(svr=svr, x_mean=mean, x_scale=scale, y_mean=ym, y_scale=ys)


def select_svr(
    X: np.ndarray,
    y: np.ndarray,
    train_splits: Sequence[np.ndarray],
    val_splits: Sequence[np.ndarray],
    *,
    c_grid: Sequence[float] = SVR_C_GRID,
    gamma_grid: Sequence[float] = SVR_GAMMA_GRID,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Choose (C, gamma) by the median validation SRCC over splits (ties: first in grid order).

    Returns:
        ({"C": ..., "gamma": ...}, summary with the grid and the median SRCC table).
    """
    t0 = time.perf_counter()
    x = np.asarray(X, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    combos = [(c, g) for c in c_grid for g in gamma_grid]
    table = np.full((len(train_splits), len(combos)), np.nan)
    for s, (tr, va) in enumerate(zip(train_splits, val_splits, strict=True)):
        preds = np.stack([fit_svr(x[tr], t[tr], C=c, gamma=g).predict(x[va]) for c, g in combos], axis=1)
        table[s] = columnwise_srcc(preds, t[va])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(table, axis=0)
    best = int(np.nanargmax(med)) if np.isfinite(med).any() else 0
    c, g = combos[best]
    summary = {
        "C": c,
        "gamma": g,
        "epsilon": 0.1,
        "best_median_val_srcc": float(med[best]) if np.isfinite(med[best]) else None,
        "grid": [{"C": cc, "gamma": gg, "median_val_srcc": None if not np.isfinite(m) else float(m)} for (cc, gg), m in zip(combos, med, strict=True)],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return {"C": float(c), "gamma": float(g)}, summary
