"""Relation graphs over the nodes of one SHAMISA pretraining batch.

Node layout (one batch of ``B`` items, ``V = 2R`` views per item, ``F`` compositions, ``L`` levels):

* pristine reference crops first: ``ref_id(b, v) = b * V + v``;
* then the distorted images: ``dist_id(b, v, f, l) = B*V + b*(V*F*L) + v*(F*L) + f*L + l``.

View ``v < R`` is the full-scale crop of reference ``v``; ``v >= R`` is the half-scale crop of
reference ``v - R``. This is the row-major flattening of ``refs (B, V, ...)`` followed by
``dist (B, V, F, L, ...)``.

Graphs are :class:`EdgeList` objects (COO lists of directed, weighted edges). Builders return
coalesced lists (no duplicate ``(src, dst)`` pairs, sorted by ``src * n + dst``). Metadata branches
carry constant weights; the feature branches (:func:`knn_edges`, and the transport branch in
:mod:`shamisa.objectives.transport`) carry weights that are differentiable in the features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from shamisa.errors import ConfigError
from shamisa.objectives.curves import Curve, get_curve

StructuralRule = Literal["parity", "all_views"]


@dataclass(frozen=True)
class EdgeList:
    """Directed weighted edges ``src[e] -> dst[e]`` with weight ``weight[e]``.

    Attributes:
        src: ``(E,)`` long node ids.
        dst: ``(E,)`` long node ids.
        weight: ``(E,)`` float weights; may carry gradient.
    """

    src: Tensor
    dst: Tensor
    weight: Tensor

    def __post_init__(self) -> None:
        if not (self.src.shape == self.dst.shape == self.weight.shape) or self.src.ndim != 1:
            raise ValueError(
                "EdgeList needs 1-D src, dst, weight of equal length, got "
                f"{tuple(self.src.shape)}, {tuple(self.dst.shape)}, {tuple(self.weight.shape)}"
            )

    @property
    def n_edges(self) -> int:
        return int(self.src.numel())

    def scale(self, factor: float | Tensor) -> EdgeList:
        """Every weight multiplied by ``factor`` (a float or a 0-d tensor)."""
        return EdgeList(self.src, self.dst, self.weight * factor)

    def transpose(self) -> EdgeList:
        """Reversed edges ``dst -> src`` with the same weights."""
        return EdgeList(self.dst, self.src, self.weight)

    def to_dense(self, n: int) -> Tensor:
        """Dense ``(n, n)`` adjacency (duplicates summed); for tests and diagnostics."""
        dense = torch.zeros(n, n, dtype=self.weight.dtype, device=self.weight.device)
        return dense.index_put((self.src, self.dst), self.weight, accumulate=True)


def empty_edges(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> EdgeList:
    """An edge list with no edges."""
    idx = torch.empty(0, dtype=torch.long, device=device)
    return EdgeList(idx, idx.clone(), torch.empty(0, dtype=dtype, device=device))


def concat_edges(parts: Sequence[EdgeList]) -> EdgeList:
    """Concatenate edge lists (duplicates kept; see :func:`coalesce`)."""
    if not parts:
        return empty_edges()
    return EdgeList(
        torch.cat([p.src for p in parts]),
        torch.cat([p.dst for p in parts]),
        torch.cat([p.weight for p in parts]),
    )


def coalesce(edges: EdgeList, n: int) -> EdgeList:
    """Merge duplicate ``(src, dst)`` pairs by summing their weights (differentiably).

    The result is sorted by ``src * n + dst`` like ``torch.sparse_coo_tensor(...).coalesce()``.

    Args:
        edges: any edge list over ``n`` nodes.
        n: number of nodes.
    """
    if edges.n_edges == 0:
        return edges
    key = edges.src * n + edges.dst
    unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
    weight = torch.zeros(unique.numel(), dtype=edges.weight.dtype, device=edges.weight.device)
    # index_put with accumulate has a deterministic CUDA implementation (sort based)
    weight = weight.index_put((inverse,), edges.weight, accumulate=True)
    return EdgeList(unique // n, unique % n, weight)


def upper_triangle(edges: EdgeList) -> EdgeList:
    """Keep only edges with ``src < dst`` (self-loops and the lower triangle are dropped)."""
    keep = edges.src < edges.dst
    return EdgeList(edges.src[keep], edges.dst[keep], edges.weight[keep])


def symmetrise(edges: EdgeList, n: int) -> EdgeList:
    """``A + A^T``, coalesced (mutual edges get the sum of both weights)."""
    return coalesce(concat_edges([edges, edges.transpose()]), n)


@dataclass(frozen=True)
class NodeLayout:
    """Node ids of one batch (see the module docstring).

    Attributes:
        n_items: ``B``, dataset items in the batch.
        n_views: ``V = 2R`` crops per item (R full-scale then R half-scale).
        n_comps: ``F`` distortion compositions per item.
        n_levels: ``L`` levels per composition.
    """

    n_items: int
    n_views: int
    n_comps: int
    n_levels: int

    def __post_init__(self) -> None:
        for name in ("n_items", "n_views", "n_comps", "n_levels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"NodeLayout.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_refs(self) -> int:
        """Number of pristine nodes ``B * V``."""
        return self.n_items * self.n_views

    @property
    def n_dist(self) -> int:
        """Number of distorted nodes ``B * V * F * L``."""
        return self.n_items * self.n_views * self.n_comps * self.n_levels

    @property
    def n_nodes(self) -> int:
        return self.n_refs + self.n_dist

    def ref_id(self, b: Tensor | int, v: Tensor | int) -> Tensor | int:
        """Node id of the pristine crop ``(b, v)``; broadcasts over tensors."""
        return b * self.n_views + v

    def dist_id(self, b: Tensor | int, v: Tensor | int, f: Tensor | int, l: Tensor | int) -> Tensor | int:  # noqa: E741
        """Node id of distorted image ``(b, v, f, l)``; broadcasts over tensors."""
        fl = self.n_comps * self.n_levels
        return self.n_refs + b * (self.n_views * fl) + v * fl + f * self.n_levels + l


def _grid(sizes: Sequence[int], device: torch.device | str | None) -> list[Tensor]:
    """Flattened ``meshgrid(arange(s) for s in sizes, indexing='ij')``."""
    axes = [torch.arange(s, device=device) for s in sizes]
    return [g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")]


def variable_slot_severity(indices: Tensor, var_slot: Tensor) -> Tensor:
    """Severity index of each composition's variable slot at each level.

    Args:
        indices: ``(B, F, L, S)`` continuous severity indices in ``[0, 4]`` (``-1`` for empty slots).
        var_slot: ``(B, F)`` long, the slot that varies across levels.

    Returns:
        ``(B, F, L)`` float, ``sigma(b, f, l) = indices[b, f, l, var_slot[b, f]]``.
    """
    if indices.ndim != 4 or var_slot.shape != indices.shape[:2]:
        raise ValueError(
            f"expected indices (B,F,L,S) and var_slot (B,F), got {tuple(indices.shape)} and "
            f"{tuple(var_slot.shape)}"
        )
    n_levels = indices.shape[2]
    slot = var_slot.long()[:, :, None, None].expand(-1, -1, n_levels, 1)
    return indices.gather(3, slot).squeeze(3).float()


def ref_ref_edges(layout: NodeLayout, device: torch.device | str | None = None) -> EdgeList:
    """Complete graph on all ``B * V`` pristine nodes (all items, both scales), both directions,
    weight 1: every pristine crop has "the same quality". ``(BV)(BV - 1)`` edges."""
    i, j = _grid((layout.n_refs, layout.n_refs), device)
    keep = i != j
    src, dst = i[keep], j[keep]
    return EdgeList(src, dst, torch.ones(src.numel(), device=device))


def ref_dist_edges(
    layout: NodeLayout, var_severity: Tensor, curve: str | Curve = "exponential"
) -> EdgeList:
    """Edge from each pristine crop ``(b, v)`` to each distorted version ``(b, v, f, l)`` of it,
    weight ``s(sigma(b, f, l))``: mild distortions are pulled harder towards their source.

    Direction ref -> dist only (the ref id is always the smaller one). ``B V F L`` edges.

    Args:
        layout: node layout.
        var_severity: ``(B, F, L)`` from :func:`variable_slot_severity`.
        curve: severity curve name or callable.
    """
    fn = get_curve(curve)
    device = var_severity.device
    b, v, f, l = _grid((layout.n_items, layout.n_views, layout.n_comps, layout.n_levels), device)  # noqa: E741
    src = layout.ref_id(b, v)
    dst = layout.dist_id(b, v, f, l)
    return EdgeList(src, dst, fn(var_severity[b, f, l]))


def _select_top(weights: Tensor, k: int | None) -> Tensor:
    """Positions of the ``k`` largest weights; ties broken by position (deterministic)."""
    if k is None or k >= weights.numel():
        return torch.arange(weights.numel(), device=weights.device)
    order = torch.sort(weights, descending=True, stable=True).indices
    return order[: max(int(k), 0)]


def dist_dist_candidates(
    layout: NodeLayout, var_severity: Tensor, curve: str | Curve = "exponential"
) -> EdgeList:
    """All ordered pairs of distinct distorted nodes sharing item ``b`` and composition ``f``
    (any views, any levels), weight ``s(|sigma(b,f,l) - sigma(b,f,l')|)``.

    ``B V^2 F L^2 - B V F L`` edges (before any top-k).
    """
    fn = get_curve(curve)
    device = var_severity.device
    b, v, f, l, v2, l2 = _grid(  # noqa: E741
        (layout.n_items, layout.n_views, layout.n_comps, layout.n_levels, layout.n_views, layout.n_levels),
        device,
    )
    keep = (v != v2) | (l != l2)
    b, v, f, l, v2, l2 = (t[keep] for t in (b, v, f, l, v2, l2))  # noqa: E741
    gap = (var_severity[b, f, l] - var_severity[b, f, l2]).abs()
    return EdgeList(layout.dist_id(b, v, f, l), layout.dist_id(b, v2, f, l2), fn(gap))


def dist_dist_edges(
    layout: NodeLayout,
    var_severity: Tensor,
    curve: str | Curve = "exponential",
    topk: int | None = 4096,
) -> EdgeList:
    """:func:`dist_dist_candidates` restricted to the ``topk`` largest weights over the whole list.

    ``topk`` is clamped to the number of candidates (``None`` keeps all). Ties (e.g. the many
    weight-1 same-level pairs) are broken by candidate order, so the selection is deterministic;
    the reference uses an unsorted ``torch.topk`` whose tie-breaking is device dependent.
    """
    cand = dist_dist_candidates(layout, var_severity, curve)
    pos = _select_top(cand.weight, topk)
    pos = torch.sort(pos).values
    return EdgeList(cand.src[pos], cand.dst[pos], cand.weight[pos])


def structural_edges(
    layout: NodeLayout,
    rule: StructuralRule = "parity",
    device: torch.device | str | None = None,
) -> EdgeList:
    """Same item, composition and level (identical degradation parameters), different views.

    Rules:
        ``"parity"`` (default, as in the reference): views ``v != v'`` with ``v = v' (mod 2)``.
            With the blocked view layout ``[full 0..R-1 | half 0..R-1]`` and ``R = 3`` this pairs
            views ``{0, 2, 4}`` and ``{1, 3, 5}``, i.e. it mixes scales of different references and
            never links the two scales of the same crop; for ``R = 1`` it gives no edge at all.
            It looks written for an interleaved (full, half) layout; reproduced for fidelity.
        ``"all_views"``: every pair ``v != v'``.

    Weight 1, both directions. ``B F L * #pairs`` edges, ``#pairs = 2R(R-1)`` (parity) or
    ``2R(2R-1)`` (all_views).
    """
    if rule not in ("parity", "all_views"):
        raise ConfigError(f"unknown structural rule {rule!r}; choose 'parity' or 'all_views'")
    b, v, f, l, v2 = _grid(  # noqa: E741
        (layout.n_items, layout.n_views, layout.n_comps, layout.n_levels, layout.n_views), device
    )
    keep = v != v2
    if rule == "parity":
        keep &= (v % 2) == (v2 % 2)
    b, v, f, l, v2 = (t[keep] for t in (b, v, f, l, v2))  # noqa: E741
    src = layout.dist_id(b, v, f, l)
    dst = layout.dist_id(b, v2, f, l)
    return EdgeList(src, dst, torch.ones(src.numel(), device=device))


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distance matrix ``(N, N)`` of the rows of ``x`` with a gradient that stays finite
    for coincident rows (the gradient is 0 where the distance is below 1e-6)."""
    sq_norm = x.pow(2).sum(dim=1)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    tiny = 1e-12
    ok = sq > tiny
    safe = torch.where(ok, sq, torch.ones_like(sq))
    return torch.where(ok, safe.sqrt(), torch.zeros_like(sq))


def knn_edges(h: Tensor, k: int = 31, binary: bool = False) -> EdgeList:
    """Soft k-nearest-neighbour graph on features.

    ``a_ij = 1 / (1 + ||h_i - h_j||)``, ``a_ii = 0``; each row keeps its ``k`` largest affinities
    (``k`` clamped to ``N - 1``); the list is symmetrised by adding the transposed edges and
    coalesced, so mutual neighbours get ``2 a_ij``. Weights are differentiable in ``h``.

    Args:
        h: ``(N, d)`` features (the L2-normalised representations in SHAMISA).
        k: neighbours per node.
        binary: use weight 1 for every kept edge (ablation A1) instead of ``a_ij``.

    Returns:
        Coalesced :class:`EdgeList` over ``N`` nodes.
    """
    n = h.shape[0]
    k = min(int(k), n - 1)
    if k <= 0:
        return empty_edges(h.device, h.dtype)
    aff = torch.reciprocal(1.0 + pairwise_distances(h))
    aff = aff.masked_fill(torch.eye(n, dtype=torch.bool, device=h.device), 0.0)
    values, cols = torch.topk(aff, k, dim=1, largest=True, sorted=False)
    rows = torch.arange(n, device=h.device).repeat_interleave(k)
    values = values.reshape(-1)
    if binary:
        values = torch.ones_like(values)
    return symmetrise(EdgeList(rows, cols.reshape(-1), values), n)
