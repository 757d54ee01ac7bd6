"""VICReg terms against the original formulation (Bardes, Ponce and LeCun, ICLR 2022), written here:

* invariance: mean squared error between the two embeddings;
* variance: ``mean_d relu(1 - sqrt(Var_d + 1e-4))`` per branch, the two branches averaged (``/ 2`` each);
* covariance: sum of the squared off-diagonal entries of the unbiased covariance matrix, divided by D.

and the SHAMISA half split (first halves of the reference and distorted lists vs the second halves).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shamisa.objectives.vicreg import covariance_term, invariance_term, split_halves_var_cov, variance_term


def _std_loss(z: np.ndarray) -> float:
    std = np.sqrt(z.var(axis=0, ddof=1) + 1e-4)
    return float(np.mean(np.maximum(0.0, 1.0 - std)))


def _cov_loss(z: np.ndarray) -> float:
    n, d = z.shape
    zc = z - z.mean(axis=0)
    c = zc.T @ zc / (n - 1)
    return float((np.sum(c**2) - np.sum(np.diag(c) ** 2)) / d)


def _original_vicreg(x: np.ndarray, y: np.ndarray, sim=25.0, std=25.0, cov=1.0) -> float:
    repr_loss = float(np.mean((x - y) ** 2))
    std_loss = _std_loss(x) / 2 + _std_loss(y) / 2
    cov_loss = _cov_loss(x) + _cov_loss(y)
    return sim * repr_loss + std * std_loss + cov * cov_loss


@pytest.mark.parametrize("scale", [0.3, 2.0])  # below and above the std target of 1 (the hinge on and off)
def test_vicreg_terms_match_the_original(scale, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 12, generator=g, dtype=torch.float64) * scale
    x[:, 0] *= 0.1  # one collapsed-ish dimension so the hinge is active somewhere
    y = x + 0.2 * torch.randn(32, 12, generator=g, dtype=torch.float64)
    xd, yd = x.to(device), y.to(device)
    xn, yn = x.numpy(), y.numpy()
    assert float(variance_term(xd)) == pytest.approx(_std_loss(xn) / 2, rel=1e-10, abs=1e-12)
    assert float(covariance_term(xd)) == pytest.approx(_cov_loss(xn), rel=1e-10)
    assert float(invariance_term(xd, yd)) == pytest.approx(float(np.mean((xn - yn) ** 2)), rel=1e-10)
    ours = (
        25.0 * invariance_term(xd, yd)
        + 25.0 * (variance_term(xd) + variance_term(yd))
        + 1.0 * (covariance_term(xd) + covariance_term(yd))
    )
    assert float(ours) == pytest.approx(_original_vicreg(xn, yn), rel=1e-10)


def test_variance_gradient_matches_finite_differences(device):
    x = (torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5).to(device)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: variance_term(t) + covariance_term(t), (x,))


def test_split_halves_var_cov_is_item_0_against_item_1(device):
    g = torch.Generator().manual_seed(2)
    z_ref = torch.randn(12, 6, generator=g, dtype=torch.float64)
    z_dist = torch.randn(48, 6, generator=g, dtype=torch.float64) * 0.4
    var, cov = split_halves_var_cov(z_ref.to(device), z_dist.to(device))
    a = np.concatenate([z_ref[:6].numpy(), z_dist[:24].numpy()])
    b = np.concatenate([z_ref[6:].numpy(), z_dist[24:].numpy()])
    assert float(var) == pytest.approx(_std_loss(a) / 2 + _std_loss(b) / 2, rel=1e-5)
    assert float(cov) == pytest.approx(_cov_loss(a) + _cov_loss(b), rel=1e-5)
    var1, cov1 = split_halves_var_cov(z_ref.to(device), z_dist.to(device), single_view=True)
    allz = np.concatenate([z_ref.numpy(), z_dist.numpy()])
    assert float(var1) == pytest.approx(_std_loss(allz) / 2, rel=1e-5)
    assert float(cov1) == pytest.approx(_cov_loss(allz), rel=1e-5)
