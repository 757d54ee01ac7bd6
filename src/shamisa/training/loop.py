"""SHAMISA pretraining: one readable loop, top to bottom.

``pretrain(cfg)`` sets up (processes, device, run folder, data, model, optimizer, resume), then for
every optimizer step:

1. sets the learning rate (``CosineAnnealingWarmRestarts`` stepped with the fractional epoch);
2. for each of ``grad_accum`` micro-steps: fetches ``items_per_step`` structured items (per
   process), runs ``h = f(x)``, ``z = g(h)`` on all crops (under autocast when AMP is on), gathers
   the embeddings of every process (DDP), evaluates the loss and back-propagates;
3. steps SGD (over encoder, projector and prototype parameters; the frozen weighting MLP has
   ``requires_grad=False``), logs, checkpoints.

Run folder (``cfg.out_dir``): ``config.json`` (resolved config), ``metrics.jsonl`` and
``loss_curve.png`` (:mod:`shamisa.training.runlog`), ``ckpt/`` (:mod:`shamisa.training.checkpoint`).
Starting the same command again with the same ``out_dir`` resumes from ``ckpt/last.json``.

Distributed: launched by ``torchrun`` (``WORLD_SIZE > 1``), every process builds its share of the
items and the loss sees the whole global batch (:mod:`shamisa.training.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shamisa.configs import PretrainConfig, config_to_dict, start_weights_warning
from shamisa.device import resolve_device
from shamisa.distortions.builder import StructuredBatch
from shamisa.errors import ConfigError, TrainingError
from shamisa.fileio import atomic_write_json
from shamisa.training.checkpoint import restore_checkpoint, rng_state, save_checkpoint, seed_everything
from shamisa.training.data import PristineDataset, item_seed, make_loader
from shamisa.training.distributed import DistInfo, all_ranks_any, init_distributed
from shamisa.training.model import (
    PretrainModel,
    build_model,
    build_optimizer,
    freeze_encoder_lr,
    resolve_amp,
    set_train_mode,
)
from shamisa.training.runlog import RunLog, plot_loss_curve

__all__ = ["pretrain"]


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) pretraining; returns the run folder.

    Raises:
        ConfigError: invalid settings, or an out dir holding a different run.
        DatasetError: no usable images.
        TrainingError: ``max_nonfinite`` non-finite losses in a row (the last good checkpoint is kept).
    """
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, time.perf_counter())
    finally:
        torch.set_num_threads(threads_before)


def _pretrain(cfg: PretrainConfig, t_start: float) -> Path:
    # --- set up: processes, device, run folder, data, model, optimizer, resume
    info = init_distributed(_device_type(cfg))
    device = _device(cfg, info)
    out_dir, ckpt_dir = Path(cfg.out_dir), Path(cfg.out_dir) / "ckpt"
    resolved = config_to_dict(cfg)
    if info.main:
        _start_run_folder(out_dir, cfg, resolved)
    seed_everything(cfg.seed)
    dataset = _dataset(cfg, device)
    plan = _Plan.of(len(dataset), cfg, info.world)

    amp_dtype, use_scaler = resolve_amp(cfg, device)
    model = _model(cfg, device, amp_dtype)
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.t0_epochs, T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    record = restore_checkpoint(ckpt_dir, model, opt, scaler, resolved)
    state = _State.resumed(record)
    if record is not None and info.main:
        print(f"resuming from {ckpt_dir / 'last.json'} at step {state.step} of {plan.total_steps}", file=sys.stderr)
    if info.world > 1:
        dist.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    ddp = _distributed(model, cfg, info, device)
    set_train_mode(model, cfg.bn_mode)
    if state.step >= plan.total_steps:
        if info.main:
            print(f"{out_dir}: already finished ({state.step}/{plan.total_steps} steps); nothing to do", file=sys.stderr)
        return out_dir

    log = RunLog(out_dir, info.main, plan.total_steps, state.step)
    log.info(
        f"pretraining {cfg.encoder} ({cfg.method}) on {len(dataset)} images"
        + (f" ({len(dataset.skipped)} skipped)" if dataset.skipped else "")
        + f": {plan.total_steps} steps of {plan.items_per_opt_step} items x {cfg.crops_per_item} crops, "
        f"{info.world} process(es), device {device}"
    )

    def checkpoint(stop_reason: str | None) -> None:
        if info.main:
            record = _record(state, plan, stop_reason, t_start, scaler if use_scaler else None, sched, resolved)
            save_checkpoint(ckpt_dir, model, opt, record)

    # --- the loop over optimizer steps
    stop_reason = "done"
    batches = _Batches(dataset, cfg, info, device, plan)
    try:
        while state.step < plan.total_steps:
            micro_batches = batches.for_step(state.step)
            epoch, step_in_epoch = divmod(state.step, plan.steps_per_epoch)
            sched.step(epoch + step_in_epoch / plan.steps_per_epoch)
            freeze_encoder_lr(opt, cfg, state.step)
            torch.manual_seed(item_seed(cfg.seed, 1_000_003 + info.rank, state.step) & 0x7FFF_FFFF)
            result = _train_step(ddp, micro_batches, opt, scaler, cfg, info, device)
            state.step += 1
            if result.finite:
                state.nonfinite_run = 0
                log.add(dict(result.terms, lr=opt.param_groups[0]["lr"], **result.timings))
            else:
                state.note_nonfinite(log, result.terms.get("loss"))
                if state.nonfinite_run >= cfg.max_nonfinite:
                    stop_reason = "nonfinite"
                    raise TrainingError(
                        f"{state.nonfinite_run} non-finite losses in a row at step {state.step}; stopped, the last "
                        f"good checkpoint is kept in {ckpt_dir}"
                    )
            if state.step % cfg.log_every == 0 or state.step == plan.total_steps:
                row = log.flush(step=state.step, epoch=state.step / plan.steps_per_epoch,
                                elapsed_s=state.wall_before + time.perf_counter() - t_start,
                                crops_per_step=plan.crops_per_step)
                if row is not None:
                    state.summary.update(last_loss=row["loss"], last_step=state.step)
                    state.summary["best_loss"] = min(state.summary.get("best_loss", math.inf), row["loss"])
            out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t_start) / 60.0 >= cfg.max_minutes
            if all_ranks_any(out_of_time, device, info) and state.step < plan.total_steps:
                stop_reason = "max_minutes"
                log.info(f"wall-time cap of {cfg.max_minutes} min reached at step {state.step}/{plan.total_steps}; stopping")
                break
            if state.step % cfg.checkpoint_every == 0 and state.step < plan.total_steps:
                checkpoint(None)
        checkpoint(stop_reason)
    finally:
        log.close()
        if info.main and log.path.exists():
            with contextlib.suppress(Exception):
                plot_loss_curve(log.path, out_dir / "loss_curve.png")
    if info.main:
        log.info(f"finished: step {state.step}/{plan.total_steps} ({stop_reason}); checkpoint in {ckpt_dir}")
    return out_dir


