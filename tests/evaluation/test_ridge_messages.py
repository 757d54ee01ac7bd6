"""Every refusal of the ridge module, with its exact message (a user reads these), and the edges of
select_alpha: one split, standardised features, (N, D) features, a one-value grid, two validation images."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from shamisa.errors import ModelFileError
from shamisa.evaluation.ridge import (
    AlphaTable,
    RegressionInputError,
    RidgeHead,
    RidgePath,
    alpha_grid,
    crop_level,
    fit_ridge,
    head_from_tensors,
    head_to_tensors,
    select_alpha,
)


def _exact(message: str):
    return pytest.raises(RegressionInputError, match="^" + re.escape(message) + "$")


def test_head_refusals() -> None:
    with _exact("coef must be 1-D, got shape (2, 2)"):
        RidgeHead(np.zeros((2, 2)), 0.0, 1.0)
    with _exact("feature_mean has shape (3,), expected (2,)"):
        RidgeHead(np.zeros(2), 0.0, 1.0, feature_mean=np.zeros(3))
    with _exact("feature_scale has shape (1,), expected (2,)"):
        RidgeHead(np.zeros(2), 0.0, 1.0, feature_mean=np.zeros(2), feature_scale=np.ones(1))
    head = RidgeHead(np.array([1.0, 2.0]), 0.5, 1.0)
    with _exact("features have dimension 3, the head expects 2"):
        head.predict(np.zeros((4, 3)))
    with _exact("expected (N, K, D) crop features, got shape (4, 2)"):
        head.predict_images(np.zeros((4, 2)))
    # the fields are converted: lists and integers in, float64 arrays and floats out
    h = RidgeHead([1, 2], 3, 2, feature_mean=[0, 1], feature_scale=[1, 2])
    assert h.coef.dtype == np.float64 and h.feature_mean.dtype == np.float64 and h.feature_scale.dtype == np.float64
    assert isinstance(h.intercept, float) and isinstance(h.alpha, float)
    assert h.predict(np.array([[1.0, 3.0]])).tolist() == [1.0 * 1 + 2.0 * 1 + 3.0]


def test_fit_refusals() -> None:
    x, y = np.random.default_rng(0).normal(size=(5, 3)), np.arange(5.0)
    with _exact("features must be (N, D) or (N, K, D), got shape (5,)"):
        crop_level(np.zeros(5), y)
    with _exact("5 feature rows but 4 targets"):
        crop_level(x, y[:4])
    with _exact("need at least 2 training images, got 1"):
        crop_level(x[:1], y[:1])
    xs, ys = crop_level(x[:2], y[:2])  # two images are enough
    assert xs.shape == (2, 3) and ys.dtype == np.float64
    xk, yk = crop_level(np.zeros((2, 3, 4), dtype=np.float32), np.array([[1.0], [2.0]], dtype=np.float32))
    assert xk.shape == (6, 4) and yk.tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0] and yk.dtype == np.float64
    bad = x.copy()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    with _exact("features contain 2 NaN or infinite value(s); cannot fit a ridge regressor"):
        fit_ridge(bad, y, 1.0)
    with _exact("the ridge penalty alpha must be a positive finite number, got 0.0"):
        fit_ridge(x, y, 0.0)
    path = RidgePath(x, y, standardize=False)
    with _exact("features have dimension 2, expected 3"):
        path.predict(np.zeros((1, 2)), np.array([1.0]))
    with _exact("unknown alpha grid 'fine' (choose 'protocol' or 'budget')"):
        alpha_grid("fine")


def test_select_alpha_refusals() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 2, 3)), rng.normal(size=12)
    tr, va = [np.arange(8)], [np.arange(8, 12)]
    with _exact("the alpha grid is empty"):
        select_alpha(x, y, tr, va, grid=[])
    with _exact("need one validation set per training set, got 1 and 2"):
        select_alpha(x, y, tr, va * 2, grid=[1.0])
    with _exact("need one validation set per training set, got 0 and 0"):
        select_alpha(x, y, [], [], grid=[1.0])
    with _exact("12 feature rows but 11 scores"):
        select_alpha(x, y[:11], tr, va, grid=[1.0])
    with _exact("predict has 2 entries for 1 splits"):
        select_alpha(x, y, tr, va, grid=[1.0], predict=[x[:2, 0], x[:2, 0]])
    with _exact("split 0 has 1 validation images; at least 2 are needed"):
        select_alpha(x, y, tr, [np.arange(8, 9)], grid=[1.0])
    const = np.zeros(12)
    with _exact("validation SRCC is undefined for every alpha (constant predictions or scores)"):
        select_alpha(x, const, tr, va, grid=[1.0])
    _, table = select_alpha(x, y, tr, va, grid=[1.0])
    with _exact("select_alpha was called without features to predict"):
        table.chosen_predictions(0)
    assert isinstance(table, AlphaTable)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def test_select_alpha_edges_against_a_direct_search() -> None:
    """One split, two validation images, (N, D) features, a one-value grid and standardize=True, each
    against a search written here with fit_ridge (standardised by the training statistics)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    y = x @ np.array([0.5, -0.05, 4.0, 0.2]) + 0.3 * rng.normal(size=30)
    tr, va = np.arange(20), np.arange(20, 30)
    grid = np.array([0.01, 1.0, 100.0])

    def direct(standardize: bool, val) -> list[float]:
        xt = x[tr]
        mean, scale = xt.mean(0), xt.std(0)
        out = []
        for a in grid:
            if standardize:
                h = fit_ridge((xt - mean) / scale, y[tr], a)
                pred = ((x[val] - mean) / scale) @ h.coef + h.intercept
            else:
                h = fit_ridge(xt, y[tr], a)
                pred = x[val] @ h.coef + h.intercept
            out.append(_spearman(pred, y[val]))
        return out

    for standardize in (False, True):
        alpha, table = select_alpha(x, y, [tr], [va], grid=grid, standardize=standardize)
        np.testing.assert_allclose(table.val_srcc[0], direct(standardize, va), atol=1e-12)
        assert alpha == grid[int(np.argmax(direct(standardize, va)))]
    # standardisation changes the choice on these scales
    assert not np.allclose(direct(True, va), direct(False, va))
    # two validation images (the documented minimum) and a one-value grid
    alpha, table = select_alpha(x, y, [tr], [va[:2]], grid=[3.0])
    assert alpha == 3.0 and table.val_srcc.shape == (1, 1) and abs(table.val_srcc[0, 0]) == 1.0


