"""LML-IQA local-manifold contrastive loss.

The published method leaves the exact form open; this module fixes it as follows (see
``docs/objective.md``). For image ``i`` with salient-crop anchor embedding ``a_i`` (student), positives
``p_i1..p_iP`` (the teacher-side embedding of the same salient crop; the EMA teacher of mutual
learning), and non-salient crops ``n_i1..n_iM`` of the same image, with cosine similarity ``s`` and
temperature ``T``::

    l_i = -(1/P) sum_p log( e^{s(a_i,p_ip)/T} /
                            ( e^{s(a_i,p_ip)/T} + sum_{j != i} e^{s(a_i,a_j)/T} + w sum_m e^{s(a_i,n_im)/T} ) )

* inter-class negatives: the anchors ``a_j`` of the other images of the batch;
* intra-class negatives: the non-salient crops of the same image, weighted by ``w = intra_weight``
  (``w = 0`` switches them off, ``w < 1`` keeps them apart more gently than other images, which
  preserves the local manifold of the image's crops without collapsing it);
* loss = mean over images.

When ``positives`` is ``None`` the anchor is its own positive (similarity 1, a constant logit
``1/T``), so the loss only spreads the anchor away from the negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def local_manifold_contrastive_loss(
    anchor: Tensor,
    positives: Tensor | None,
    intra_negatives: Tensor,
    temperature: float = 0.1,
    intra_weight: float = 1.0,
) -> Tensor:
    """InfoNCE with the salient crop as query (formula in the module docstring).

    Args:
        anchor: ``(B, D)`` salient-crop embeddings (student).
        positives: ``(B, P, D)`` positive embeddings per image (teacher-side anchor), or ``None``.
        intra_negatives: ``(B, M, D)`` non-salient crops of the same image (``M`` may be 0).
        temperature: ``T > 0``.
        intra_weight: weight ``w >= 0`` of the intra-class negatives in the denominator.

    Returns:
        Scalar tensor.
    """
    if anchor.ndim != 2:
        raise ValueError(f"anchor must be (B, D), got {tuple(anchor.shape)}")
    b, d = anchor.shape
    if intra_negatives.ndim != 3 or intra_negatives.shape[0] != b or intra_negatives.shape[2] != d:
        raise ValueError(f"intra_negatives must be (B, M, D) = ({b}, M, {d}), got {tuple(intra_negatives.shape)}")
    if positives is not None and (positives.ndim != 3 or positives.shape[0] != b or positives.shape[2] != d):
        raise ValueError(f"positives must be (B, P, D) = ({b}, P, {d}), got {tuple(positives.shape)}")
    if temperature <= 0 or intra_weight < 0:
        raise ValueError(f"need temperature > 0 and intra_weight >= 0, got {temperature}, {intra_weight}")
    a = F.normalize(anchor, dim=-1)
    if positives is None:
        pos_logits = torch.full((b, 1), 1.0 / temperature, dtype=a.dtype, device=a.device)
    else:
        pos_logits = torch.einsum("bd,bpd->bp", a, F.normalize(positives, dim=-1)) / temperature
    inter = (a @ a.T / temperature).masked_fill(torch.eye(b, dtype=torch.bool, device=a.device), float("-inf"))
    parts = [inter]
    if intra_negatives.shape[1] > 0 and intra_weight > 0:
        intra = torch.einsum("bd,bmd->bm", a, F.normalize(intra_negatives, dim=-1)) / temperature
        parts.append(intra + torch.log(torch.tensor(intra_weight, dtype=a.dtype, device=a.device)))
    neg_lse = torch.logsumexp(torch.cat(parts, dim=1), dim=1, keepdim=True)  # (B, 1)
    denom = torch.logaddexp(pos_logits, neg_lse)  # (B, P)
    return -(pos_logits - denom).mean()
