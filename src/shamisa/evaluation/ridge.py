"""Ridge regression heads on frozen features, and split-aware selection of the ridge penalty.

The protocol (ARNIQA / SHAMISA linear probe): every crop of a training image is one regression sample
labelled with the image's human score; a ridge regressor with an (unpenalised) intercept is fitted on
the crops; the prediction for an image is the mean of its crops' predictions. The penalty ``alpha`` is
chosen on the validation part of every split: for each alpha the median over splits of the validation
SRCC, arg-max (ties: the smallest alpha).

Speed: :class:`RidgePath` solves the ridge problem for every alpha of a grid at once from one symmetric
eigendecomposition of the (centred) crop-level Gram matrix — ``X^T X`` (D x D) when there are more
crops than feature dimensions, ``X X^T`` (N x N) otherwise — so a 100-value grid costs about as much
as one fit. The result equals ``sklearn.linear_model.Ridge(alpha, fit_intercept=True)`` for each alpha
(tested).

Shapes: ``X`` is (N, D) (one row per sample) or (N, K, D) (K crops per image, each a sample with the
image's score); ``y`` is (N,).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import linalg
from scipy.stats import rankdata

from shamisa.errors import ModelFileError, ShamisaError

__all__ = [
    "RegressionInputError",
    "RidgeHead",
    "RidgePath",
    "AlphaTable",
    "fit_ridge",
    "alpha_grid",
    "select_alpha",
    "head_to_tensors",
    "head_from_tensors",
    "crop_level",
]

AlphaGridKind = Literal["protocol", "budget"]


class RegressionInputError(ShamisaError, ValueError):
    """Features or targets unusable for regression (non-finite values, shape mismatch, bad alpha)."""


# --------------------------------------------------------------------------------------------------
# the head


@dataclass(frozen=True, eq=False)
class RidgeHead:
    """A fitted linear head ``y = ((x - feature_mean) / feature_scale) . coef + intercept``.

    Attributes:
        coef: (D,) float64 weights.
        intercept: the bias.
        alpha: the ridge penalty it was fitted with (informative).
        feature_mean: (D,) or None; subtracted from features before ``coef`` when present.
        feature_scale: (D,) or None; features are divided by it (after the mean) when present.
    """

    coef: np.ndarray
    intercept: float
    alpha: float
    feature_mean: np.ndarray | None = None
    feature_scale: np.ndarray | None = None

    def __post_init__(self) -> None:
        coef = np.asarray(self.coef, dtype=np.float64)
        if coef.ndim != 1:
            raise RegressionInputError(f"coef must be 1-D, got shape {coef.shape}")
        object.__setattr__(self, "coef", coef)
        object.__setattr__(self, "intercept", float(self.intercept))
        object.__setattr__(self, "alpha", float(self.alpha))
        for name in ("feature_mean", "feature_scale"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float64)
                if v.shape != coef.shape:
                    raise RegressionInputError(f"{name} has shape {v.shape}, expected {coef.shape}")
                object.__setattr__(self, name, v)

    @property
    def feature_dim(self) -> int:
        return int(self.coef.shape[0])

    def effective(self) -> tuple[np.ndarray, float]:
        """The equivalent plain linear map ``(w, b)`` with ``y = x . w + b`` on raw features."""
        w = self.coef if self.feature_scale is None else self.coef / self.feature_scale
        b = self.intercept - (0.0 if self.feature_mean is None else float(self.feature_mean @ w))
        return w, b

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Predict scores.

        Args:
            X: (..., D) features, e.g. (N, D) images or (N, K, D) crops.

        Returns:
            (...) float64 predictions (one per row; average over crops yourself, or use
            :meth:`predict_images`).
        """
        x = np.asarray(X, dtype=np.float64)
        if x.shape[-1] != self.feature_dim:
            raise RegressionInputError(f"features have dimension {x.shape[-1]}, the head expects {self.feature_dim}")
        w, b = self.effective()
        return x @ w + b

    def predict_images(self, X: ArrayLike) -> np.ndarray:
        """(N, K, D) crop features -> (N,) image predictions, the mean of the K crop predictions."""
        x = np.asarray(X)
        if x.ndim != 3:
            raise RegressionInputError(f"expected (N, K, D) crop features, got shape {x.shape}")
        return self.predict(x).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# validation helpers


