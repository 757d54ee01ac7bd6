"""Tests of shamisa.evaluation.metrics against scipy.stats and small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shamisa.errors import ShamisaError
from shamisa.evaluation.metrics import (
    MetricInputError,
    correlation_report,
    krcc,
    logistic4,
    logistic4_fit,
    plcc,
    plcc_logistic,
    rmse,
    srcc,
)

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


def test_hand_computed_cases() -> None:
    # Perfect monotone but nonlinear: ranks agree perfectly, Pearson does not.
    x = [1.0, 2.0, 3.0, 4.0]
    y = [1.0, 4.0, 9.0, 100.0]
    assert srcc(x, y) == pytest.approx(1.0)
    assert krcc(x, y) == pytest.approx(1.0)
    assert plcc(x, y) < 0.9
    # Reversed order.
    assert srcc(x, y[::-1]) == pytest.approx(-1.0)
    assert krcc(x, y[::-1]) == pytest.approx(-1.0)
    # One swapped pair out of 6 pairs in 4 items: tau = (5 - 1) / 6; rho = 1 - 6*2/(4*15) = 0.8.
    assert krcc([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)
    assert srcc([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    # RMSE: errors 1, -1, 2 -> sqrt(6/3).
    assert rmse([1, 1, 5], [0, 2, 3]) == pytest.approx(math.sqrt(2.0))
    # PLCC of an affine map is 1 (sign follows the slope).
    assert plcc([0, 1, 2], [3, 5, 7]) == pytest.approx(1.0)
    assert plcc([0, 1, 2], [3, 1, -1]) == pytest.approx(-1.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=3, max_size=40))
def test_agrees_with_scipy(pairs: list[tuple[float, float]]) -> None:
    p = np.array([a for a, _ in pairs])
    t = np.array([b for _, b in pairs])
    if np.ptp(p) == 0 or np.ptp(t) == 0:
        with pytest.raises(MetricInputError):
            srcc(p, t)
        return
    ref_s = stats.spearmanr(p, t).statistic
    ref_k = stats.kendalltau(p, t).statistic
    if np.isfinite(ref_s):
        assert srcc(p, t) == pytest.approx(ref_s, abs=1e-12)
    if np.isfinite(ref_k):
        assert krcc(p, t) == pytest.approx(ref_k, abs=1e-12)
    assert rmse(p, t) == pytest.approx(float(np.sqrt(np.mean((p - t) ** 2))))


def test_ties_use_average_ranks() -> None:
    p = [1, 1, 2, 3, 3, 3]
    t = [2, 1, 2, 5, 4, 6]
    assert srcc(p, t) == pytest.approx(stats.spearmanr(p, t).statistic)
    assert krcc(p, t) == pytest.approx(stats.kendalltau(p, t).statistic)


@pytest.mark.parametrize("fn", [srcc, plcc, krcc, plcc_logistic])
def test_constant_input_is_a_clear_error(fn) -> None:
    with pytest.raises(ValueError, match="constant"):
        fn([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(MetricInputError, match="targets are constant"):
        fn([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])


@pytest.mark.parametrize("fn", [srcc, plcc, krcc, rmse])
def test_invalid_inputs(fn) -> None:
    with pytest.raises(MetricInputError, match="NaN or infinite"):
        fn([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(MetricInputError, match="NaN or infinite"):
        fn([1.0, 2.0, 3.0], [1.0, np.inf, 3.0])
    with pytest.raises(MetricInputError, match="differ in length"):
        fn([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(MetricInputError, match="at least 2"):
        fn([1.0], [1.0])
    with pytest.raises(ShamisaError):  # also a ShamisaError: the CLI prints one line
        fn([], [])


def test_rmse_allows_constant_and_accepts_columns() -> None:
    assert rmse([2.0, 2.0], [2.0, 2.0]) == 0.0
    assert srcc(np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_logistic_fit_recovers_a_sigmoid() -> None:
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(-3, 3, 80))
    beta = (90.0, 10.0, 0.5, 0.7)
    y = logistic4(x, *beta)
    fitted = logistic4_fit(x, y)
    assert np.allclose(logistic4(x, *fitted), y, atol=1e-3)
    assert plcc_logistic(x, y) == pytest.approx(1.0, abs=1e-6)
    assert plcc_logistic(x, y) > plcc(x, y)


def test_correlation_report_keys_and_values() -> None:
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 100, 50)
    p = t + rng.normal(0, 10, 50)
    rep = correlation_report(p, t, logistic=True)
    assert set(rep) == {"n", "srcc", "plcc", "krcc", "rmse", "plcc_logistic"}
    assert rep["n"] == 50
    assert rep["srcc"] == pytest.approx(srcc(p, t))
    assert rep["rmse"] == pytest.approx(rmse(p, t))
    assert 0.8 < rep["plcc"] <= 1.0
