"""sRGB (D65) <-> CIE Lab in float64, written from the standard formulas: the reference the distortion
tests compare with (never the package's own conversion)."""

from __future__ import annotations

import numpy as np

_M = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.950456, 1.0, 1.088754])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.einsum("ij,cj...->ci...", _M, lin[None] if lin.ndim == 3 else lin)
    xyz = xyz[0] if rgb.ndim == 3 else xyz
    t = xyz / _WHITE.reshape((3,) + (1,) * (xyz.ndim - 1))
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 4 / 29)
    return np.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[0] + 16) / 116
    # f(Z) is floored at 0 (as kornia's conversion does): strongly saturated blues leave the gamut otherwise
    f = np.stack([fy + lab[1] / 500, fy, np.maximum(fy - lab[2] / 200, 0.0)])
    t = np.where(f > 0.2068966, f**3, (f - 4 / 29) / 7.787)
    xyz = t * _WHITE.reshape(3, 1, 1)
    lin = np.einsum("ij,j...->i...", np.linalg.inv(_M), xyz)
    rgb = np.where(lin > 0.0031308, 1.055 * np.clip(lin, 0.0031308, None) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(rgb, 0, 1)
