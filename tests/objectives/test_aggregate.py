"""Branch statistics, weighting MLP, merging, pair cost and edge regulariser."""

from __future__ import annotations

import pytest
import torch

from shamisa.objectives.aggregate import (
    BranchWeighting,
    branch_statistics,
    combine_branches,
    edge_regulariser,
    pair_cost,
    relation_loss,
)
from shamisa.objectives.graphs import EdgeList


def _edges(pairs: list[tuple[int, int]], weights: list[float], requires_grad: bool = False) -> EdgeList:
    src = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    dst = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    return EdgeList(src, dst, torch.tensor(weights, requires_grad=requires_grad))


def test_branch_statistics() -> None:
    a = _edges([(0, 1), (1, 2)], [0.5, 1.5], requires_grad=True)
    b = _edges([(0, 2)], [2.0])
    stats = branch_statistics([a, b])
    assert stats.tolist() == [2.0, 2.0, 1.0, 2.0]
    assert not stats.requires_grad


def test_branch_weighting_is_frozen_and_detached() -> None:
    torch.manual_seed(0)
    mlp = BranchWeighting(3)
    assert mlp.net[0].normalized_shape == (6,)
    assert mlp.net[1].out_features == 12 and mlp.net[-1].out_features == 3
    assert all(not p.requires_grad for p in mlp.parameters())
    stats = torch.tensor([10.0, 3.0, 20.0, 1.0, 5.0, 4.0], requires_grad=True)
    w = mlp(stats)
    assert w.shape == (3,) and w.sum().item() == pytest.approx(1.0) and (w > 0).all()
    assert not w.requires_grad
    # the same statistics give the same weights (a fixed function)
    assert torch.equal(mlp(stats), w)


def test_branch_weighting_without_stop_grad_trains() -> None:
    mlp = BranchWeighting(2, stop_grad=False)
    w = mlp(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert w.requires_grad
    (w * torch.tensor([1.0, -1.0])).sum().backward()
    assert all(p.grad is not None for p in mlp.parameters())


def test_combine_branches_hand_computed() -> None:
    # 4 nodes; branch "ref_ref" (both directions) and "dist_dist"; kNN residual
    scaled = {
        "ref_ref": _edges([(0, 1), (1, 0)], [0.5, 0.5]),
        "dist_dist": _edges([(2, 3), (3, 2), (0, 1)], [1.0, 1.0, 0.25]),
        "knn": _edges([(1, 2), (2, 1)], [0.3, 0.3]),
    }
    weights = {"ref_ref": 0.2, "dist_dist": 0.5, "knn": 0.3}
    merged = combine_branches(scaled, weights, 4)
    got = dict(zip(zip(merged.src.tolist(), merged.dst.tolist()), merged.weight.tolist()))
    assert got.keys() == {(0, 1), (1, 2), (2, 3)}
    assert got[(0, 1)] == pytest.approx(0.2 * 0.5 + 0.5 * 0.25)
    assert got[(2, 3)] == pytest.approx(0.5 * 1.0)
    assert got[(1, 2)] == pytest.approx(0.3 * 0.3)
    no_knn = combine_branches(scaled, weights, 4, include_knn_residual=False)
    assert (1, 2) not in set(zip(no_knn.src.tolist(), no_knn.dst.tolist()))
    only_knn = combine_branches({"knn": scaled["knn"]}, weights, 4, include_knn_residual=False)
    assert only_knn.n_edges == 1


def test_pair_cost_hand_computed() -> None:
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    e = _edges([(0, 1), (1, 2)], [0.5, 2.0])
    # ||z0 - z1||^2 = 1, ||z1 - z2||^2 = 5 -> (0.5 * 1 + 2 * 5) / (N D = 6)
    cost = pair_cost(z, e)
    assert cost.item() == pytest.approx(10.5 / 6)
    assert pair_cost(z, e, binary=True).item() == pytest.approx(6 / 6)
    cost.backward()
    # d/dz0 = 0.5 * 2 (z0 - z1) / 6
    assert z.grad[0].tolist() == pytest.approx([-1.0 / 6, 0.0])


def test_pair_cost_cosine_hand_computed() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 3.0]], requires_grad=True)
    e = _edges([(0, 1), (0, 2)], [0.5, 2.0])
    # 1 - cos(z0, z1) = 1 - 1/sqrt(2); 1 - cos(z0, z2) = 1 -> (0.5 (1 - 0.70711) + 2) / N=3
    expected = (0.5 * (1 - 2**-0.5) + 2.0) / 3
    assert pair_cost(z, e, metric="cos").item() == pytest.approx(expected, rel=1e-6)
    assert pair_cost(z, e, binary=True, metric="cos").item() == pytest.approx((2 - 2**-0.5) / 3, rel=1e-6)
    # scale invariant: shrinking z does not lower it (the Euclidean cost falls by the square)
    assert pair_cost(0.01 * z, e, metric="cos").item() == pytest.approx(expected, rel=1e-5)
    assert pair_cost(0.01 * z, e).item() == pytest.approx(1e-4 * pair_cost(z, e).item(), rel=1e-5)
    with pytest.raises(ValueError, match="pair metric"):
        pair_cost(z, e, metric="manhattan")


