"""Multi-source aggregation of the relation graphs and the graph-weighted invariance loss.

Per step: each active branch graph ``G_b`` is scaled by its coefficient ``c_b``; the statistics
``[nnz_b, sum_e c_b G_b[e]]`` (detached, branch order :data:`BRANCHES`) feed a small MLP whose
softmax output ``w_b`` is detached; the merged graph is
``W = sum_{b != knn} w_b c_b G_b + w_knn c_knn G_knn`` (the kNN map added last as a residual; in
the reference it is scaled by its coefficient and softmax weight like every other branch),
coalesced, and only ``i < j`` entries are kept. Then

* pair cost ``P = sum_{(i,j)} omega_ij ||z_i - z_j||^2 / (N D)``,
* edge regulariser ``R = -rho sum omega^2`` (rewards large *learnable* weights: kNN and transport),
* ``L_rel = 2 (P + A + R)`` with ``A`` the transport alignment term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from shamisa.objectives.graphs import EdgeList, coalesce, concat_edges, empty_edges, upper_triangle

BRANCHES: tuple[str, ...] = ("structural", "ref_dist", "ref_ref", "dist_dist", "knn", "transport")
"""Branch order used for the weighting statistics and the MLP outputs."""


def branch_statistics(branches: Sequence[EdgeList]) -> Tensor:
    """``[nnz_1, S_1, nnz_2, S_2, ...]`` (detached float32), ``S_b`` = sum of the (scaled) weights.

    Args:
        branches: coalesced, coefficient-scaled branch graphs in :data:`BRANCHES` order.

    Returns:
        ``(2 * len(branches),)``.
    """
    fields: list[Tensor] = []
    for edges in branches:
        w = edges.weight.detach().float()
        fields.append(torch.full((), float(edges.n_edges), device=w.device))
        fields.append(w.sum())
    return torch.stack(fields)


class BranchWeighting(nn.Module):
    """Branch-weighting MLP: ``LayerNorm(2n) -> Linear(2n, 4n) -> LayerNorm(4n) -> PReLU ->
    Linear(4n, n) -> softmax`` on the branch statistics.

    With ``stop_grad=True`` (the default, as in the reference) the softmax output is detached, so
    the MLP never receives a gradient: it stays at its random initialisation and acts as a fixed
    random function of the per-batch edge statistics. Its parameters are created with
    ``requires_grad=False`` so optimisers skip them (the reference keeps them in the SGD optimiser,
    where a ``None`` gradient also means no update and no weight decay); they are still saved in the
    state dict, so a resumed run uses the same function. ``stop_grad=False`` (ablation A4) makes the
    weights differentiable and the parameters trainable.

    The reference uses torch_geometric's LayerNorm (graph mode) inside the MLP, which for one input
    row differs from ``torch.nn.LayerNorm`` only in where ``eps`` enters (``std + eps`` vs
    ``sqrt(var + eps)``).

    Args:
        n_branches: number of active branches ``n``.
        hidden_scale: hidden width = ``hidden_scale * 2n``.
        stop_grad: detach the output weights and freeze the parameters.
    """

    def __init__(self, n_branches: int, hidden_scale: int = 2, stop_grad: bool = True) -> None:
        super().__init__()
        if n_branches < 1:
            raise ValueError(f"BranchWeighting needs at least one branch, got {n_branches}")
        n_in = 2 * n_branches
        hidden = hidden_scale * n_in
        self.n_branches = n_branches
        self.stop_grad = stop_grad
        self.net = nn.Sequential(
            nn.LayerNorm(n_in),
            nn.Linear(n_in, hidden),
            nn.LayerNorm(hidden),
            nn.PReLU(),
            nn.Linear(hidden, n_branches),
        )
        if stop_grad:
            self.requires_grad_(False)

    def forward(self, stats: Tensor) -> Tensor:
        """``(2n,)`` statistics -> ``(n,)`` softmax weights (detached when ``stop_grad``)."""
        param = next(self.parameters())
        logits = self.net(stats.detach().to(param.dtype).unsqueeze(0)).squeeze(0)
        weights = torch.softmax(logits, dim=-1)
        return weights.detach() if self.stop_grad else weights


def combine_branches(
    scaled: Mapping[str, EdgeList],
    weights: Mapping[str, Tensor | float],
    n_nodes: int,
    include_knn_residual: bool = True,
) -> EdgeList:
    """Merge coefficient-scaled branch graphs into one undirected weighted edge set.

    ``W = sum_{b != knn} w_b G'_b (+ w_knn G'_knn)`` with ``G'_b = c_b G_b``; duplicates are summed;
    only ``i < j`` entries are returned. When ``include_knn_residual`` is false the kNN map is used
    only if it is the sole branch (as in the reference).

    Args:
        scaled: branch name -> scaled graph (only active branches).
        weights: branch name -> softmax weight (1 when weighting is off).
        n_nodes: ``N``.
        include_knn_residual: add the kNN map to the merged graph.

    Returns:
        Coalesced :class:`EdgeList` with ``src < dst``.
    """
    parts = [scaled[b].scale(weights[b]) for b in BRANCHES if b in scaled and b != "knn"]
    if "knn" in scaled and (include_knn_residual or not parts):
        parts.append(scaled["knn"].scale(weights["knn"]))
    if not parts:
        return empty_edges()
    return upper_triangle(coalesce(concat_edges(parts), n_nodes))


PAIR_METRICS = ("euc", "cos")


def pair_cost(z: Tensor, edges: EdgeList, binary: bool = False, metric: str = "euc") -> Tensor:
    """Graph-weighted invariance.

    ``metric="euc"`` (the paper): ``sum_e omega_e ||z_src - z_dst||^2 / (N D)``;
    ``metric="cos"`` (the reference's alternative): ``sum_e omega_e (1 - cos(z_src, z_dst)) / N``,
    which does not fall when all of z shrinks.

    Args:
        z: ``(N, D)`` node embeddings.
        edges: merged edges.
        binary: ignore the weights (every edge counts 1; ablation A1).
        metric: ``"euc"`` or ``"cos"``.
    """
    if metric not in PAIR_METRICS:
        raise ValueError(f"pair metric must be one of {PAIR_METRICS}, not {metric!r}")
    n, d = z.shape
    if edges.n_edges == 0:
        return z.sum() * 0.0
    if metric == "euc":
        cost = (z[edges.src] - z[edges.dst]).pow(2).sum(dim=1)
        norm = n * d
    else:
        cost = 1.0 - torch.nn.functional.cosine_similarity(z[edges.src], z[edges.dst], dim=1, eps=1e-8)
        norm = n
    total = cost.sum() if binary else (cost * edges.weight.to(cost.dtype)).sum()
    return total / norm


def edge_regulariser(edges: EdgeList, rho: float) -> Tensor:
    """``R = -rho * sum_e omega_e^2`` (gradient only through learnable weights)."""
    if edges.n_edges == 0:
        return torch.zeros((), device=edges.weight.device)
    return -rho * edges.weight.pow(2).sum()


def relation_loss(pair: Tensor, align: Tensor, reg: Tensor) -> Tensor:
    """``L_rel = 2 (P + A + R)`` (x2 because only one direction of each edge is kept)."""
    return 2.0 * (pair + align + reg)
