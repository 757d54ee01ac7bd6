"""NT-Xent contrastive losses (SimCLR; multi-positive variant for ARNIQA-style training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.1) -> Tensor:
    """SimCLR NT-Xent loss, both directions, averaged over the ``2n`` anchors.

    Rows are L2-normalised; for anchor ``i`` among the ``2n`` samples ``[z_a; z_b]`` the positive is
    its counterpart in the other view and the candidates are all ``2n - 1`` other samples:
    ``l_i = -log( exp(s_{i,p(i)}/T) / sum_{k != i} exp(s_ik / T) )`` with cosine similarity ``s``.

    Args:
        z_a: ``(n, D)`` first view.
        z_b: ``(n, D)`` second view (row ``i`` pairs with ``z_a[i]``).
        temperature: ``T > 0``.

    Returns:
        Scalar tensor.
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2 or z_a.shape[0] < 1:
        raise ValueError(f"nt_xent needs two (n, D) tensors of equal shape, got {tuple(z_a.shape)}, {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z_a.shape[0]
    z = F.normalize(torch.cat((z_a, z_b)), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat((torch.arange(n, 2 * n), torch.arange(n))).to(z.device)
    return F.cross_entropy(logits, target)


def nt_xent_multi_positive(z: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent with every other sample of the same label as a positive (SupCon "outside" form).

    For anchor ``i`` with positives ``P(i) = {j != i : y_j = y_i}``:
    ``l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip / T) / sum_{k != i} exp(s_ik / T) )``;
    the loss is the mean over anchors with at least one positive (anchors without one are skipped;
    0 if there is none). Used for the ARNIQA-style method, where positives are the same distortion
    composition applied to different content / scale.

    Args:
        z: ``(n, D)`` embeddings (L2-normalised inside).
        labels: ``(n,)`` integer labels.
        temperature: ``T > 0``.

    Returns:
        Scalar tensor.
    """
    if z.ndim != 2 or labels.shape != (z.shape[0],):
        raise ValueError(f"expected z (n, D) and labels (n,), got {tuple(z.shape)}, {tuple(labels.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = z.shape[0]
    zn = F.normalize(z, dim=1)
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (zn @ zn.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob.masked_fill(~pos, 0.0).sum(dim=1)[has_pos] / n_pos[has_pos])
    return per_anchor.mean()
