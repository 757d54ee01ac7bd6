"""Ridge regression and the choice of alpha against references written here: the closed-form ridge
solution with an unpenalised intercept, crop predictions averaged per image, scipy's Spearman correlation
on each split's validation images, and ``np.median`` over splits (ties: the first, i.e. smallest, alpha).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from shamisa.evaluation.ridge import fit_ridge, select_alpha

GRID = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0])


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """argmin ||y - X w - b||^2 + alpha ||w||^2 (b not penalised)."""
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, float(ym - xm @ w)


def _data(seed: int, n: int = 60, k: int = 3, d: int = 6):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    img = rng.normal(size=(n, d))
    feats = img[:, None, :] + 0.8 * rng.normal(size=(n, k, d))  # K noisy crops per image
    scores = img @ w_true + 1.5 * rng.normal(size=n)
    splits = []
    for s in range(5):
        perm = np.random.default_rng(100 * seed + s).permutation(n)
        splits.append((perm[:12], perm[12:24]))  # small training sets: alpha matters
    return feats, scores, splits


def _reference_table(feats, scores, splits):
    table = np.zeros((len(splits), GRID.size))
    for s, (tr, va) in enumerate(splits):
        x = feats[tr].reshape(-1, feats.shape[-1])
        y = np.repeat(scores[tr], feats.shape[1])
        for a, alpha in enumerate(GRID):
            w, b = _ridge(x, y, alpha)
            pred = (feats[va] @ w + b).mean(axis=1)
            table[s, a] = spearmanr(pred, scores[va]).statistic
    return table


def test_fit_ridge_is_the_closed_form_solution():
    feats, scores, _ = _data(0)
    x = feats.reshape(-1, feats.shape[-1])
    y = np.repeat(scores, feats.shape[1])
    for alpha in (0.01, 3.0):
        head = fit_ridge(feats, scores, alpha)
        w, b = _ridge(x, y, alpha)
        np.testing.assert_allclose(head.coef, w, rtol=1e-9, atol=1e-12)
        assert head.intercept == pytest.approx(b, rel=1e-9, abs=1e-12)


# for these seeds the median over splits and the mean over splits pick different alphas, and the median's
# maximum is unique (both checked), so a statistic other than the median is caught
@pytest.mark.parametrize("seed", [1, 14])
def test_select_alpha_is_the_argmax_of_the_median_over_splits(seed):
    feats, scores, splits = _data(seed)
    ref = _reference_table(feats, scores, splits)
    median = np.median(ref, axis=0)
    alpha, table = select_alpha(feats, scores, [t for t, _ in splits], [v for _, v in splits], grid=GRID)
    np.testing.assert_allclose(table.val_srcc, ref, atol=1e-12)
    np.testing.assert_allclose(table.median_srcc, median, atol=1e-12)
    assert alpha == GRID[int(np.argmax(median))]
    assert np.sum(median == median.max()) == 1
    assert GRID[int(np.argmax(ref.mean(axis=0)))] != alpha


@pytest.mark.parametrize("shape", [(40, 6), (8, 20)])  # primal (D <= N) and dual (D > N) forms
def test_ridge_path_on_small_scale_features_is_the_closed_form(shape):
    """Features of small scale (Gram eigenvalues far below 1) and small alphas: every alpha of the path
    equals the closed form, in both the primal and the dual form."""
    from shamisa.evaluation.ridge import RidgePath

    n, d = shape
    rng = np.random.default_rng(3)
    x = 0.01 * rng.normal(size=(n, d))
    y = x @ rng.normal(size=d) * 100 + 0.1 * rng.normal(size=n)
    x_new = 0.01 * rng.normal(size=(5, d))
    alphas = np.array([1e-6, 1e-4, 1e-2])
    got = RidgePath(x, y).predict(x_new, alphas)  # (M, A)
    assert got.shape == (5, alphas.size)
    for i, a in enumerate(alphas):
        w, b = _ridge(x, y, a)
        np.testing.assert_allclose(got[:, i], x_new @ w + b, rtol=1e-6, atol=1e-8)
