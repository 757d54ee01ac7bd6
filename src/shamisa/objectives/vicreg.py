"""VICReg-style terms: variance, covariance, invariance, and the SHAMISA half-batch split.

All functions take embeddings ``z`` of shape ``(n, D)`` (rows = samples) and return a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _std(z: Tensor, eps: float) -> Tensor:
    """Per-dimension ``sqrt(unbiased var + eps)``, shape ``(D,)``."""
    return torch.sqrt(z.var(dim=0, unbiased=True) + eps)


def variance_term(z: Tensor, eps: float = 1e-4) -> Tensor:
    """Hinge on the per-dimension standard deviation.

    ``v(Z) = mean_d ReLU(1 - sqrt(Var_d(Z) + eps)) / 2`` with the unbiased variance over rows.

    Args:
        z: ``(n, D)`` embeddings, ``n >= 2``.
        eps: added to the variance inside the square root.

    Returns:
        Scalar tensor.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"variance_term needs (n>=2, D) embeddings, got shape {tuple(z.shape)}")
    return F.relu(1.0 - _std(z, eps)).mean() / 2.0


def covariance_term(z: Tensor) -> Tensor:
    """Sum of squared off-diagonal covariances divided by the dimension.

    ``C = (Z - mean)^T (Z - mean) / (n - 1)``, ``c(Z) = sum_{i != j} C_ij^2 / D``.

    Args:
        z: ``(n, D)`` embeddings, ``n >= 2``.

    Returns:
        Scalar tensor.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"covariance_term needs (n>=2, D) embeddings, got shape {tuple(z.shape)}")
    n, d = z.shape
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (n - 1)
    off_diag = cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()
    return off_diag / d


def invariance_term(a: Tensor, b: Tensor) -> Tensor:
    """Plain VICReg invariance: mean squared error between paired embeddings ``(n, D)``.

    Not used by the SHAMISA objective (the relation-graph loss replaces it); kept for baselines.
    """
    if a.shape != b.shape:
        raise ValueError(f"invariance_term: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    return F.mse_loss(a, b)


def split_halves(z_ref: Tensor, z_dist: Tensor) -> tuple[Tensor, Tensor]:
    """The SHAMISA "two views": first halves vs second halves of the flattened node lists.

    ``Z1 = [z_ref[: n_ref // 2]; z_dist[: n_dist // 2]]`` and ``Z2`` = the remaining rows. Because
    the rows are batch-major, with two items ``Z1`` is every embedding of item 0 and ``Z2`` every
    embedding of item 1 (not two augmentations of the same images; this reproduces the reference).

    Args:
        z_ref: ``(B*2R, D)`` pristine-crop embeddings.
        z_dist: ``(B*2R*F*L, D)`` distorted-image embeddings.

    Returns:
        ``(Z1, Z2)``.
    """
    ref_half = z_ref.shape[0] // 2
    dist_half = z_dist.shape[0] // 2
    z1 = torch.cat((z_ref[:ref_half], z_dist[:dist_half]), dim=0)
    z2 = torch.cat((z_ref[ref_half:], z_dist[dist_half:]), dim=0)
    return z1, z2


def split_halves_var_cov(
    z_ref: Tensor,
    z_dist: Tensor,
    n_items: int | None = None,
    eps: float = 1e-4,
    single_view: bool = False,
) -> tuple[Tensor, Tensor]:
    """``L_var = v(Z1) + v(Z2)`` and ``L_cov = c(Z1) + c(Z2)`` on the half split, in float32.

    Autocast is disabled and the inputs are cast to float32 (low-precision standard deviations sit
    on the ``eps`` floor and plateau).

    Args:
        z_ref: ``(B*2R, D)``.
        z_dist: ``(B*2R*F*L, D)``.
        n_items: the batch size ``B``, optional; only used to check that both row counts are
            multiples of it.
        eps: variance epsilon.
        single_view: use all rows as one set (``L_var = v(Z)``, ``L_cov = c(Z)``) instead of halves.

    Returns:
        ``(L_var, L_cov)`` float32 scalars.
    """
    if n_items is not None and (z_ref.shape[0] % n_items or z_dist.shape[0] % n_items):
        raise ValueError(
            f"row counts {z_ref.shape[0]} and {z_dist.shape[0]} are not multiples of n_items={n_items}"
        )
    with torch.autocast(device_type=z_ref.device.type, enabled=False):
        z_ref32, z_dist32 = z_ref.float(), z_dist.float()
        if single_view:
            z = torch.cat((z_ref32, z_dist32), dim=0)
            return variance_term(z, eps), covariance_term(z)
        z1, z2 = split_halves(z_ref32, z_dist32)
        var = variance_term(z1, eps) + variance_term(z2, eps)
        cov = covariance_term(z1) + covariance_term(z2)
    return var, cov
