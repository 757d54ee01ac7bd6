"""Tests of shamisa.evaluation.ridge: ridge fits equal sklearn, the all-alpha path, split-aware alpha choice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from shamisa.errors import ModelFileError, ShamisaError
from shamisa.evaluation.metrics import srcc
from shamisa.evaluation.ridge import (
    RegressionInputError,
    RidgeHead,
    RidgePath,
    alpha_grid,
    columnwise_srcc,
    fit_ridge,
    head_from_tensors,
    head_to_tensors,
    select_alpha,
)


def linear_problem(n: int = 120, k: int = 5, d: int = 12, noise: float = 0.3, seed: int = 0):
    """Images with K noisy crop features around a per-image feature; score = w . x + b."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    base = rng.normal(size=(n, d))
    crops = base[:, None, :] + 0.1 * rng.normal(size=(n, k, d))
    y = base @ w + 3.0 + noise * rng.normal(size=n)
    return crops.astype(np.float32), y, w


def random_splits(n: int, n_splits: int, seed: int = 27):
    train, val, test = [], [], []
    for s in range(n_splits):
        p = np.random.default_rng(seed + s).permutation(n)
        a, b = int(0.7 * n), int(0.8 * n)
        train.append(p[:a]), val.append(p[a:b]), test.append(p[b:])
    return train, val, test


@pytest.mark.parametrize("shape", [(200, 30), (40, 100)])  # primal and dual branches
@pytest.mark.parametrize("standardize", [False, True])
def test_path_and_fit_equal_sklearn(shape, standardize) -> None:
    n, d = shape
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + 1.0
    y = X @ rng.normal(size=d) + rng.normal(size=n) + 5.0
    Xq = rng.normal(size=(7, d))
    path = RidgePath(X, y, standardize=standardize)
    grid = np.array([1e-3, 0.1, 1.0, 10.0, 1e3])
    all_pred = path.predict(Xq, grid)
    assert all_pred.shape == (7, 5)
    for j, a in enumerate(grid):
        if standardize:
            mu, sd = X.mean(0), X.std(0)
            ref = Ridge(alpha=a).fit((X - mu) / sd, y)
            ref_pred = ref.predict((Xq - mu) / sd)
        else:
            ref = Ridge(alpha=a).fit(X, y)
            ref_pred = ref.predict(Xq)
            assert np.allclose(path.head(a).coef, ref.coef_, atol=1e-8)
            assert np.allclose(fit_ridge(X, y, a).coef, ref.coef_, atol=1e-8)
        assert np.allclose(all_pred[:, j], ref_pred, atol=1e-7)
        assert np.allclose(path.head(a).predict(Xq), ref_pred, atol=1e-7)
        assert np.allclose(fit_ridge(X, y, a, standardize=standardize).predict(Xq), ref_pred, atol=1e-7)


def test_crop_features_are_samples_and_images_average_crops() -> None:
    X, y, _ = linear_problem(n=30, k=5, d=6)
    head = fit_ridge(X, y, 0.5)
    ref = Ridge(alpha=0.5).fit(X.reshape(-1, 6).astype(np.float64), np.repeat(y, 5))
    assert np.allclose(head.coef, ref.coef_, atol=1e-6)
    per_crop = head.predict(X)
    assert per_crop.shape == (30, 5)
    assert np.allclose(head.predict_images(X), per_crop.mean(1))
    # Linear model: predicting the mean crop feature equals the mean of crop predictions.
    assert np.allclose(head.predict(X.mean(1)), per_crop.mean(1), atol=1e-5)


def test_select_alpha_on_a_linear_problem() -> None:
    X, y, w = linear_problem(n=150, noise=0.3)
    train, val, test = random_splits(150, 4)
    alpha, table = select_alpha(X, y, train, val, alpha_grid("protocol"))
    assert table.val_srcc.shape == (4, 100)
    assert alpha == table.alpha
    assert np.nanmax(table.median_srcc) == table.median_srcc[table.best_index]
    # A well-posed low-noise problem wants a small penalty, not the largest ones.
    assert alpha < 10.0
    for s in range(4):
        head = fit_ridge(X[train[s]], y[train[s]], alpha)
        assert srcc(head.predict_images(X[test[s]]), y[test[s]]) > 0.95
    # The table row of a split equals a direct per-alpha computation for a few alphas.
    for j in (0, 50, 99):
        h = fit_ridge(X[train[0]], y[train[0]], table.grid[j])
        pred = h.predict_images(X[val[0]])
        if np.ptp(pred) > 0:
            assert table.val_srcc[0, j] == pytest.approx(srcc(pred, y[val[0]]), abs=1e-9)


