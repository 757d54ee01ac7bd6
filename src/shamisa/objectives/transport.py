"""Prototype / optimal-transport relation branch and the swapped-prediction alignment term.

Pipeline on features ``h (N, d)``:

1. ``x = h / ||h||``; logits ``ell = PrototypeLayer(x)`` of shape ``(N, K)``.
2. Balanced codes ``Q`` = Sinkhorn-Knopp on the *detached* logits (SwAV style, no gradient).
3. ``P = softmax(ell / tau)``, ``log P = log_softmax(ell / tau)``.
4. Dense score ``S_ij = (1/K) sum_k log P_ik P_jk``, min-max normalised over the whole matrix.
5. Keep the ``topk_per_node * N`` largest entries of the matrix (weights keep their gradient).
6. Alignment ``A = -0.5 gamma (mean_{i,k} Q_ik log P_ik + mean_{(i->j) in structural, k} Q_ik log P_jk)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shamisa.objectives.graphs import EdgeList, coalesce


class PrototypeLayer(nn.Module):
    """Bias-free linear map to ``K`` prototype logits with weight normalisation per prototype.

    ``w_k = g_k * v_k / ||v_k||`` with learned ``g`` (``(K, 1)``, parameter ``magnitude``) and ``v``
    (``(K, in_dim)``, parameter ``direction``); ``v`` is initialised uniform in
    ``(-1/sqrt(in_dim), 1/sqrt(in_dim))`` and ``g = ||v||`` so that the initial ``w = v`` (the
    behaviour of ``torch.nn.utils.parametrizations.weight_norm(dim=0)``).

    Args:
        in_dim: feature dimension ``d``.
        n_prototypes: ``K``.
    """

    def __init__(self, in_dim: int, n_prototypes: int = 32) -> None:
        super().__init__()
        if in_dim < 1 or n_prototypes < 1:
            raise ValueError(f"PrototypeLayer needs in_dim, n_prototypes >= 1, got {in_dim}, {n_prototypes}")
        self.in_dim = int(in_dim)
        self.n_prototypes = int(n_prototypes)
        bound = 1.0 / math.sqrt(in_dim)
        direction = torch.empty(n_prototypes, in_dim).uniform_(-bound, bound)
        self.direction = nn.Parameter(direction)
        self.magnitude = nn.Parameter(direction.norm(dim=1, keepdim=True).clone())

    @property
    def weight(self) -> Tensor:
        """The effective ``(K, in_dim)`` prototype matrix."""
        return self.magnitude * self.direction / self.direction.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_dim) -> (N, K)`` logits."""
        return x @ self.weight.T

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_prototypes={self.n_prototypes}"


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, eps: float = 0.05, n_iters: int = 6) -> Tensor:
    """Balanced soft assignments (SwAV-style Sinkhorn-Knopp), no gradient.

    ``Q0 = exp(ell / eps)^T`` (``(K, N)``) normalised to total mass 1; each iteration scales the rows
    (prototypes) to sum ``1/K`` and then the columns (samples) to sum ``1/N``. Returns ``(Q N)^T`` so
    that each sample's code sums to 1. The global maximum is subtracted before ``exp``; this
    leaves the result unchanged (it cancels in the first normalisation) and avoids overflow.

    Args:
        logits: ``(N, K)``.
        eps: entropic regularisation.
        n_iters: Sinkhorn iterations.

    Returns:
        ``(N, K)`` float32 codes.
    """
    scaled = logits.detach().float() / eps
    q = torch.exp(scaled - scaled.max()).T
    n_protos, n_samples = q.shape
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True) / n_protos
        q = q / q.sum(dim=0, keepdim=True) / n_samples
    return (q * n_samples).T


def min_max_normalise(scores: Tensor) -> Tensor:
    """``(S - min S) / (max S - min S)`` over the whole tensor (no division when constant)."""
    shifted = scores - scores.min()
    scale = shifted.max()
    return shifted / torch.where(scale != 0, scale, torch.ones_like(scale))


def transport_scores(log_probs: Tensor, probs: Tensor) -> Tensor:
    """Dense ``S_ij = (1/K) sum_k log P_ik P_jk``, shape ``(N, N)``."""
    return log_probs @ probs.T / probs.shape[1]


def global_topk_edges(scores: Tensor, k_total: int) -> EdgeList:
    """The ``k_total`` largest entries of a dense ``(N, N)`` matrix as an edge list (clamped to
    ``N^2``; values keep their gradient; the diagonal may be selected)."""
    n = scores.shape[0]
    k_total = max(0, min(int(k_total), scores.numel()))
    values, flat = torch.topk(scores.reshape(-1), k_total, sorted=False)
    return coalesce(EdgeList(flat // n, flat % n, values), n)


@dataclass(frozen=True)
class TransportResult:
    """Output of :func:`transport_edges`.

    Attributes:
        edges: the sparsified, min-max-normalised score graph (weights carry gradient).
        codes: ``(N, K)`` Sinkhorn codes ``Q`` (no gradient).
        log_probs: ``(N, K)`` ``log_softmax(ell / tau)`` (carries gradient).
    """

    edges: EdgeList
    codes: Tensor
    log_probs: Tensor


def transport_edges(
    h: Tensor,
    prototypes: PrototypeLayer,
    tau: float = 0.1,
    eps: float = 0.05,
    sinkhorn_iters: int = 6,
    topk_per_node: int = 8,
) -> TransportResult:
    """Prototype-assignment graph on features (see the module docstring, steps 1-5).

    Args:
        h: ``(N, d)`` features.
        prototypes: the learnable :class:`PrototypeLayer` (``d -> K``).
        tau: softmax temperature of the assignments ``P``.
        eps: Sinkhorn entropic regularisation.
        sinkhorn_iters: Sinkhorn iterations.
        topk_per_node: keep ``topk_per_node * N`` entries of the dense score matrix in total.

    Returns:
        :class:`TransportResult`.
    """
    x = F.normalize(h, dim=-1)
    logits = prototypes(x)
    codes = sinkhorn_knopp(logits, eps, sinkhorn_iters)
    scaled = logits / tau
    probs = F.softmax(scaled, dim=-1)
    log_probs = F.log_softmax(scaled, dim=-1)
    scores = min_max_normalise(transport_scores(log_probs, probs))
    edges = global_topk_edges(scores, topk_per_node * h.shape[0])
    return TransportResult(edges=edges, codes=codes, log_probs=log_probs)


def swapped_prediction_alignment(
    codes: Tensor, log_probs: Tensor, structural: EdgeList, gamma: float
) -> Tensor:
    """``A = -0.5 gamma (self + paired)`` with ``self = mean_{i,k} Q_ik log P_ik`` and
    ``paired = mean_{(i->j) in structural, k} Q_ik log P_jk`` (0 when there is no structural edge).

    Args:
        codes: ``(N, K)`` Sinkhorn codes ``Q`` (treated as constants).
        log_probs: ``(N, K)`` log assignments.
        structural: positive pairs (the structural relation, both directions).
        gamma: coefficient.
    """
    codes = codes.detach()
    self_term = (codes * log_probs).mean()
    if structural.n_edges > 0:
        paired = (codes[structural.src] * log_probs[structural.dst]).mean()
    else:
        paired = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    return -0.5 * gamma * (self_term + paired)
