"""Node layout, metadata branches, kNN branch and edge-list helpers."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.errors import ConfigError
from shamisa.objectives.curves import exponential_curve, get_curve, reciprocal_curve
from shamisa.objectives.graphs import (
    EdgeList,
    NodeLayout,
    coalesce,
    dist_dist_candidates,
    dist_dist_edges,
    knn_edges,
    ref_dist_edges,
    ref_ref_edges,
    structural_edges,
    symmetrise,
    upper_triangle,
    variable_slot_severity,
)

LAYOUT = NodeLayout(n_items=2, n_views=4, n_comps=2, n_levels=3)


def _severity(layout: NodeLayout, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    return torch.rand(layout.n_items, layout.n_comps, layout.n_levels, generator=g) * 4


def _pairs(edges: EdgeList) -> list[tuple[int, int]]:
    return list(zip(edges.src.tolist(), edges.dst.tolist()))


# --- curves ---------------------------------------------------------------------------------------


def test_curves_values() -> None:
    gaps = torch.tensor([0.0, 1.0, 4.0])
    assert exponential_curve(gaps).tolist() == pytest.approx([1.0, math.exp(-0.75), math.exp(-3.0)])
    assert reciprocal_curve(gaps).tolist() == pytest.approx([1.0, 0.8, 0.5])
    assert get_curve("original") is reciprocal_curve
    with pytest.raises(ConfigError):
        get_curve("linear")


# --- layout ---------------------------------------------------------------------------------------


def test_node_layout_matches_explicit_enumeration() -> None:
    lay = LAYOUT
    counter = 0
    for b in range(lay.n_items):
        for v in range(lay.n_views):
            assert lay.ref_id(b, v) == counter
            counter += 1
    for b in range(lay.n_items):
        for v in range(lay.n_views):
            for f in range(lay.n_comps):
                for l in range(lay.n_levels):  # noqa: E741
                    assert lay.dist_id(b, v, f, l) == counter
                    counter += 1
    assert counter == lay.n_nodes == 8 + 48


def test_node_layout_vectorised() -> None:
    lay = LAYOUT
    b, v, f, l = torch.meshgrid(  # noqa: E741
        *(torch.arange(s) for s in (2, 4, 2, 3)), indexing="ij"
    )
    ids = lay.dist_id(b, v, f, l)
    assert ids.reshape(-1).tolist() == list(range(lay.n_refs, lay.n_nodes))
    with pytest.raises(ConfigError):
        NodeLayout(0, 2, 1, 1)


def test_variable_slot_severity_explicit() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    indices = torch.rand(2, 3, 4, 5, generator=g) * 4
    var_slot = torch.tensor([[0, 4, 2], [1, 1, 3]])
    sev = variable_slot_severity(indices, var_slot)
    assert sev.shape == (2, 3, 4)
    for b in range(2):
        for f in range(3):
            for l in range(4):  # noqa: E741
                assert sev[b, f, l].item() == indices[b, f, l, var_slot[b, f]].item()
    with pytest.raises(ValueError):
        variable_slot_severity(indices, var_slot[:, :2])


# --- metadata branches ----------------------------------------------------------------------------


def test_ref_ref_complete_graph() -> None:
    e = ref_ref_edges(LAYOUT)
    n = LAYOUT.n_refs
    assert e.n_edges == n * (n - 1)
    assert set(_pairs(e)) == {(i, j) for i in range(n) for j in range(n) if i != j}
    assert torch.all(e.weight == 1) and not e.weight.requires_grad


def test_ref_dist_edges_weights() -> None:
    sev = _severity(LAYOUT)
    e = ref_dist_edges(LAYOUT, sev, "exponential")
    assert e.n_edges == 2 * 4 * 2 * 3
    expected = {}
    for b in range(2):
        for v in range(4):
            for f in range(2):
                for l in range(3):  # noqa: E741
                    key = (b * 4 + v, LAYOUT.dist_id(b, v, f, l))
                    expected[key] = math.exp(-0.75 * sev[b, f, l].item())
    got = dict(zip(_pairs(e), e.weight.tolist()))
    assert got.keys() == expected.keys()
    for k, w in expected.items():
        assert got[k] == pytest.approx(w, rel=1e-6)
    assert torch.all(e.src < e.dst)


def test_ref_dist_original_curve() -> None:
    sev = torch.full((1, 1, 1), 2.0)
    e = ref_dist_edges(NodeLayout(1, 2, 1, 1), sev, "original")
    assert e.weight.tolist() == pytest.approx([1 / 1.5, 1 / 1.5])


def test_dist_dist_candidate_count_and_weights() -> None:
    lay = LAYOUT
    B, V, F, L = 2, 4, 2, 3
    sev = _severity(lay)
    cand = dist_dist_candidates(lay, sev)
    assert cand.n_edges == B * V**2 * F * L**2 - B * V * F * L
    assert len(set(_pairs(cand))) == cand.n_edges  # no duplicates, no self-loops
    assert torch.all(cand.src != cand.dst)
    # decode every edge explicitly and check that it stays within (b, f) and has the right weight
    base = lay.n_refs
    for (i, j), w in zip(_pairs(cand), cand.weight.tolist()):
        bi, ri = divmod(i - base, V * F * L)
        bj, rj = divmod(j - base, V * F * L)
        fi, li = divmod(ri % (F * L), L)
        fj, lj = divmod(rj % (F * L), L)
        assert bi == bj and fi == fj
        assert w == pytest.approx(math.exp(-0.75 * abs(sev[bi, fi, li].item() - sev[bi, fi, lj].item())), rel=1e-5)


def test_dist_dist_topk_keeps_largest_and_clamps() -> None:
    sev = _severity(LAYOUT)
    cand = dist_dist_candidates(LAYOUT, sev)
    kept = dist_dist_edges(LAYOUT, sev, topk=100)
    assert kept.n_edges == 100
    kept_set = set(_pairs(kept))
    dropped = [w for p, w in zip(_pairs(cand), cand.weight.tolist()) if p not in kept_set]
    assert min(kept.weight.tolist()) >= max(dropped)
    everything = dist_dist_edges(LAYOUT, sev, topk=10**9)
    assert everything.n_edges == cand.n_edges
    assert dist_dist_edges(LAYOUT, sev, topk=None).n_edges == cand.n_edges


def test_structural_parity_rule_reproduces_quirk() -> None:
    lay = NodeLayout(n_items=1, n_views=6, n_comps=1, n_levels=1)  # R = 3
    e = structural_edges(lay, "parity")
    views = {(lay.dist_id(0, v, 0, 0)): v for v in range(6)}
    pairs = {(views[i], views[j]) for i, j in _pairs(e)}
    expected = {(a, b) for grp in ([0, 2, 4], [1, 3, 5]) for a in grp for b in grp if a != b}
    assert pairs == expected
    # the two scales of the same crop (v, v + R) are never linked by the parity rule
    assert (0, 3) not in pairs and (1, 4) not in pairs


def test_structural_counts() -> None:
    B, R, F, L = 2, 3, 4, 5
    lay = NodeLayout(B, 2 * R, F, L)
    e = structural_edges(lay, "parity")
    assert e.n_edges == B * F * L * 2 * R * (R - 1)
    a = structural_edges(lay, "all_views")
    assert a.n_edges == B * F * L * 2 * R * (2 * R - 1)
    assert set(_pairs(e)) <= set(_pairs(a))
    assert set(_pairs(a)) == {(j, i) for i, j in _pairs(a)}  # both directions
    assert structural_edges(NodeLayout(2, 2, 1, 1), "parity").n_edges == 0  # R = 1: no edge
    with pytest.raises(ConfigError):
        structural_edges(lay, "same_ref")  # type: ignore[arg-type]


def test_structural_links_same_level_and_comp() -> None:
    lay = NodeLayout(2, 4, 2, 3)
    e = structural_edges(lay, "all_views")
    base = lay.n_refs
    for i, j in _pairs(e):
        bi, ri = divmod(i - base, 4 * 6)
        bj, rj = divmod(j - base, 4 * 6)
        assert bi == bj and ri % 6 == rj % 6 and ri // 6 != rj // 6


# --- edge-list helpers ----------------------------------------------------------------------------


def test_coalesce_sums_duplicates_and_keeps_grad() -> None:
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    e = EdgeList(torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 1, 2]), w)
    c = coalesce(e, 3)
    assert _pairs(c) == [(0, 1), (1, 0), (2, 2)]
    assert c.weight.tolist() == [4.0, 2.0, 4.0]
    (c.weight * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 10.0, 1.0, 100.0]


def test_upper_triangle_and_symmetrise() -> None:
    e = EdgeList(torch.tensor([0, 1, 2, 2]), torch.tensor([1, 0, 2, 0]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    u = upper_triangle(e)
    assert _pairs(u) == [(0, 1)] and u.weight.tolist() == [1.0]
    s = symmetrise(e, 3)
    assert torch.equal(s.to_dense(3), s.to_dense(3).T)
    assert s.to_dense(3)[0, 1].item() == 3.0  # 1 + 2
    assert s.to_dense(3)[2, 2].item() == 6.0


def test_edgelist_validation() -> None:
    with pytest.raises(ValueError):
        EdgeList(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.zeros(2))


# --- kNN branch -----------------------------------------------------------------------------------


def test_knn_edges_hand_computed() -> None:
    # points: 0 (0,0), 1 (1,0), 2 (0,2), 3 (3,0); nearest neighbours (k=1):
    # 0 -> 1 (d=1), 1 -> 0 (d=1), 2 -> 0 (d=2), 3 -> 1 (d=2); affinity 1 / (1 + d)
    h = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    dense = knn_edges(h, k=1).to_dense(4)
    expected = torch.zeros(4, 4)
    expected[0, 1] = expected[1, 0] = 0.5 + 0.5  # mutual neighbours: summed
    expected[2, 0] = expected[0, 2] = 1 / 3
    expected[3, 1] = expected[1, 3] = 1 / 3
    assert torch.allclose(dense, expected, atol=1e-6)
    binary = knn_edges(h, k=1, binary=True).to_dense(4)
    assert torch.equal(binary, (expected > 0).float() * torch.where(expected > 0.9, 2.0, 1.0))


def test_knn_clamps_k_and_has_no_self_loops() -> None:
    h = torch.randn(5, 3)
    e = knn_edges(h, k=100)
    assert e.n_edges == 5 * 4  # complete graph, both directions
    assert torch.all(e.src != e.dst)


def test_knn_weights_are_differentiable_and_finite_with_duplicates() -> None:
    h = torch.randn(6, 4)
    h[3] = h[2]  # coincident points
    h.requires_grad_(True)
    e = knn_edges(h, k=2)
    assert e.weight.requires_grad
    e.weight.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0


def test_metadata_weights_are_constant() -> None:
    sev = _severity(LAYOUT)
    for e in (
        ref_ref_edges(LAYOUT),
        ref_dist_edges(LAYOUT, sev),
        dist_dist_edges(LAYOUT, sev, topk=50),
        structural_edges(LAYOUT),
    ):
        assert not e.weight.requires_grad


# --- property tests -------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.floats(-2, 2, allow_nan=False)),
                max_size=30,
            ),
        )
    )
)
def test_coalesce_preserves_dense_matrix(case) -> None:
    n, triples = case
    e = EdgeList(
        torch.tensor([t[0] for t in triples], dtype=torch.long),
        torch.tensor([t[1] for t in triples], dtype=torch.long),
        torch.tensor([t[2] for t in triples], dtype=torch.float64),
    )
    c = coalesce(e, n)
    assert torch.allclose(c.to_dense(n), e.to_dense(n))
    keys = (c.src * n + c.dst).tolist()
    assert keys == sorted(set(keys))
    u = upper_triangle(c)
    assert torch.all(u.src < u.dst)
    assert torch.allclose(u.to_dense(n), torch.triu(e.to_dense(n), diagonal=1))