def test_head_tensor_round_trip_and_refusals() -> None:
    head = RidgeHead(np.array([1.0, -2.0]), 0.25, 3.0, feature_mean=np.array([0.1, 0.2]))
    t = head_to_tensors(head)
    assert t["intercept"].dtype == torch.float32 and t["alpha"].dtype == torch.float32
    back = head_from_tensors({k: v.requires_grad_(True) if v.is_floating_point() else v for k, v in t.items()})
    np.testing.assert_allclose(back.coef, head.coef)
    assert back.intercept == pytest.approx(0.25) and back.alpha == pytest.approx(3.0)
    with pytest.raises(ModelFileError, match=r"^ridge head is missing tensor\(s\) intercept$"):
        head_from_tensors({"coef": t["coef"]})
    for key in ("intercept", "alpha"):
        two = dict(t, **{key: torch.tensor([1.0, 2.0])})
        with pytest.raises(ModelFileError, match=r"^ridge head 'intercept' and 'alpha' must hold one value each$"):
            head_from_tensors(two)
    with pytest.raises(ModelFileError, match=r"^ridge head holds NaN or infinite values$"):
        head_from_tensors(dict(t, coef=torch.tensor([1.0, float("nan")])))


def test_select_alpha_names_non_finite_validation_or_prediction_features_and_times_itself() -> None:
    import time

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 2, 3)), rng.normal(size=12)
    tr, va = [np.arange(8)], [np.arange(8, 12)]
    bad = x.copy()
    bad[9, 1, 2] = np.nan  # a validation image only: the training fit is fine
    with _exact("validation features contain 1 NaN or infinite value(s); cannot fit a ridge regressor"):
        select_alpha(bad, y, tr, va, grid=[1.0])
    to_predict = np.array([[0.0, np.inf, 1.0], [np.nan, 0.0, 0.0]])
    with _exact("features to predict contain 2 NaN or infinite value(s); cannot fit a ridge regressor"):
        select_alpha(x, y, tr, va, grid=[1.0], predict=[to_predict])
    start = time.perf_counter()
    _, table = select_alpha(x, y, tr, va, grid=[1.0, 10.0])
    elapsed = time.perf_counter() - start
    assert 0.0 < table.seconds <= elapsed


def test_head_tensors_are_float32_whatever_the_default_dtype() -> None:
    head = RidgeHead(np.array([1.0, -2.0]), 0.25, 3.0)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        t = head_to_tensors(head)
    finally:
        torch.set_default_dtype(previous)
    assert {k: v.dtype for k, v in t.items()} == {k: torch.float32 for k in ("coef", "intercept", "alpha")}