def crop_level(X: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flatten (N, K, D) crop features and (N,) scores into (N*K, D) samples and (N*K,) targets.

    (N, D) features are returned unchanged. Values are validated (finite, matching lengths).
    """
    x = np.asarray(X)
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim not in (2, 3):
        raise RegressionInputError(f"features must be (N, D) or (N, K, D), got shape {x.shape}")
    if x.shape[0] != t.shape[0]:
        raise RegressionInputError(f"{x.shape[0]} feature rows but {t.shape[0]} targets")
    if x.shape[0] < 2:
        raise RegressionInputError(f"need at least 2 training images, got {x.shape[0]}")
    _check_finite(x, "features")
    _check_finite(t, "targets")
    if x.ndim == 3:
        k = x.shape[1]
        return x.reshape(-1, x.shape[2]), np.repeat(t, k)
    return x, t


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        n_bad = int((~np.isfinite(a)).sum())
        raise RegressionInputError(f"{name} contain {n_bad} NaN or infinite value(s); cannot fit a ridge regressor")


def _check_alpha(alpha: float) -> float:
    a = float(alpha)
    if not np.isfinite(a) or a <= 0:
        raise RegressionInputError(f"the ridge penalty alpha must be a positive finite number, got {alpha!r}")
    return a


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale


# --------------------------------------------------------------------------------------------------
# fitting


def fit_ridge(X: ArrayLike, y: ArrayLike, alpha: float, *, standardize: bool = False) -> RidgeHead:
    """Fit a ridge regressor with an unpenalised intercept (same solution as sklearn ``Ridge``).

    Args:
        X: (N, D) samples or (N, K, D) crops (each crop a sample with its image's score).
        y: (N,) targets.
        alpha: penalty > 0.
        standardize: standardise features (train mean / std) before fitting; the statistics are
            stored in the head.

    Returns:
        The fitted :class:`RidgeHead`.

    Raises:
        RegressionInputError: non-finite values, shape mismatch, alpha <= 0.
    """
    a = _check_alpha(alpha)
    x, t = crop_level(X, y)
    x = x.astype(np.float64, copy=False)
    mean, scale = _standardizer(x) if standardize else (x.mean(axis=0), None)
    xc = x - mean
    if scale is not None:
        xc /= scale
    ym = float(t.mean())
    tc = t - ym
    n, d = xc.shape
    if d <= n:
        g = xc.T @ xc
        g[np.diag_indices_from(g)] += a
        coef = linalg.solve(g, xc.T @ tc, assume_a="pos")
    else:
        k = xc @ xc.T
        k[np.diag_indices_from(k)] += a
        coef = xc.T @ linalg.solve(k, tc, assume_a="pos")
    if standardize:
        return RidgeHead(coef=coef, intercept=ym, alpha=a, feature_mean=mean, feature_scale=scale)
    return RidgeHead(coef=coef, intercept=ym - float(mean @ coef), alpha=a)


class RidgePath:
    """Ridge solutions for every alpha at once, from one eigendecomposition of the training data.

    With centred (optionally standardised) training samples ``Xc`` and targets ``yc``:
    primal (D <= N): ``Xc^T Xc = V diag(lam) V^T`` and ``w(alpha) = V diag(1 / (lam + alpha)) V^T Xc^T yc``;
    dual (D > N): ``Xc Xc^T = U diag(lam) U^T`` and ``w(alpha) = Xc^T U diag(1 / (lam + alpha)) U^T yc``.
    Both are stored as ``w(alpha) = B @ (c / (lam + alpha))``.

    Args:
        X: (N, D) or (N, K, D) training features.
        y: (N,) targets.
        standardize: standardise features with the training statistics first.
    """

    def __init__(self, X: ArrayLike, y: ArrayLike, *, standardize: bool = False) -> None:
        x, t = crop_level(X, y)
        x = x.astype(np.float64, copy=False)
        self.standardize = standardize
        if standardize:
            self.x_mean, self.x_scale = _standardizer(x)
        else:
            self.x_mean, self.x_scale = x.mean(axis=0), None
        xc = x - self.x_mean
        if self.x_scale is not None:
            xc /= self.x_scale
        self.y_mean = float(t.mean())
        tc = t - self.y_mean
        n, d = xc.shape
        if d <= n:
            lam, v = linalg.eigh(xc.T @ xc, overwrite_a=True, check_finite=False)
            self._basis = v  # (D, D)
            self._c = v.T @ (xc.T @ tc)
        else:
            lam, u = linalg.eigh(xc @ xc.T, overwrite_a=True, check_finite=False)
            self._basis = xc.T @ u  # (D, N)
            self._c = u.T @ tc
        self._lam = np.clip(lam, 0.0, None)

    @property
    def feature_dim(self) -> int:
        return int(self._basis.shape[0])

    def _transform(self, X: ArrayLike) -> np.ndarray:
        x = np.asarray(X, dtype=np.float64)
        if x.shape[-1] != self.feature_dim:
            raise RegressionInputError(f"features have dimension {x.shape[-1]}, expected {self.feature_dim}")
        x = x - self.x_mean
        if self.x_scale is not None:
            x = x / self.x_scale
        return x

    def _weights(self, alphas: np.ndarray) -> np.ndarray:
        """(r, A): the coefficients of w(alpha) in the stored basis."""
        return self._c[:, None] / (self._lam[:, None] + alphas[None, :])

    def predict(self, X: ArrayLike, alphas: ArrayLike) -> np.ndarray:
        """Predictions of every alpha.

        Args:
            X: (M, D) features (e.g. image-level features = mean of crop features; predictions are
                linear so this equals the mean of crop predictions).
            alphas: (A,) penalties.

        Returns:
            (M, A) predictions.
        """
        a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
        for v in a:
            _check_alpha(v)
        proj = self._transform(X) @ self._basis  # (M, r)
        return proj @ self._weights(a) + self.y_mean

    def head(self, alpha: float) -> RidgeHead:
        """The :class:`RidgeHead` for one alpha (identical to :func:`fit_ridge` up to rounding)."""
        a = _check_alpha(alpha)
        coef = self._basis @ self._weights(np.array([a]))[:, 0]
        if self.standardize:
            return RidgeHead(coef=coef, intercept=self.y_mean, alpha=a, feature_mean=self.x_mean, feature_scale=self.x_scale)
        return RidgeHead(coef=coef, intercept=self.y_mean - float(self.x_mean @ coef), alpha=a)


# --------------------------------------------------------------------------------------------------
# alpha selection


def alpha_grid(kind: AlphaGridKind | str = "protocol") -> np.ndarray:
    """The penalty grid.

    Args:
        kind: ``"protocol"`` (default; the ARNIQA protocol): 100 log-spaced values in [1e-3, 1e3];
            ``"budget"`` (the SHAMISA code's fast strategy): 24 log-spaced values in [1e-2, 1e2].
    """
    if kind == "protocol":
        return np.logspace(-3, 3, 100)
    if kind == "budget":
        return np.logspace(-2, 2, 24)
    raise RegressionInputError(f"unknown alpha grid {kind!r} (choose 'protocol' or 'budget')")


@dataclass(frozen=True, eq=False)
class AlphaTable:
    """The result of an alpha search.

    Attributes:
        grid: (A,) penalties tried.
        val_srcc: (S, A) validation SRCC of every split and alpha (NaN where undefined).
        median_srcc: (A,) median over splits (ignoring NaN).
        best_index: index of the chosen alpha in ``grid``.
    """

    grid: np.ndarray
    val_srcc: np.ndarray
    median_srcc: np.ndarray
    best_index: int
    seconds: float = field(default=0.0)
    predictions: tuple[np.ndarray, ...] | None = field(default=None, repr=False)

    def chosen_predictions(self, split: int) -> np.ndarray:
        """(M,) predictions of the chosen alpha for the ``predict`` features of ``split``."""
        if self.predictions is None:
            raise RegressionInputError("select_alpha was called without features to predict")
        return self.predictions[split][:, self.best_index]

    @property
    def alpha(self) -> float:
        return float(self.grid[self.best_index])

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "best_median_val_srcc": float(self.median_srcc[self.best_index]),
            "grid": self.grid.tolist(),
            "median_val_srcc": [None if not np.isfinite(v) else float(v) for v in self.median_srcc],
            "seconds": self.seconds,
        }


def columnwise_srcc(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """SRCC of every column of ``pred`` (M, A) against ``target`` (M,); NaN for constant columns."""
    rp = rankdata(pred, axis=0)
    rt = rankdata(target)
    rp = rp - rp.mean(axis=0)
    rt = rt - rt.mean()
    num = rt @ rp
    den = np.sqrt((rp**2).sum(axis=0) * (rt**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[den <= 1e-12] = np.nan
    return out


def select_alpha(
    features: ArrayLike,
    scores: ArrayLike,
    train_splits: Sequence[ArrayLike],
    val_splits: Sequence[ArrayLike],
    grid: ArrayLike | None = None,
    *,
    standardize: bool = False,
    predict: Sequence[ArrayLike] | None = None,
) -> tuple[float, AlphaTable]:
    """Choose the ridge penalty on the validation images of every split.

    For each split: fit on the train images' crops (all alphas at once, :class:`RidgePath`), predict
    the validation images (mean of their crop predictions), SRCC per alpha. The chosen alpha maximises
    the median SRCC over splits (ties: the smallest alpha).

    Args:
        features: (N, K, D) crop features (or (N, D)) of the whole dataset.
        scores: (N,) human scores.
        train_splits: per split, indices of the training images.
        val_splits: per split, indices of the validation images (at least 2 each).
        grid: penalties (default :func:`alpha_grid` ``("protocol")``).
        standardize: standardise features with each split's training statistics.
        predict: optional, per split, image-level (M_s, D) features (e.g. the mean crop feature of the
            test images) to predict with every alpha in the same pass; the (M_s, A) predictions are
            returned in ``table.predictions`` (``table.chosen_predictions(s)`` for the chosen alpha).
            Identical to refitting with the chosen alpha (predictions are linear in the features), at
            no extra eigendecomposition.

    Returns:
        (alpha, table).
    """
    import time

    t0 = time.perf_counter()
    x = np.asarray(features)
    y = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = alpha_grid("protocol") if grid is None else np.asarray(grid, dtype=np.float64).reshape(-1)
    if g.size == 0:
        raise RegressionInputError("the alpha grid is empty")
    for v in g:
        _check_alpha(v)
    if len(train_splits) != len(val_splits) or len(train_splits) == 0:
        raise RegressionInputError(
            f"need one validation set per training set, got {len(train_splits)} and {len(val_splits)}"
        )
    if x.shape[0] != y.shape[0]:
        raise RegressionInputError(f"{x.shape[0]} feature rows but {y.shape[0]} scores")
    if predict is not None and len(predict) != len(train_splits):
        raise RegressionInputError(f"predict has {len(predict)} entries for {len(train_splits)} splits")
    table = np.full((len(train_splits), g.size), np.nan)
    extra: list[np.ndarray] = []
    for s, (tr, va) in enumerate(zip(train_splits, val_splits, strict=True)):
        tr = np.asarray(tr, dtype=np.int64)
        va = np.asarray(va, dtype=np.int64)
        if va.size < 2:
            raise RegressionInputError(f"split {s} has {va.size} validation images; at least 2 are needed")
        path = RidgePath(x[tr], y[tr], standardize=standardize)
        xv = x[va]
        _check_finite(xv, "validation features")
        xv_img = xv.mean(axis=1) if xv.ndim == 3 else xv
        table[s] = columnwise_srcc(path.predict(xv_img, g), y[va])
        if predict is not None:
            xp = np.asarray(predict[s])
            _check_finite(xp, "features to predict")
            extra.append(path.predict(xp, g))
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(table, axis=0)
    if not np.isfinite(med).any():
        raise RegressionInputError("validation SRCC is undefined for every alpha (constant predictions or scores)")
    best = int(np.nanargmax(med))
    return float(g[best]), AlphaTable(
        grid=g,
        val_srcc=table,
        median_srcc=med,
        best_index=best,
        seconds=time.perf_counter() - t0,
        predictions=tuple(extra) if predict is not None else None,
    )


# --------------------------------------------------------------------------------------------------
# storage


def head_to_tensors(head: RidgeHead) -> dict[str, Any]:
    """The head as a flat dict of float32 torch tensors for ``safetensors.torch.save_file``.

    Keys: ``coef`` (D,), ``intercept`` (1,), ``alpha`` (1,), and ``feature_mean`` / ``feature_scale``
    (D,) when the head standardises. Float32 so the scorer can apply it to float32 features directly.
    """
    import torch

    out: dict[str, Any] = {
        "coef": torch.from_numpy(head.coef.astype(np.float32)),
        "intercept": torch.tensor([head.intercept], dtype=torch.float32),
        "alpha": torch.tensor([head.alpha], dtype=torch.float32),
    }
    if head.feature_mean is not None:
        out["feature_mean"] = torch.from_numpy(head.feature_mean.astype(np.float32))
    if head.feature_scale is not None:
        out["feature_scale"] = torch.from_numpy(head.feature_scale.astype(np.float32))
    return out


def head_from_tensors(tensors: Mapping[str, Any]) -> RidgeHead:
    """Inverse of :func:`head_to_tensors` (accepts torch tensors or numpy arrays).

    Raises:
        ModelFileError: a key is missing or a value has the wrong shape or non-finite values.
    """

    def arr(key: str) -> np.ndarray:
        v = tensors[key]
        if hasattr(v, "detach"):
            v = v.detach().cpu().double().numpy()
        return np.asarray(v, dtype=np.float64)

    missing = [k for k in ("coef", "intercept") if k not in tensors]
    if missing:
        raise ModelFileError(f"ridge head is missing tensor(s) {', '.join(missing)}")
    try:
        coef = arr("coef")
        intercept = arr("intercept").reshape(-1)
        alpha = arr("alpha").reshape(-1) if "alpha" in tensors else np.array([np.nan])
        if intercept.size != 1 or alpha.size != 1:
            raise ModelFileError("ridge head 'intercept' and 'alpha' must hold one value each")
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ModelFileError("ridge head holds NaN or infinite values")
        head = RidgeHead(
            coef=coef,
            intercept=float(intercept[0]),
            alpha=float(alpha[0]),
            feature_mean=arr("feature_mean") if "feature_mean" in tensors else None,
            feature_scale=arr("feature_scale") if "feature_scale" in tensors else None,
        )
    except RegressionInputError as e:
        raise ModelFileError(f"invalid ridge head: {e}") from None
    return head
