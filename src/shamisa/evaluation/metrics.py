"""Agreement between predicted and human quality scores: SRCC, PLCC, KRCC, RMSE.

Pure functions: 1-D array-likes in, Python float out. Every function validates its inputs and raises
:class:`MetricInputError` (a :class:`ValueError` and a :class:`~shamisa.errors.ShamisaError`) with a
one-line reason for inputs on which the statistic is undefined: different lengths, fewer than 2 items,
NaN or infinite values, or a constant vector (a correlation with a constant is 0/0).

Conventions (those of the IQA literature and of ``scipy.stats``):

* SRCC: Spearman's rank correlation, average ranks for ties (``scipy.stats.spearmanr``).
* PLCC: Pearson's linear correlation of the raw predictions (no nonlinear mapping), unless
  :func:`plcc_logistic` is used, which first fits the standard 4-parameter logistic
  ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``.
* KRCC: Kendall's tau-b (``scipy.stats.kendalltau``).
* RMSE: root mean squared difference of the raw predictions, in the units of the target.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

from shamisa.errors import ShamisaError

__all__ = [
    "MetricInputError",
    "srcc",
    "plcc",
    "krcc",
    "rmse",
    "logistic4",
    "logistic4_fit",
    "plcc_logistic",
    "correlation_report",
]


class MetricInputError(ShamisaError, ValueError):
    """The inputs of a metric are invalid (length mismatch, too short, non-finite or constant)."""


def _pair(pred: ArrayLike, target: ArrayLike, *, need_variation: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return two float64 1-D arrays of the same length."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    # (N, 1) and (1, N) columns/rows are accepted as vectors.
    p = p.reshape(-1) if p.ndim > 1 and p.size == max(p.shape) else p
    t = t.reshape(-1) if t.ndim > 1 and t.size == max(t.shape) else t
    if p.ndim != 1 or t.ndim != 1:
        raise MetricInputError(f"expected 1-D score vectors, got shapes {p.shape} and {t.shape}")
    if p.shape[0] != t.shape[0]:
        raise MetricInputError(f"predictions and targets differ in length ({p.shape[0]} vs {t.shape[0]})")
    if p.shape[0] < 2:
        raise MetricInputError(f"need at least 2 items to compare scores, got {p.shape[0]}")
    for name, a in (("predictions", p), ("targets", t)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise MetricInputError(f"{name} contain {int(bad.sum())} NaN or infinite value(s)")
    if need_variation:
        for name, a in (("predictions", p), ("targets", t)):
            if np.ptp(a) == 0.0:
                raise MetricInputError(f"{name} are constant ({a[0]:g}): the correlation is undefined")
    return p, t


def srcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Spearman rank-order correlation coefficient.

    Args:
        pred: (N,) predicted scores.
        target: (N,) human scores (MOS or DMOS).

    Returns:
        SRCC in [-1, 1].

    Raises:
        MetricInputError: on length mismatch, N < 2, non-finite or constant inputs.
    """
    p, t = _pair(pred, target)
    return float(stats.spearmanr(p, t).statistic)


def plcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Pearson linear correlation coefficient of the raw predictions (no nonlinear mapping).

    Args:
        pred: (N,) predicted scores.
        target: (N,) human scores.

    Returns:
        PLCC in [-1, 1].
    """
    p, t = _pair(pred, target)
    return float(stats.pearsonr(p, t).statistic)


def krcc(pred: ArrayLike, target: ArrayLike) -> float:
    """Kendall rank correlation coefficient (tau-b, accounts for ties).

    Args:
        pred: (N,) predicted scores.
        target: (N,) human scores.

    Returns:
        KRCC in [-1, 1].
    """
    p, t = _pair(pred, target)
    return float(stats.kendalltau(p, t).statistic)


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root mean squared error ``sqrt(mean((pred - target)^2))`` in the units of ``target``.

    Constant inputs are allowed here (the error is still defined).
    """
    p, t = _pair(pred, target, need_variation=False)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def logistic4(x: ArrayLike, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (vectorised)."""
    x = np.asarray(x, dtype=np.float64)
    z = -(x - b3) / max(abs(b4), 1e-12)
    return (b1 - b2) / (1.0 + np.exp(np.clip(z, -500.0, 500.0))) + b2


def logistic4_fit(pred: ArrayLike, target: ArrayLike, *, maxfev: int = 20000) -> tuple[float, float, float, float]:
    """Least-squares fit of :func:`logistic4` mapping predictions to targets.

    Initial parameters: (max target, min target, mean pred, std pred), the usual IQA convention.

    Returns:
        (b1, b2, b3, b4). If the optimiser fails to converge the initial parameters are refined no
        further and returned as they are (the mapping is then a plain sigmoid around the mean).
    """
    p, t = _pair(pred, target)
    beta0 = [float(t.max()), float(t.min()), float(p.mean()), float(p.std()) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            beta, _ = optimize.curve_fit(logistic4, p, t, p0=beta0, maxfev=maxfev)
    except (RuntimeError, optimize.OptimizeWarning, ValueError):
        beta = np.asarray(beta0)
    return tuple(float(b) for b in beta)  # type: ignore[return-value]


def plcc_logistic(pred: ArrayLike, target: ArrayLike) -> float:
    """PLCC after the 4-parameter logistic mapping of the predictions to the targets."""
    p, t = _pair(pred, target)
    mapped = logistic4(p, *logistic4_fit(p, t))
    if np.ptp(mapped) == 0.0:
        raise MetricInputError("the logistic mapping collapsed the predictions to a constant")
    return float(stats.pearsonr(mapped, t).statistic)


def correlation_report(pred: ArrayLike, target: ArrayLike, *, logistic: bool = False) -> dict[str, Any]:
    """All metrics at once.

    Args:
        pred: (N,) predicted scores.
        target: (N,) human scores.
        logistic: also compute ``plcc_logistic``.

    Returns:
        ``{"n", "srcc", "plcc", "krcc", "rmse"}`` (+ ``"plcc_logistic"``), floats except ``n``.
    """
    p, t = _pair(pred, target)
    out: dict[str, Any] = {
        "n": int(p.shape[0]),
        "srcc": srcc(p, t),
        "plcc": plcc(p, t),
        "krcc": krcc(p, t),
        "rmse": rmse(p, t),
    }
    if logistic:
        out["plcc_logistic"] = plcc_logistic(p, t)
    return out
