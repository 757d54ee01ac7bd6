"""VICReg terms on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.objectives.vicreg import (
    covariance_term,
    invariance_term,
    split_halves,
    split_halves_var_cov,
    variance_term,
)


def test_variance_term_hand_computed() -> None:
    # dim 0: values 0, 2 -> unbiased var 2 -> std > 1 -> hinge 0
    # dim 1: values 0, 0 -> var 0 -> std sqrt(1e-4) = 0.01 -> hinge 0.99
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    expected = ((0.0 + (1.0 - math.sqrt(1e-4))) / 2) / 2
    assert variance_term(z).item() == pytest.approx(expected, rel=1e-6)


def test_variance_term_uses_unbiased_variance() -> None:
    # values 0, 1 -> unbiased var 0.5 (biased would be 0.25)
    z = torch.tensor([[0.0], [1.0]])
    expected = (1.0 - math.sqrt(0.5 + 1e-4)) / 2
    assert variance_term(z).item() == pytest.approx(expected, rel=1e-6)


def test_covariance_term_hand_computed() -> None:
    # x = 1, 3, 5 (mean 3), y = 2, 6, 7 (mean 5); centred x = -2, 0, 2; y = -3, 1, 2
    # cov_xy = (6 + 0 + 4) / 2 = 5; off-diagonal sum of squares = 2 * 25 = 50; / D = 2 -> 25
    z = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 7.0]])
    assert covariance_term(z).item() == pytest.approx(25.0, rel=1e-6)


def test_covariance_term_zero_for_decorrelated() -> None:
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert covariance_term(z).item() == pytest.approx(0.0, abs=1e-7)


def test_invariance_term() -> None:
    a = torch.tensor([[0.0, 1.0]])
    b = torch.tensor([[2.0, 1.0]])
    assert invariance_term(a, b).item() == pytest.approx(2.0)  # (4 + 0) / 2
    with pytest.raises(ValueError):
        invariance_term(a, torch.zeros(2, 2))


def test_too_few_rows_raise() -> None:
    with pytest.raises(ValueError):
        variance_term(torch.zeros(1, 3))
    with pytest.raises(ValueError):
        covariance_term(torch.zeros(1, 3))


def test_split_halves_rows() -> None:
    z_ref = torch.arange(4.0)[:, None]  # B*2R = 4 rows
    z_dist = 10 + torch.arange(8.0)[:, None]  # 8 rows
    z1, z2 = split_halves(z_ref, z_dist)
    assert z1.squeeze(1).tolist() == [0, 1, 10, 11, 12, 13]
    assert z2.squeeze(1).tolist() == [2, 3, 14, 15, 16, 17]


def test_split_halves_var_cov_matches_terms_and_is_fp32() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    z_ref = torch.randn(4, 5, generator=g, dtype=torch.float64)
    z_dist = torch.randn(16, 5, generator=g, dtype=torch.float64)
    var, cov = split_halves_var_cov(z_ref, z_dist, n_items=2)
    assert var.dtype == torch.float32 and cov.dtype == torch.float32
    z1 = torch.cat((z_ref[:2], z_dist[:8])).float()
    z2 = torch.cat((z_ref[2:], z_dist[8:])).float()
    assert var.item() == pytest.approx((variance_term(z1) + variance_term(z2)).item(), rel=1e-6)
    assert cov.item() == pytest.approx((covariance_term(z1) + covariance_term(z2)).item(), rel=1e-6)
    var1, cov1 = split_halves_var_cov(z_ref, z_dist, single_view=True)
    z = torch.cat((z_ref, z_dist)).float()
    assert var1.item() == pytest.approx(variance_term(z).item(), rel=1e-6)
    assert cov1.item() == pytest.approx(covariance_term(z).item(), rel=1e-6)


def test_split_halves_var_cov_checks_items() -> None:
    with pytest.raises(ValueError):
        split_halves_var_cov(torch.zeros(3, 2), torch.zeros(6, 2), n_items=2)


def test_split_halves_var_cov_gradient() -> None:
    z_ref = torch.randn(4, 3, requires_grad=True)
    z_dist = torch.randn(8, 3, requires_grad=True)
    var, cov = split_halves_var_cov(z_ref.bfloat16(), z_dist.bfloat16())
    (var + cov).backward()
    assert z_ref.grad is not None and torch.isfinite(z_ref.grad).all()
    assert z_dist.grad is not None and torch.isfinite(z_dist.grad).all()


def _hinge_std(z: torch.Tensor, eps: float) -> float:
    """v(Z) written out: mean over dimensions of max(0, 1 - sqrt(unbiased var + eps)), halved as the module's."""
    zz = z.double()
    var = ((zz - zz.mean(0)) ** 2).sum(0) / (zz.shape[0] - 1)
    return float(torch.clamp(1 - torch.sqrt(var + eps), min=0).mean() / 2)


@pytest.mark.parametrize("single_view", [False, True])
def test_split_halves_var_cov_uses_the_given_eps(single_view: bool) -> None:
    """A non-default eps reaches every variance term (halves and single view)."""
    z_ref = torch.tensor([[0.0, 0.1], [0.2, 0.0], [0.0, 0.3], [0.1, 0.1]])
    z_dist = torch.tensor([[0.3, 0.0], [0.0, 0.2], [0.1, 0.0], [0.2, 0.3]])
    eps = 0.5
    var, _ = split_halves_var_cov(z_ref, z_dist, eps=eps, single_view=single_view)
    if single_view:
        expected = _hinge_std(torch.cat([z_ref, z_dist]), eps)
    else:
        expected = _hinge_std(torch.cat([z_ref[:2], z_dist[:2]]), eps) + _hinge_std(torch.cat([z_ref[2:], z_dist[2:]]), eps)
    assert var.item() == pytest.approx(expected, rel=1e-5)


def test_two_rows_are_enough() -> None:
    # rows (0, 0), (2, 2): centred -1, 1 in both dims; cov_01 = (1 + 1) / 1 = 2; off-diagonal squares 2 * 4 = 8; / D = 4
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    assert covariance_term(z).item() == pytest.approx(4.0, rel=1e-6)
    assert variance_term(z).item() == pytest.approx(0.0, abs=1e-7)  # std sqrt(2) > 1 in both dims


def test_error_messages_name_the_shapes() -> None:
    with pytest.raises(ValueError, match=r"variance_term needs \(n>=2, D\) embeddings, got shape \(1, 3\)"):
        variance_term(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"covariance_term needs \(n>=2, D\) embeddings, got shape \(1, 3\)"):
        covariance_term(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"shapes differ, \(1, 2\) vs \(2, 2\)"):
        invariance_term(torch.zeros(1, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"row counts 4 and 6 are not multiples of n_items=4"):
        split_halves_var_cov(torch.zeros(4, 3), torch.zeros(6, 3), n_items=4)
