"""The training step and the optimiser set-up against updates computed here.

* ``grad_accum = 2`` over two micro-batches gives the same SGD step as one micro-batch holding both
  (for a loss that is a mean over items) and as the update ``p - lr * mean of the two gradients``.
* One SGD step of the configured optimiser: ``p - lr * (g + weight_decay * p)`` (first step: the
  momentum buffer is the gradient), with the encoder at ``lr * encoder_lr_scale`` when that is set;
  frozen parameters are not in the optimiser.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from shamisa.configs import PretrainConfig
from shamisa.distortions.builder import StructuredBatch
from shamisa.training.distributed import DistInfo
from shamisa.training.loop import _train_step
from shamisa.training.model import build_optimizer

P = 4  # patch size of the toy batches


class ToyModel(nn.Module):
    """encoder + projector; the loss is a mean over items of a squared error, so that a batch of 2k items
    has the gradient of the mean over two batches of k items."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(3 * P * P, 5)
        self.projector = nn.Linear(5, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, refs, dist_imgs, meta):
        x = torch.cat([refs.flatten(2).mean(1), dist_imgs.flatten(4).mean((1, 2, 3))], dim=1)  # (B, 2 * 3P^2)
        x = x[:, : 3 * P * P] + 0.5 * x[:, 3 * P * P :]
        z = self.projector(torch.tanh(self.encoder(x)))
        target = meta["indices"].reshape(refs.shape[0], -1)[:, :2].to(z.dtype)
        per_item = ((z - target) ** 2).sum(dim=1)
        return {"loss": per_item.mean(), "term": float(per_item.detach().mean())}


def _batch(n_items: int, seed: int) -> StructuredBatch:
    g = torch.Generator().manual_seed(seed)
    r, f, lev, s = 1, 1, 2, 2
    return StructuredBatch(
        dist=torch.rand(n_items, 2 * r, f, lev, 3, P, P, generator=g),
        refs=torch.rand(n_items, 2 * r, 3, P, P, generator=g),
        indices=torch.rand(n_items, f, lev, s, generator=g) * 4,
        values=torch.zeros(n_items, f, lev, s),
        n_dist=torch.ones(n_items, f, dtype=torch.long),
        var_slot=torch.zeros(n_items, f, dtype=torch.long),
        type_ids=torch.zeros(n_items, f, s, dtype=torch.long),
    )


def _concat(a: StructuredBatch, b: StructuredBatch) -> StructuredBatch:
    return StructuredBatch(**{fl.name: torch.cat([getattr(a, fl.name), getattr(b, fl.name)]) for fl in dataclasses.fields(a)})


def _step(cfg: PretrainConfig, batches: list[StructuredBatch]) -> tuple[ToyModel, dict[str, float]]:
    model = ToyModel()
    opt = build_optimizer(model, cfg)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    result = _train_step(model, iter(batches), opt, scaler, cfg, DistInfo(), torch.device("cpu"))
    assert result.finite
    return model, result.terms


def test_grad_accum_2_equals_one_step_with_the_doubled_batch():
    a, b = _batch(3, 1), _batch(3, 2)
    cfg1 = PretrainConfig(grad_accum=1, lr=0.1, momentum=0.9, weight_decay=0.0)
    cfg2 = dataclasses.replace(cfg1, grad_accum=2)
    m_acc, terms_acc = _step(cfg2, [a, b])
    m_big, terms_big = _step(cfg1, [_concat(a, b)])
    for (name, p_acc), p_big in zip(m_acc.named_parameters(), m_big.parameters(), strict=True):
        torch.testing.assert_close(p_acc, p_big, rtol=1e-5, atol=1e-7, msg=name)
    assert terms_acc["loss"] == pytest.approx(terms_big["loss"], rel=1e-5)
    assert terms_acc["term"] == pytest.approx(terms_big["term"], rel=1e-5)

    # and the update is p - lr * mean(grad_a, grad_b), computed here
    start = ToyModel()
    grads = []
    for batch in (a, b):
        start.zero_grad()
        meta = {"indices": batch.indices, "var_slot": batch.var_slot}
        start(batch.refs, batch.dist, meta)["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in start.named_parameters() if p.requires_grad})
    for name, p in m_acc.named_parameters():
        if name.startswith("frozen"):
            continue
        expected = dict(start.named_parameters())[name].detach() - 0.1 * (grads[0][name] + grads[1][name]) / 2
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("encoder_lr_scale", [1.0, 0.25])
def test_one_sgd_step_applies_weight_decay(encoder_lr_scale):
    cfg = PretrainConfig(lr=0.05, momentum=0.9, weight_decay=0.2, encoder_lr_scale=encoder_lr_scale)
    model = ToyModel()
    opt = build_optimizer(model, cfg)  # type: ignore[arg-type]
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert id(model.frozen.weight) not in in_opt and id(model.frozen.bias) not in in_opt
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    for name, p in model.named_parameters():
        if name.startswith("frozen"):
            assert torch.equal(p, before[name])
            continue
        lr = 0.05 * (encoder_lr_scale if name.startswith("encoder") else 1.0)
        expected = before[name] - lr * (grads[name] + 0.2 * before[name])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8, msg=name)
