"""The training step and the optimiser set-up against updates computed here.

* ``grad_accum = 2`` over two micro-batches gives the same SGD step as one micro-batch holding both
  (for a loss that is a mean over items) and as the update ``p - lr * mean of the two gradients``.
* One SGD step of the configured optimiser: ``p - lr * (g + weight_decay * p)`` (first step: the
  momentum buffer is the gradient), with the encoder at ``lr * encoder_lr_scale`` when that is set;
  frozen parameters are not in the optimiser.
* The step's bookkeeping: under DDP, gradients are synchronised on the last micro-batch only; a non-finite
  loss drops the step (no backward in one process; zero gradients under DDP, whose ranks all wait for a
  backward); stale gradients are cleared to None; the logged timings are the clock's intervals; the
  batch lands on the step's device, copied asynchronously on CUDA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types

import pytest
import torch
from torch import nn

from shamisa.configs import PretrainConfig
from shamisa.distortions.builder import StructuredBatch
from shamisa.training.distributed import DistInfo
from shamisa.training.loop import _to_device, _train_step
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


# --- the step's bookkeeping: DDP's no_sync, non-finite losses, the clock, the device moves ---------------


class SpyDDP(nn.Module):
    """Stands in for DistributedDataParallel around ToyModel: records, per forward, whether it ran inside
    ``no_sync()``; makes the loss of the chosen micro-batches NaN (a constant added, so that the gradient
    reaching the parameters is the one the step feeds back)."""

    def __init__(self, nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.module = ToyModel()
        self.unused = nn.Linear(2, 2)  # in the optimiser, never reached by the loss
        self.nan_at = nan_at
        self.in_no_sync: list[bool] = []
        self._syncing_off = False

    @contextlib.contextmanager
    def no_sync(self):
        self._syncing_off = True
        try:
            yield
        finally:
            self._syncing_off = False

    def forward(self, refs, dist_imgs, meta):
        self.in_no_sync.append(self._syncing_off)
        out = self.module(refs, dist_imgs, meta)
        if len(self.in_no_sync) - 1 in self.nan_at:
            out["loss"] = out["loss"] + float("nan")
        return out


def _spy_step(spy: SpyDDP, world: int, grad_accum: int, weight_decay: float = 0.0):
    cfg = PretrainConfig(grad_accum=grad_accum, lr=0.1, momentum=0.0, weight_decay=weight_decay)
    opt = build_optimizer(spy, cfg)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batches = iter([_batch(2, 10 + i) for i in range(grad_accum)])
    return _train_step(spy, batches, opt, scaler, cfg, DistInfo(rank=0, world=world), torch.device("cpu"))


@pytest.mark.parametrize(("world", "grad_accum", "expected"), [
    (2, 3, [True, True, False]),  # gradients are all-reduced once, on the last micro-batch
    (4, 2, [True, False]),
    (2, 1, [False]),
    (1, 3, [False, False, False]),  # one process: no DDP wrapper, no no_sync
])
def test_ddp_syncs_gradients_on_the_last_micro_batch_only(world, grad_accum, expected):
    spy = SpyDDP()
    assert _spy_step(spy, world, grad_accum).finite
    assert spy.in_no_sync == expected


def _grad_log(spy: SpyDDP) -> list[torch.Tensor]:
    log: list[torch.Tensor] = []
    for p in spy.module.parameters():
        if p.requires_grad:
            p.register_hook(lambda g, log=log: log.append(g.detach().clone()))
    return log


def test_a_non_finite_loss_drops_the_step_without_a_backward_in_one_process():
    spy = SpyDDP(nan_at=(0,))
    before = {n: p.detach().clone() for n, p in spy.named_parameters()}
    log = _grad_log(spy)
    result = _spy_step(spy, world=1, grad_accum=2, weight_decay=0.1)
    assert not result.finite
    assert log == []  # nothing to reduce in one process: the backward is skipped
    for n, p in spy.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n  # dropped, not zero-filled


@pytest.mark.parametrize("nan_at", [(0,), (1,), (0, 1)])
def test_under_ddp_a_non_finite_loss_feeds_zero_gradients_to_every_micro_batch_after_it(nan_at):
    """Under DDP every micro-batch must still run a backward (each rank's reducer waits for it), but from
    the first non-finite loss on, the gradients fed back are exactly zero; the step is then dropped."""
    spy = SpyDDP(nan_at=nan_at)
    before = {n: p.detach().clone() for n, p in spy.named_parameters()}
    log = _grad_log(spy)
    result = _spy_step(spy, world=2, grad_accum=2, weight_decay=0.1)
    assert not result.finite
    n_params = sum(1 for p in spy.module.parameters() if p.requires_grad)
    assert len(log) == 2 * n_params  # one backward per micro-batch
    first_bad = min(nan_at)
    for micro in range(2):
        grads = log[micro * n_params:(micro + 1) * n_params]
        zero = all(torch.equal(g, torch.zeros_like(g)) for g in grads)
        assert zero == (micro >= first_bad), (micro, [g.abs().max().item() for g in grads])
    for n, p in spy.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n


def test_a_parameter_the_loss_does_not_reach_is_not_decayed():
    """Stale gradients are cleared to None before the step, so SGD skips a parameter that this step's loss
    does not reach (zero-filled gradients would apply weight decay to it)."""
    spy = SpyDDP()
    for p in spy.unused.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in spy.unused.parameters()]
    assert _spy_step(spy, world=1, grad_accum=1, weight_decay=0.5).finite
    for p, b in zip(spy.unused.parameters(), before, strict=True):
        assert torch.equal(p, b)
    start = ToyModel().state_dict()
    assert all(not torch.equal(p, start[n]) for n, p in spy.module.named_parameters() if p.requires_grad)


def test_step_timings_from_the_clock(monkeypatch):
    """The step reads the clock four times per micro-batch (start, data on device, forward, backward) and
    twice around the optimiser; with a clock whose ticks all differ, each logged part is the sum of its
    own intervals, computed here."""
    import shamisa.training.loop as loop

    ticks = iter(float(k * k) for k in range(100))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    result = _spy_step(SpyDDP(), world=1, grad_accum=2)
    c = [float(k * k) for k in range(10)]
    t_data = (c[1] - c[0]) + (c[5] - c[4])
    t_fwd = (c[2] - c[1]) + (c[6] - c[5])
    t_bwd = (c[3] - c[2]) + (c[7] - c[6])
    t_opt = c[9] - c[8]
    assert result.timings == {
        "t_data": t_data, "t_forward": t_fwd, "t_backward": t_bwd + t_opt, "t_step": t_data + t_fwd + t_bwd + t_opt,
    }
    assert next(ticks) == 100.0  # exactly ten readings


def test_batches_move_to_the_step_device():
    batch = _batch(2, 5)
    refs, dist_imgs, meta = _to_device(batch, torch.device("cpu"))
    assert torch.equal(refs, batch.refs) and torch.equal(dist_imgs, batch.dist)
    assert set(meta) == {"indices", "var_slot"}
    assert torch.equal(meta["indices"], batch.indices) and torch.equal(meta["var_slot"], batch.var_slot)
    # the meta device stands in for an accelerator: every tensor the model sees must land there
    refs, dist_imgs, meta = _to_device(batch, torch.device("meta"))
    assert [t.device.type for t in (refs, dist_imgs, meta["indices"], meta["var_slot"])] == ["meta"] * 4
    assert refs.shape == batch.refs.shape and dist_imgs.shape == batch.dist.shape


class _MoveRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[torch.device, dict]] = []

    def to(self, device, **kwargs):
        self.calls.append((device, kwargs))
        return self


@pytest.mark.parametrize(("target", "non_blocking"), [("cuda", True), ("cuda:1", True), ("cpu", False)])
def test_image_copies_are_asynchronous_on_cuda_only(target, non_blocking):
    fields = {f.name: _MoveRecorder() for f in dataclasses.fields(StructuredBatch)}
    _to_device(StructuredBatch(**fields), torch.device(target))  # type: ignore[arg-type]
    for name in ("refs", "dist"):
        assert fields[name].calls == [(torch.device(target), {"non_blocking": non_blocking})], name