# ---------------------------------------------------------------------------------------------------
# the named steps of the set-up


def _device_type(cfg: PretrainConfig) -> str:
    return "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"


def _device(cfg: PretrainConfig, info: DistInfo) -> torch.device:
    device = resolve_device(cfg.device, local_rank=info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _start_run_folder(out_dir: Path, cfg: PretrainConfig, resolved: dict[str, Any]) -> None:
    """Create the run folder, print and store the resolved config, warn about a random start."""
    out_dir.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"config": resolved}, indent=2), file=sys.stderr)
    atomic_write_json(out_dir / "config.json", resolved)
    warning = start_weights_warning(cfg)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _dataset(cfg: PretrainConfig, device: torch.device) -> PristineDataset:
    return PristineDataset(
        cfg.data_dirs, exclude=cfg.exclude_dirs, patch_size=cfg.patch_size, n_refs=cfg.n_refs,
        n_comps=cfg.n_comps, n_levels=cfg.n_levels, max_distortions=cfg.max_distortions,
        severity_dist=cfg.severity_dist, seed=cfg.seed, device=device if cfg.synth_on_device else "cpu",
        jpeg2000_impl=cfg.jpeg2000_impl,
    )


@dataclass(frozen=True)
class _Plan:
    """How many items an optimizer step takes, and how many steps the run has."""

    items_per_opt_step: int
    steps_per_epoch: int
    total_steps: int
    crops_per_step: int

    @classmethod
    def of(cls, n_images: int, cfg: PretrainConfig, world: int) -> _Plan:
        items = cfg.items_per_step * world * cfg.grad_accum
        steps_per_epoch = n_images // items
        if steps_per_epoch < 1:
            raise ConfigError(f"{n_images} images are fewer than the {items} items of one optimizer step")
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        return cls(items, steps_per_epoch, total, items * cfg.crops_per_item)