def test_select_alpha_prefers_strong_penalty_for_noise_features() -> None:
    # Many irrelevant features + few images: heavy regularisation should win over tiny alphas.
    rng = np.random.default_rng(5)
    n, d = 80, 200
    signal = rng.normal(size=n)
    X = rng.normal(size=(n, 1, d))
    X[:, 0, 0] = signal * 5
    y = signal + 0.5 * rng.normal(size=n)
    train, val, _ = random_splits(n, 5)
    alpha, table = select_alpha(X, y, train, val, alpha_grid("protocol"))
    assert table.median_srcc[table.best_index] > 0.6
    assert alpha > table.grid[0]


def test_columnwise_srcc_matches_scalar_and_flags_constants() -> None:
    rng = np.random.default_rng(0)
    t = rng.normal(size=20)
    P = np.stack([t + rng.normal(size=20), -t, np.ones(20)], axis=1)
    out = columnwise_srcc(P, t)
    assert out[0] == pytest.approx(srcc(P[:, 0], t))
    assert out[1] == pytest.approx(-1.0)
    assert np.isnan(out[2])


def test_alpha_grids() -> None:
    g = alpha_grid()
    assert g.size == 100 and g[0] == pytest.approx(1e-3) and g[-1] == pytest.approx(1e3)
    b = alpha_grid("budget")
    assert b.size == 24 and b[0] == pytest.approx(1e-2) and b[-1] == pytest.approx(1e2)
    assert np.all(np.diff(np.log(g)) > 0)
    with pytest.raises(RegressionInputError, match="unknown alpha grid"):
        alpha_grid("fast")


def test_non_finite_and_bad_inputs_are_rejected() -> None:
    X, y, _ = linear_problem(n=20, d=4)
    bad = X.copy()
    bad[3, 2, 1] = np.nan
    with pytest.raises(RegressionInputError, match="NaN or infinite"):
        fit_ridge(bad, y, 1.0)
    with pytest.raises(RegressionInputError, match="NaN or infinite"):
        RidgePath(bad, y)
    y_bad = y.copy()
    y_bad[0] = np.inf
    with pytest.raises(ShamisaError, match="targets"):
        fit_ridge(X, y_bad, 1.0)
    with pytest.raises(RegressionInputError, match="alpha"):
        fit_ridge(X, y, 0.0)
    with pytest.raises(RegressionInputError, match="targets"):
        fit_ridge(X, y[:-1], 1.0)
    tr, va, _ = random_splits(20, 2)
    with pytest.raises(RegressionInputError, match="validation"):
        select_alpha(X, y, tr, [va[0][:1], va[1]])
    with pytest.raises(RegressionInputError, match="dimension"):
        fit_ridge(X, y, 1.0).predict(np.zeros((2, 5)))


@pytest.mark.parametrize("standardize", [False, True])
def test_head_tensor_round_trip(standardize, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    X, y, _ = linear_problem(n=40, d=8)
    head = fit_ridge(X, y, 0.3, standardize=standardize)
    tensors = head_to_tensors(head)
    assert all(str(t.dtype) == "torch.float32" for t in tensors.values())
    save_file(tensors, str(tmp_path / "head.safetensors"))
    back = head_from_tensors(load_file(str(tmp_path / "head.safetensors")))
    assert isinstance(back, RidgeHead)
    assert back.alpha == pytest.approx(0.3)
    assert np.allclose(back.predict(X), head.predict(X), rtol=1e-5, atol=1e-4)
    assert (back.feature_mean is None) == (not standardize)


def test_head_from_tensors_errors() -> None:
    with pytest.raises(ModelFileError, match="missing"):
        head_from_tensors({"coef": np.zeros(3)})
    with pytest.raises(ModelFileError, match="NaN"):
        head_from_tensors({"coef": np.array([1.0, np.nan]), "intercept": np.array([0.0])})
    with pytest.raises(ModelFileError, match="shape"):
        head_from_tensors({"coef": np.zeros(3), "intercept": np.zeros(1), "feature_mean": np.zeros(2)})


def test_select_alpha_predictions_equal_a_refit() -> None:
    X, y, _ = linear_problem(n=100, noise=0.5, seed=4)
    train, val, test = random_splits(100, 3)
    alpha, table = select_alpha(X, y, train, val, alpha_grid("budget"), predict=[X[t].mean(1) for t in test])
    for s in range(3):
        ref = fit_ridge(X[train[s]], y[train[s]], alpha).predict_images(X[test[s]])
        assert table.predictions[s].shape == (len(test[s]), 24)
        assert np.allclose(table.chosen_predictions(s), ref, atol=1e-6)
    _, plain = select_alpha(X, y, train, val, alpha_grid("budget"))
    with pytest.raises(RegressionInputError, match="without features"):
        plain.chosen_predictions(0)