def test_pair_cost_empty_graph_keeps_graph() -> None:
    z = torch.randn(3, 2, requires_grad=True)
    empty = EdgeList(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    cost = pair_cost(z, empty)
    assert cost.item() == 0.0
    cost.backward()


def test_edge_regulariser_and_relation_loss() -> None:
    e = _edges([(0, 1), (1, 2)], [0.5, 2.0], requires_grad=True)
    reg = edge_regulariser(e, 0.1)
    assert reg.item() == pytest.approx(-0.1 * (0.25 + 4.0))
    reg.backward()
    assert e.weight.grad.tolist() == pytest.approx([-0.1, -0.4])  # -2 rho w
    loss = relation_loss(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(-0.25))
    assert loss.item() == pytest.approx(2.5)


def test_one_edge_and_no_edge() -> None:
    """A graph with a single edge is costed (not taken for an empty one); an empty graph's regulariser is a
    zero scalar."""
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    one = _edges([(0, 1)], [0.5])
    assert pair_cost(z, one).item() == pytest.approx(0.5 * (1.0 + 4.0) / (2 * 2))
    assert edge_regulariser(one, 0.1).item() == pytest.approx(-0.1 * 0.25)
    empty = EdgeList(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    reg = edge_regulariser(empty, 0.1)
    assert reg.shape == () and reg.item() == 0.0


def test_branch_weighting_one_branch_and_stop_grad() -> None:
    """One branch is allowed (weight 1); stop_grad=True detaches the weights, stop_grad=False does not."""
    stats = torch.tensor([3.0, 1.5])
    w = BranchWeighting(1)(stats)
    assert w.tolist() == [1.0]
    stats2 = torch.tensor([3.0, 1.0, 1.5, 2.0])
    assert not BranchWeighting(2, stop_grad=True)(stats2).requires_grad
    assert BranchWeighting(2, stop_grad=False)(stats2).requires_grad
    with pytest.raises(ValueError, match="at least one branch, got 0"):
        BranchWeighting(0)


def test_mixed_precision_inputs_keep_the_computation_dtype() -> None:
    """float64 statistics into the float32 weighting MLP, float64 edge weights on float32 embeddings: the
    result has the dtype of the module's parameters / of the embeddings."""
    torch.manual_seed(0)
    net = BranchWeighting(3)
    assert net.n_branches == 3
    w = net(torch.tensor([2.0, 1.5, 4.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    assert w.dtype == torch.float32 and w.sum().item() == pytest.approx(1.0, abs=1e-6)
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    e = EdgeList(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0.5, 2.0], dtype=torch.float64))
    cost = pair_cost(z, e)
    assert cost.dtype == torch.float32 and cost.item() == pytest.approx(10.5 / 6)