def _model(cfg: PretrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> PretrainModel:
    model = build_model(cfg).to(device)
    model.amp_dtype = amp_dtype
    if cfg.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    return model


def _distributed(model: PretrainModel, cfg: PretrainConfig, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the steps call: the model itself, or its DDP wrapper (embeddings gathered)."""
    if info.world <= 1:
        return model
    model.gather = True
    if device.type == "cuda" and cfg.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )


@dataclass
class _State:
    """What changes from step to step and survives a resume."""

    step: int = 0
    wall_before: float = 0.0
    summary: dict[str, Any] = field(default_factory=lambda: {"nonfinite_total": 0})
    nonfinite_run: int = 0

    @classmethod
    def resumed(cls, record: dict[str, Any] | None) -> _State:
        if record is None:
            return cls()
        return cls(int(record["step"]), float(record.get("wall_s", 0.0)), dict(record.get("summary", {"nonfinite_total": 0})))

    def note_nonfinite(self, log: RunLog, loss: float | None) -> None:
        self.nonfinite_run += 1
        self.summary["nonfinite_total"] = self.summary.get("nonfinite_total", 0) + 1
        log.write({"step": self.step, "event": "nonfinite_loss", "loss": loss, "in_a_row": self.nonfinite_run})
        log.info(f"step {self.step}: non-finite loss ({loss}), step skipped ({self.nonfinite_run} in a row)")


def _record(
    state: _State, plan: _Plan, stop_reason: str | None, t_start: float, scaler: torch.amp.GradScaler | None,
    sched: Any, resolved: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint's commit record."""
    return {
        "step": state.step,
        "epoch": state.step / plan.steps_per_epoch,
        "total_steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "finished": state.step >= plan.total_steps,
        "stop_reason": stop_reason,
        "wall_s": state.wall_before + time.perf_counter() - t_start,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "summary": state.summary,
        "config": resolved,
    }


# ---------------------------------------------------------------------------------------------------
# one optimizer step


class _Batches:
    """The loader of the current epoch, rebuilt at each epoch (and on resume, from the step reached)."""

    def __init__(self, dataset: PristineDataset, cfg: PretrainConfig, info: DistInfo, device: torch.device, plan: _Plan) -> None:
        self.dataset, self.cfg, self.info, self.device, self.plan = dataset, cfg, info, device, plan
        self.epoch: int = -1
        self.loader: Iterator[StructuredBatch] = iter(())

    def for_step(self, step: int) -> Iterator[StructuredBatch]:
        """The iterator the ``grad_accum`` micro-batches of ``step`` come from."""
        epoch, step_in_epoch = divmod(step, self.plan.steps_per_epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.loader = make_loader(
                self.dataset, items_per_step=self.cfg.items_per_step, num_workers=self.cfg.num_workers,
                seed=self.cfg.seed, epoch=epoch, rank=self.info.rank, world_size=self.info.world,
                start_step=step_in_epoch * self.cfg.grad_accum, pin_memory=self.device.type == "cuda",
            )
        return self.loader


@dataclass(frozen=True)
class _StepResult:
    terms: dict[str, float]
    finite: bool
    timings: dict[str, float]


def _train_step(
    ddp: nn.Module, batches: Iterator[StructuredBatch], opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    cfg: PretrainConfig, info: DistInfo, device: torch.device,
) -> _StepResult:
    """Forward and backward over ``grad_accum`` micro-batches, then one SGD step unless a loss was not
    finite (then the gradients are dropped)."""
    opt.zero_grad(set_to_none=True)
    t_data = t_fwd = t_bwd = 0.0
    terms: dict[str, float] = {}
    finite = True
    for micro in range(cfg.grad_accum):
        t0 = time.perf_counter()
        refs, dist_imgs, meta = _to_device(next(batches), device)
        _sync(device)
        t1 = time.perf_counter()
        sync_ctx = ddp.no_sync() if info.world > 1 and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
        with sync_ctx:
            out = ddp(refs, dist_imgs, meta)
            loss = out["loss"]
            _sync(device)
            t2 = time.perf_counter()
            ok = bool(torch.isfinite(loss.detach()).item())
            if ok and finite:
                scaler.scale(loss / cfg.grad_accum).backward()
            elif info.world > 1:  # let DDP finish its reduction; the gradients are discarded below
                (loss.nan_to_num(0.0, 0.0, 0.0) * 0.0).backward()
            _sync(device)
            t3 = time.perf_counter()
        finite = finite and ok
        t_data, t_fwd, t_bwd = t_data + t1 - t0, t_fwd + t2 - t1, t_bwd + t3 - t2
        for k, v in out.items():
            if k != "loss" and isinstance(v, (int, float)):
                terms[k] = terms.get(k, 0.0) + float(v) / cfg.grad_accum
        terms["loss"] = terms.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
    t4 = time.perf_counter()
    if finite:
        scaler.step(opt)
        scaler.update()
    else:
        opt.zero_grad(set_to_none=True)
    t_opt = time.perf_counter() - t4
    timings = {"t_data": t_data, "t_forward": t_fwd, "t_backward": t_bwd + t_opt, "t_step": t_data + t_fwd + t_bwd + t_opt}
    return _StepResult(terms, finite, timings)


def _to_device(batch: StructuredBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    nb = device.type == "cuda"
    refs = batch.refs.to(device, non_blocking=nb)
    dist_imgs = batch.dist.to(device, non_blocking=nb)
    meta = {"indices": batch.indices.to(device), "var_slot": batch.var_slot.to(device)}
    return refs, dist_imgs, meta


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
