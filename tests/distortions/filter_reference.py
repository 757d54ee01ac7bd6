"""Gaussian taps and replicate-border correlation in float64, written for the distortion reference tests
(never the package's own filters)."""

from __future__ import annotations

import math

import numpy as np


def gaussian_taps(sigma: float, half: int | None = None) -> np.ndarray:
    """Normalised Gaussian taps of ``2 half + 1``; ``half`` defaults to ``ceil(2 sigma)`` (MATLAB fspecial)."""
    half = math.ceil(2 * sigma) if half is None else half
    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def correlate_replicate(a: np.ndarray, k: np.ndarray, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Correlation of ``a`` with the 1-D taps ``k`` along each of ``axes`` in turn, replicate borders."""
    half = len(k) // 2
    out = a
    for axis in axes:
        pad = [(0, 0)] * a.ndim
        pad[axis] = (half, half)
        p = np.pad(out, pad, mode="edge")
        n = a.shape[axis]
        out = sum(kt * np.take(p, np.arange(t, t + n), axis=axis) for t, kt in enumerate(k))
    return out
