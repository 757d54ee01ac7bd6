"""NT-Xent losses against straightforward loop implementations."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.objectives.ntxent import nt_xent, nt_xent_multi_positive


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _loop_multi_positive(z: list[list[float]], labels: list[int], t: float) -> float:
    n = len(z)
    losses = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(_cos(z[i], z[k]) / t) for k in range(n) if k != i)
        losses.append(-sum(math.log(math.exp(_cos(z[i], z[p]) / t) / denom) for p in pos) / len(pos))
    return sum(losses) / len(losses)


def _loop_nt_xent(a: list[list[float]], b: list[list[float]], t: float) -> float:
    z = a + b
    n = len(a)
    return _loop_multi_positive(z, list(range(n)) + list(range(n)), t)


def test_nt_xent_hand_case() -> None:
    # two orthogonal pairs in 2-D: a0 = b0 = (1, 0), a1 = b1 = (0, 1)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # for each anchor: positive sim 1, negatives sims 0, 0 -> -log(e^2 / (e^2 + 2))
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert nt_xent(a, a.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_loop() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    got = nt_xent(a, b, 0.2).item()
    assert got == pytest.approx(_loop_nt_xent(a.tolist(), b.tolist(), 0.2), rel=1e-5)
    # symmetric in the two views
    assert nt_xent(b, a, 0.2).item() == pytest.approx(got, rel=1e-6)


def test_multi_positive_matches_loop_and_reduces_to_nt_xent() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    z = torch.randn(8, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # label 2 has no positive: skipped
    got = nt_xent_multi_positive(z, labels, 0.3).item()
    assert got == pytest.approx(_loop_multi_positive(z.tolist(), labels.tolist(), 0.3), rel=1e-5)
    a, b = z[:4], z[4:]
    pair_labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert nt_xent_multi_positive(z, pair_labels, 0.3).item() == pytest.approx(nt_xent(a, b, 0.3).item(), rel=1e-6)


def test_multi_positive_without_positives_is_zero_and_gradients_flow() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    assert nt_xent_multi_positive(z, torch.arange(4), 0.1).item() == 0.0
    loss = nt_xent_multi_positive(z, torch.tensor([0, 0, 1, 1]), 0.1)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_errors() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError):
        nt_xent(torch.ones(2, 3), torch.ones(2, 3), temperature=0.0)
    with pytest.raises(ValueError):
        nt_xent_multi_positive(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_defaults_edges_and_messages() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    labels = torch.tensor([0, 0, 1])
    # the default temperature is ARNIQA's 0.1
    assert nt_xent(a, b).item() == pytest.approx(nt_xent(a, b, 0.1).item(), rel=1e-7)
    assert nt_xent_multi_positive(a, labels).item() == pytest.approx(nt_xent_multi_positive(a, labels, 0.1).item(), rel=1e-7)
    # one pair: the positive is the only candidate, -log(1) = 0
    assert nt_xent(a[:1], b[:1], 0.5).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"^nt_xent needs two \(n, D\) tensors of equal shape, got \(0, 4\), \(0, 4\)$"):
        nt_xent(a[:0], b[:0])
    with pytest.raises(ValueError, match=r"equal shape, got \(4,\), \(4,\)$"):
        nt_xent(a[0], b[0])
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0.0$"):
        nt_xent(a, b, 0.0)
    with pytest.raises(ValueError, match=r"^temperature must be > 0, got 0.0$"):
        nt_xent_multi_positive(a, labels, 0.0)
    with pytest.raises(ValueError, match=r"^expected z \(n, D\) and labels \(n,\), got \(3, 4\), \(2,\)$"):
        nt_xent_multi_positive(a, labels[:2])
