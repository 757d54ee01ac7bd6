"""LML-IQA local-manifold contrastive loss against a loop implementation."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.objectives.lml import local_manifold_contrastive_loss


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _loop(anchor, positives, intra, t: float, w: float) -> float:
    b = len(anchor)
    total = 0.0
    for i in range(b):
        neg = sum(math.exp(_cos(anchor[i], anchor[j]) / t) for j in range(b) if j != i)
        neg += w * sum(math.exp(_cos(anchor[i], n) / t) for n in intra[i])
        pos_list = positives[i] if positives is not None else [anchor[i]]
        li = 0.0
        for p in pos_list:
            e = math.exp(_cos(anchor[i], p) / t)
            li += -math.log(e / (e + neg))
        total += li / len(pos_list)
    return total / b


def test_hand_case() -> None:
    # two images; anchors orthogonal; positive equal to the anchor; one intra negative at 60 degrees
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = anchor[:, None, :].clone()
    intra = torch.tensor([[[0.5, math.sqrt(3) / 2]], [[math.sqrt(3) / 2, 0.5]]])
    t, w = 0.5, 0.5
    # per image: pos e^{1/t}, inter e^{0}, intra w e^{0.5/t}
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + w * math.exp(1)))
    got = local_manifold_contrastive_loss(anchor, positives, intra, t, w)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_matches_loop_reference() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    anchor = torch.randn(4, 3, generator=g)
    positives = torch.randn(4, 2, 3, generator=g)
    intra = torch.randn(4, 3, 3, generator=g)
    for w in (1.0, 0.3):
        got = local_manifold_contrastive_loss(anchor, positives, intra, 0.2, w).item()
        ref = _loop(anchor.tolist(), positives.tolist(), intra.tolist(), 0.2, w)
        assert got == pytest.approx(ref, rel=1e-5)
    got_none = local_manifold_contrastive_loss(anchor, None, intra, 0.2, 1.0).item()
    assert got_none == pytest.approx(_loop(anchor.tolist(), None, intra.tolist(), 0.2, 1.0), rel=1e-5)


def test_float64_inputs_are_computed_in_float64() -> None:
    """With float64 embeddings every constant (the positive logit 1/T without positives, log w) is float64
    too: the loss equals the double-precision loop to round-off, not to float32's 1e-7."""
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    anchor = torch.randn(4, 3, generator=g, dtype=torch.float64)
    positives = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    intra = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    for pos in (positives, None):
        got = local_manifold_contrastive_loss(anchor, pos, intra, 0.3, 0.3)
        ref = _loop(anchor.tolist(), None if pos is None else pos.tolist(), intra.tolist(), 0.3, 0.3)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(ref, rel=1e-12, abs=0)


def test_zero_intra_weight_equals_no_intra_negatives() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    anchor = torch.randn(3, 4, generator=g)
    positives = torch.randn(3, 1, 4, generator=g)
    intra = torch.randn(3, 2, 4, generator=g)
    a = local_manifold_contrastive_loss(anchor, positives, intra, 0.1, intra_weight=0.0)
    b = local_manifold_contrastive_loss(anchor, positives, intra[:, :0], 0.1)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    # more weight on the intra negatives -> larger loss
    c = local_manifold_contrastive_loss(anchor, positives, intra, 0.1, intra_weight=2.0)
    assert c.item() > a.item()


def test_gradients_and_errors() -> None:
    anchor = torch.randn(3, 4, requires_grad=True)
    positives = torch.randn(3, 1, 4, requires_grad=True)
    intra = torch.randn(3, 2, 4, requires_grad=True)
    local_manifold_contrastive_loss(anchor, positives, intra).backward()
    for t in (anchor, positives, intra):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    with pytest.raises(ValueError):
        local_manifold_contrastive_loss(anchor, positives, torch.randn(2, 2, 4))
    with pytest.raises(ValueError):
        local_manifold_contrastive_loss(anchor, torch.randn(3, 4), intra)
    with pytest.raises(ValueError):
        local_manifold_contrastive_loss(anchor, positives, intra, temperature=0.0)


def test_defaults_and_exact_messages() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    anchor, pos, intra = torch.randn(3, 4, generator=g), torch.randn(3, 2, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    # the defaults: temperature 0.1, intra-class negatives at weight 1
    assert local_manifold_contrastive_loss(anchor, pos, intra).item() == pytest.approx(
        _loop(anchor.tolist(), pos.tolist(), intra.tolist(), 0.1, 1.0), rel=1e-5
    )
    with pytest.raises(ValueError, match=r"^anchor must be \(B, D\), got \(4,\)$"):
        local_manifold_contrastive_loss(anchor[0], pos, intra)
    with pytest.raises(ValueError, match=r"^intra_negatives must be \(B, M, D\) = \(3, M, 4\), got \(3, 2\)$"):
        local_manifold_contrastive_loss(anchor, pos, intra[:, :, 0])
    # positives of the right batch but the wrong width are refused too
    with pytest.raises(ValueError, match=r"^positives must be \(B, P, D\) = \(3, P, 4\), got \(3, 2, 5\)$"):
        local_manifold_contrastive_loss(anchor, torch.randn(3, 2, 5, generator=g), intra)
    with pytest.raises(ValueError, match=r"^need temperature > 0 and intra_weight >= 0, got 0.1, -1.0$"):
        local_manifold_contrastive_loss(anchor, pos, intra, 0.1, -1.0)
