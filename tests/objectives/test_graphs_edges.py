"""Edges of the graph builders: defaults, empty and zero-k cases, deterministic tie-breaking, messages."""

from __future__ import annotations

import re

import pytest
import torch

from shamisa.errors import ConfigError
from shamisa.objectives.graphs import (
    EdgeList,
    NodeLayout,
    dist_dist_candidates,
    dist_dist_edges,
    knn_edges,
    structural_edges,
    variable_slot_severity,
)


def _layout_and_severity(seed: int = 0):
    layout = NodeLayout(n_items=2, n_views=2, n_comps=3, n_levels=4)
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, 5, (2, 3, 4, 2), generator=g).double()  # integer severities: many ties
    var_slot = torch.randint(0, 2, (2, 3), generator=g)
    return layout, variable_slot_severity(indices, var_slot)


def test_knn_defaults_and_zero_k() -> None:
    h = torch.randn(40, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    a, b = knn_edges(h), knn_edges(h, 31)
    assert torch.equal(a.src, b.src) and torch.equal(a.dst, b.dst) and torch.equal(a.weight, b.weight)
    none = knn_edges(h, 0)
    assert none.n_edges == 0 and none.weight.dtype == torch.float64 and none.src.device == h.device
    assert none.src.dtype == none.dst.dtype == torch.long  # index tensors, whatever the features' dtype


def test_dist_dist_defaults_and_deterministic_ties() -> None:
    layout, sev = _layout_and_severity()
    cand = dist_dist_candidates(layout, sev)
    # the default curve is the exponential one and the default topk 4096 (more than these candidates)
    assert torch.equal(dist_dist_candidates(layout, sev, "exponential").weight, cand.weight)
    assert not torch.equal(dist_dist_candidates(layout, sev, "original").weight, cand.weight)
    full = dist_dist_edges(layout, sev)
    assert full.n_edges == min(cand.n_edges, 4096)
    small = dist_dist_edges(layout, sev, topk=10)
    # ties broken by candidate order: among the candidates of the 10th weight, the earliest are kept
    w = cand.weight
    order = sorted(range(w.numel()), key=lambda i: (-float(w[i]), i))[:10]
    kept = sorted(order)
    assert small.src.tolist() == cand.src[kept].tolist() and small.dst.tolist() == cand.dst[kept].tolist()
    assert (w == w[order[-1]]).sum() > 1  # the test has ties to break
    assert dist_dist_edges(layout, sev, topk=0).n_edges == 0
    # with more candidates than 4096 the default keeps exactly 4096
    big = NodeLayout(n_items=3, n_views=4, n_comps=4, n_levels=5)
    g = torch.Generator().manual_seed(3)
    big_sev = variable_slot_severity(torch.randint(0, 5, (3, 4, 5, 2), generator=g).double(),
                                     torch.randint(0, 2, (3, 4), generator=g))
    assert dist_dist_candidates(big, big_sev).n_edges > 4096 and dist_dist_edges(big, big_sev).n_edges == 4096
    # the curve reaches the selection
    assert not torch.equal(dist_dist_edges(layout, sev, curve="original").weight, full.weight)


def test_messages() -> None:
    with pytest.raises(ValueError, match=re.escape("EdgeList needs 1-D src, dst, weight of equal length, got (2,), (3,), (2,)")):
        EdgeList(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.zeros(2))
    with pytest.raises(ConfigError, match=r"^NodeLayout.n_views must be >= 1, got 0$"):
        NodeLayout(n_items=1, n_views=0, n_comps=1, n_levels=1)
    with pytest.raises(ConfigError, match=r"^unknown structural rule 'odd'; choose 'parity' or 'all_views'$"):
        structural_edges(NodeLayout(1, 2, 1, 1), rule="odd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("expected indices (B,F,L,S) and var_slot (B,F), got (2, 3, 4) and (2, 3)")):
        variable_slot_severity(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
