"""Prototype layer, Sinkhorn-Knopp, transport graph and swapped-prediction alignment."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.objectives.graphs import EdgeList
from shamisa.objectives.transport import (
    PrototypeLayer,
    global_topk_edges,
    min_max_normalise,
    sinkhorn_knopp,
    swapped_prediction_alignment,
    transport_edges,
    transport_scores,
)


def _reference_sinkhorn(logits: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """Plain-Python SwAV Sinkhorn: Q = exp(l/eps)^T, total 1, rows 1/K, columns 1/N, return (Q N)^T."""
    n, k = len(logits), len(logits[0])
    q = [[math.exp(logits[i][j] / eps) for i in range(n)] for j in range(k)]  # (K, N)
    tot = sum(map(sum, q))
    q = [[x / tot for x in row] for row in q]
    for _ in range(iters):
        q = [[x / sum(row) / k for x in row] for row in q]
        col = [sum(q[j][i] for j in range(k)) for i in range(n)]
        q = [[q[j][i] / col[i] / n for i in range(n)] for j in range(k)]
    return [[q[j][i] * n for j in range(k)] for i in range(n)]


def test_prototype_layer_weight_norm_and_init() -> None:
    torch.manual_seed(0)
    layer = PrototypeLayer(16, n_prototypes=5)
    bound = 1 / math.sqrt(16)
    assert layer.direction.abs().max().item() <= bound
    assert torch.allclose(layer.weight, layer.direction, atol=1e-6)  # g = ||v|| at init
    with torch.no_grad():
        layer.magnitude.fill_(2.0)
        layer.direction.mul_(7.0)  # scaling v does not change w
    assert torch.allclose(layer.weight.norm(dim=1), torch.full((5,), 2.0), atol=1e-6)
    x = torch.randn(3, 16)
    out = layer(x)
    assert out.shape == (3, 5)
    out.sum().backward()
    assert layer.magnitude.grad is not None and layer.direction.grad is not None
    assert not any(p.ndim == 1 and p.shape == (5,) for p in layer.parameters())  # bias-free


def test_sinkhorn_matches_reference_loop() -> None:
    logits = [[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [-0.05, 0.2, 0.1], [0.0, 0.0, 0.4]]
    got = sinkhorn_knopp(torch.tensor(logits), eps=0.05, n_iters=3)
    ref = _reference_sinkhorn(logits, 0.05, 3)
    assert torch.allclose(got, torch.tensor(ref), atol=1e-5)


def test_sinkhorn_marginals_and_no_grad() -> None:
    logits = torch.randn(12, 4, requires_grad=True)
    q = sinkhorn_knopp(logits, eps=0.05, n_iters=6)
    assert not q.requires_grad
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)  # last step normalises columns
    # uniform logits -> uniform codes
    assert torch.allclose(sinkhorn_knopp(torch.zeros(6, 3)), torch.full((6, 3), 1 / 3))
    # shift invariance (the global max is subtracted internally)
    assert torch.allclose(sinkhorn_knopp(logits + 5.0), q, atol=1e-5)


def test_transport_scores_hand_computed() -> None:
    probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    s = transport_scores(probs.log(), probs)
    # S_01 = (1/2)(ln .5 * .25 + ln .5 * .75) = ln(.5) / 2
    assert s[0, 1].item() == pytest.approx(math.log(0.5) / 2, rel=1e-6)
    # S_10 = (1/2)(ln .25 * .5 + ln .75 * .5)
    assert s[1, 0].item() == pytest.approx(0.25 * (math.log(0.25) + math.log(0.75)), rel=1e-6)


def test_min_max_normalise() -> None:
    out = min_max_normalise(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    assert out.tolist() == [[0.0, 0.5], [0.25, 1.0]]
    assert min_max_normalise(torch.full((2, 2), 3.0)).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_global_topk_edges() -> None:
    scores = torch.tensor([[0.0, 0.9, 0.1], [0.8, 0.2, 0.3], [0.5, 0.4, 1.0]])
    e = global_topk_edges(scores, 4)
    assert set(zip(e.src.tolist(), e.dst.tolist())) == {(0, 1), (1, 0), (2, 0), (2, 2)}
    assert global_topk_edges(scores, 100).n_edges == 9  # clamped to N^2


def test_transport_edges_count_and_gradients() -> None:
    torch.manual_seed(0)
    layer = PrototypeLayer(8, n_prototypes=4)
    h = torch.nn.functional.normalize(torch.randn(10, 8), dim=1).requires_grad_(True)
    res = transport_edges(h, layer, tau=0.1, eps=0.05, sinkhorn_iters=6, topk_per_node=3)
    assert res.edges.n_edges == 30
    assert res.edges.weight.min().item() >= 0 and res.edges.weight.max().item() == pytest.approx(1.0)
    assert not res.codes.requires_grad and res.log_probs.requires_grad
    res.edges.weight.sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    assert layer.direction.grad is not None and layer.direction.grad.abs().sum() > 0
    big = transport_edges(h.detach(), layer, topk_per_node=1000)
    assert big.edges.n_edges == 100


def test_swapped_prediction_alignment_hand_computed() -> None:
    gamma = 0.4
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_p = torch.tensor([[0.5, 0.5], [0.25, 0.75]]).log()
    pairs = EdgeList(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.ones(2))
    self_term = (math.log(0.5) + math.log(0.75)) / 4
    # edge 0->1: Q_0 = (1, 0) with log P_1 -> ln .25 ; edge 1->0: Q_1 = (0, 1) with log P_0 -> ln .5
    paired = (math.log(0.25) + math.log(0.5)) / 4
    got = swapped_prediction_alignment(q, log_p, pairs, gamma)
    assert got.item() == pytest.approx(-0.5 * gamma * (self_term + paired), rel=1e-6)
    empty = EdgeList(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0))
    got_self = swapped_prediction_alignment(q, log_p, empty, gamma)
    assert got_self.item() == pytest.approx(-0.5 * gamma * self_term, rel=1e-6)
    # one edge 0->1 alone: paired = (ln .25 + 0) / 2 (the mean over its K = 2 products)
    one = EdgeList(torch.tensor([0]), torch.tensor([1]), torch.ones(1))
    got_one = swapped_prediction_alignment(q, log_p, one, gamma)
    assert got_one.item() == pytest.approx(-0.5 * gamma * (self_term + math.log(0.25) / 2), rel=1e-6)


def test_alignment_gradient_only_through_log_probs() -> None:
    q = torch.rand(4, 3, requires_grad=True)
    lp = torch.log_softmax(torch.randn(4, 3), dim=1).requires_grad_(True)
    pairs = EdgeList(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.ones(2))
    swapped_prediction_alignment(q, lp, pairs, 0.5).backward()
    assert q.grad is None
    assert lp.grad is not None and lp.grad.abs().sum() > 0


def test_defaults_edges_and_message() -> None:
    from shamisa.objectives.transport import sinkhorn_knopp

    torch.manual_seed(1)
    layer = PrototypeLayer(6)
    assert layer.weight.shape == (32, 6) and "in_dim=6, n_prototypes=32" in repr(layer)
    assert PrototypeLayer(1, 1).weight.shape == (1, 1)  # the smallest layer is allowed
    for args in ((0, 4), (4, 0), (0, 0)):
        with pytest.raises(ValueError, match=rf"^PrototypeLayer needs in_dim, n_prototypes >= 1, got {args[0]}, {args[1]}$"):
            PrototypeLayer(*args)
    h = torch.nn.functional.normalize(torch.randn(12, 6, generator=torch.Generator().manual_seed(2)), dim=1)
    # the defaults are tau 0.1, eps 0.05, 6 Sinkhorn iterations, 8 edges a node
    got = transport_edges(h, layer)
    want = transport_edges(h, layer, tau=0.1, eps=0.05, sinkhorn_iters=6, topk_per_node=8)
    assert got.edges.n_edges == 8 * 12
    assert torch.equal(got.codes, want.codes) and torch.equal(got.log_probs, want.log_probs)
    assert torch.equal(got.edges.weight, want.edges.weight)
    x = torch.nn.functional.normalize(h, dim=-1)
    torch.testing.assert_close(got.codes, sinkhorn_knopp(layer(x), 0.05, 6))
    assert not torch.allclose(got.codes, sinkhorn_knopp(layer(x), 0.05, 7))
    # zero edges asked for: none
    assert global_topk_edges(torch.rand(3, 3), 0).n_edges == 0
