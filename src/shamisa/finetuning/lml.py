"""LML-IQA: supervised fine-tuning with a contrastive local-manifold term (arXiv 2406.19247).

The published description leaves most details open; the choices made here are listed in
``docs/methods.md`` and summarised below.

Model
    ``LmlModel`` = encoder (any :mod:`shamisa.models` encoder, ImageNet or self-supervised start) +
    a quality head MLP ``D -> head_hidden -> 1`` on the unnormalised pooled features + a projector MLP
    ``D -> proj_hidden -> proj_dim`` whose L2-normalised output is the space of the contrastive term.

One training step (B images)
    1. For every image, M crops are sampled at two scales (full and half, alternating; see
       :func:`shamisa.finetuning.saliency.sample_crop_boxes`).
    2. The anchor crop of each image is the most salient one: by default the mean spectral-residual
       saliency of the crop (``saliency="spectral"``); alternatives are the EMA teacher's feature norm
       (``"teacher"``) and a random crop (``"random"``, the control).
    3. The student predicts a score for every crop; the regression loss (L1 or MSE) compares each crop's
       prediction with the image's normalised MOS.
    4. The local-manifold loss (:func:`shamisa.objectives.lml.local_manifold_contrastive_loss`) takes the
       student's anchor embedding as query, the EMA teacher's embedding of the horizontally flipped anchor
       crop as positive, the student's embeddings of the image's other crops as intra-class negatives
       (weight ``intra_weight``) and the anchors of the other images of the batch as inter-class negatives.
    5. ``loss = regression + lml_weight * lml``; AdamW step; the teacher follows the student as an
       exponential moving average (``ema_momentum``), so teacher and student learn from each other
       (mutual learning): the student is pulled towards the teacher's view of the salient region and the
       teacher, in ``"teacher"`` mode, decides which region is salient.

Model selection and report
    Validation SRCC after every epoch (and when the time budget ends) picks the best checkpoint; the test
    split is predicted once, with that checkpoint, as the mean over 5 crops (centre + corners) at 2 scales
    (full and half), the same views as the linear-probe protocol.

The time budget ``max_minutes`` bounds training and validation; the learning rate follows a cosine decay
over ``max(step / total_steps, elapsed / budget)`` so that a budget-limited run still anneals.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from shamisa.datasets import load_dataset
from shamisa.device import resolve_device
from shamisa.errors import ConfigError, TrainingError
from shamisa.evaluation.metrics import plcc, srcc
from shamisa.fileio import atomic_write_json
from shamisa.finetuning.data import EvalMode, normalise_scores, sample_training_crops, split_indices
from shamisa.finetuning.model import LmlModel, autocast, ema_update, predict_paths, save_lml_model
from shamisa.images import load_image
from shamisa.models import build_encoder, load_encoder, save_encoder
from shamisa.objectives.lml import local_manifold_contrastive_loss
from shamisa.progress import stderr_console

SaliencyMode = Literal["spectral", "random", "teacher"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of an LML-IQA fine-tuning run (defaults = the CPU-friendly configuration).

    Attributes:
        dataset, root: the human-rated dataset (``shamisa.datasets.load_dataset`` name and folder).
        encoder: encoder name for ``shamisa.models.build_encoder``.
        pretrained: start from the encoder's ImageNet weights (ignored when ``weights`` is given).
        weights: optional safetensors encoder file to start from (for example a SHAMISA encoder).
        split, n_splits, split_seed: which of the ``n_splits`` random 70/10/20 splits to train on.
        epochs: number of passes over the training split (the time budget may stop earlier).
        batch_size: images per step (each contributes ``n_crops`` crops).
        n_crops: crops per image M (>= 2: one anchor and at least one intra-class negative).
        crop: crop side in pixels, for training and evaluation.
        scales: crop scales, assigned round-robin to the M crops.
        saliency: how the anchor is chosen: ``spectral`` | ``teacher`` | ``random``.
        lr, head_lr, weight_decay: AdamW settings (encoder / heads).
        ema_momentum: teacher EMA momentum.
        lml_weight: weight of the local-manifold term (lambda).
        temperature, intra_weight: local-manifold loss settings.
        regression_loss: ``l1`` | ``mse`` on MOS normalised to [0, 1] (higher = better).
        head_hidden, proj_hidden, proj_dim: head and projector sizes.
        eval_mode: ``five_two_scale`` (5 crops x 2 scales, averaged) | ``center`` (one centre crop).
        limit: cap on the number of images taken from each of train / val / test (smoke runs).
        max_minutes: time budget for training + validation (None = no limit).
        max_steps: step budget (None = no limit); with it the cosine schedule runs over
            ``min(max_steps, epochs x steps per epoch)`` steps. A step budget is the fair budget on a
            machine shared with other jobs.
        seed: randomness of crops, batches and initialisation.
        precision: ``fp32`` | ``bf16`` (CPU/GPU autocast for the forward passes).
        device: ``cpu`` | ``cuda`` | ``auto``.
        eval_batch: crops per forward pass at evaluation.
        log_every: steps between progress lines.
        out: output folder (checkpoints, metrics.jsonl, result.json).
    """

    dataset: str = "clive"
    root: str = ""
    encoder: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    split: int = 0
    n_splits: int = 10
    split_seed: int = 27
    epochs: int = 10
    batch_size: int = 8
    n_crops: int = 4
    crop: int = 224
    scales: tuple[float, ...] = (1.0, 0.5)
    saliency: SaliencyMode = "spectral"
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_momentum: float = 0.99
    lml_weight: float = 0.1
    temperature: float = 0.1
    intra_weight: float = 1.0
    regression_loss: Literal["l1", "mse"] = "l1"
    head_hidden: int = 256
    proj_hidden: int = 512
    proj_dim: int = 128
    eval_mode: EvalMode = "five_two_scale"
    limit: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    eval_batch: int = 50
    log_every: int = 10
    out: str = "runs/lml"

    def __post_init__(self) -> None:
        if self.n_crops < 2:
            raise ConfigError(f"n_crops must be >= 2 (one anchor and at least one intra-class negative), got {self.n_crops}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2 (other images are the inter-class negatives), got {self.batch_size}")
        if self.saliency not in ("spectral", "random", "teacher"):
            raise ConfigError(f"saliency must be spectral, random or teacher, got {self.saliency!r}")
        if self.eval_mode not in ("five_two_scale", "center"):
            raise ConfigError(f"eval_mode must be five_two_scale or center, got {self.eval_mode!r}")
        if self.regression_loss not in ("l1", "mse"):
            raise ConfigError(f"regression_loss must be l1 or mse, got {self.regression_loss!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")
        if self.crop < 16:
            raise ConfigError(f"crop must be >= 16 px, got {self.crop}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.limit is not None and self.limit < 2:
            raise ConfigError(f"limit must be >= 2, got {self.limit}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d


@dataclass
class FinetuneResult:
    """What a run produced. Scores are correlations with the normalised (higher = better) MOS."""

    config: dict[str, Any]
    split: int
    n_train: int
    n_val: int
    n_test: int
    best_epoch: float
    best_val_srcc: float
    test_srcc: float
    test_plcc: float
    steps: int
    epochs_done: float
    stopped_by: str
    train_seconds: float
    eval_seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- losses


def cosine_factor(progress: float) -> float:
    """Cosine learning-rate factor for progress in [0, 1] (1 -> 0)."""
    p = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def lml_step_losses(
    model: LmlModel,
    teacher: LmlModel,
    crops: torch.Tensor,
    targets: torch.Tensor,
    saliency: torch.Tensor | None,
    cfg: FinetuneConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Losses of one step.

    Args:
        model: the student (train mode).
        teacher: the EMA teacher (eval mode, no gradients).
        crops: (B, M, 3, c, c) crops.
        targets: (B,) normalised MOS.
        saliency: (B, M) spectral-residual crop scores, required when ``cfg.saliency == "spectral"``.
        cfg: settings (saliency mode, loss weights, precision).
        generator: randomness for the ``random`` mode.

    Returns:
        dict with ``loss``, ``regression``, ``lml`` tensors and ``anchor`` (B,) indices.
    """
    b, m = crops.shape[:2]
    device = crops.device
    flat = crops.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    rows = torch.arange(b, device=device)
    with torch.no_grad():
        if cfg.saliency == "spectral":
            if saliency is None:
                raise ValueError("spectral saliency scores are required")
            anchor = saliency.to(device).argmax(dim=1)
        elif cfg.saliency == "random":
            anchor = torch.randint(0, m, (b,), generator=generator).to(device)
        else:  # teacher: feature norm of the EMA teacher
            with autocast(device, cfg.precision):
                tf = teacher.encoder.features(flat)  # type: ignore[operator]
            anchor = tf.float().norm(dim=-1).view(b, m).argmax(dim=1)
        anchor_crops = crops[rows, anchor].flip(-1).contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.precision):
            _, z_pos, _ = teacher(anchor_crops)
        z_pos = z_pos.float()
    with autocast(device, cfg.precision):
        scores, z, _ = model(flat)
    scores = scores.float().view(b, m)
    z = z.float().view(b, m, -1)
    y = targets.to(device).float()[:, None].expand(b, m)
    reg = F.l1_loss(scores, y) if cfg.regression_loss == "l1" else F.mse_loss(scores, y)
    z_anchor = z[rows, anchor]
    others = torch.ones(b, m, dtype=torch.bool, device=device)
    others[rows, anchor] = False
    z_intra = z[others].view(b, m - 1, -1)
    lml = local_manifold_contrastive_loss(
        z_anchor, z_pos[:, None, :], z_intra, temperature=cfg.temperature, intra_weight=cfg.intra_weight
    )
    return {"loss": reg + cfg.lml_weight * lml, "regression": reg, "lml": lml, "anchor": anchor}


# ------------------------------------------------------------------------------------------- training


def build_model(cfg: FinetuneConfig, encoder_factory: Callable[[], nn.Module] | None = None) -> LmlModel:
    """The student network: encoder (from ``encoder_factory`` when given, else ``shamisa.models``) + heads."""
    if encoder_factory is not None:
        enc = encoder_factory()
    elif cfg.weights:
        enc, _ = load_encoder(cfg.weights)
        enc.train()
    else:
        enc = build_encoder(cfg.encoder, pretrained=cfg.pretrained)
    return LmlModel(enc, cfg.head_hidden, cfg.proj_hidden, cfg.proj_dim)


def finetune(
    cfg: FinetuneConfig,
    *,
    dataset: Any | None = None,
    encoder_factory: Callable[[], nn.Module] | None = None,
    quiet: bool = False,
) -> FinetuneResult:
    """Fine-tune with LML-IQA on one split and report the test correlations.

    Args:
        cfg: the run settings.
        dataset: an already loaded ``IQADataset`` (else ``load_dataset(cfg.dataset, cfg.root)``).
        encoder_factory: builds the encoder instead of ``shamisa.models`` (tests use a tiny network).
        quiet: no progress lines on stderr.

    Returns:
        the :class:`FinetuneResult`, also written to ``<out>/result.json``; the best checkpoint is
        ``<out>/best.safetensors`` and per-step/epoch metrics are appended to ``<out>/metrics.jsonl``.
    """
    t_start = time.perf_counter()
    run = _Run(cfg, dataset if dataset is not None else load_dataset(cfg.dataset, cfg.root), quiet)
    run.log(f"[bold]LML-IQA[/] {cfg.dataset} split {cfg.split}: train {len(run.train_idx)}, val {len(run.val_idx)}, "
            f"test {len(run.test_idx)} images; config {json.dumps(cfg.to_dict())}")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, teacher, opt = _networks(cfg, encoder_factory, device, run)
    state = _train(cfg, run, model, teacher, opt, device, t_start)
    train_seconds = time.perf_counter() - t_start

    best_path = run.out / "best.safetensors"  # test with the best checkpoint
    if best_path.exists():
        model.load_state_dict(load_file(str(best_path), device=str(device)))
    t0 = time.perf_counter()
    pt = run.predict(model, run.test_idx, device)
    test_s, test_p = float(srcc(pt, run.y[run.test_idx])), float(plcc(pt, run.y[run.test_idx]))
    test_seconds = time.perf_counter() - t0
    run.write({"kind": "test", "test_srcc": test_s, "test_plcc": test_p, "best_epoch": state.best_epoch})
    run.log(f"[bold]test[/] (best val epoch {state.best_epoch:.2f}): SRCC {test_s:.4f} PLCC {test_p:.4f}; "
            f"training {train_seconds:.0f}s, stopped by {state.stopped_by}")
    result = FinetuneResult(
        config=cfg.to_dict(), split=cfg.split, n_train=len(run.train_idx), n_val=len(run.val_idx),
        n_test=len(run.test_idx), best_epoch=state.best_epoch, best_val_srcc=state.best_val, test_srcc=test_s,
        test_plcc=test_p, steps=state.step, epochs_done=state.epoch_pos, stopped_by=state.stopped_by,
        train_seconds=round(train_seconds, 2), eval_seconds=round(state.eval_seconds + test_seconds, 2),
        history=state.history,
    )
    atomic_write_json(run.out / "result.json", result.to_dict())
    if hasattr(model.encoder, "backbone"):
        save_encoder(run.out / "encoder.safetensors", model.encoder,
                     {"method": "lml", "dataset": cfg.dataset, "split": cfg.split, "val_srcc": state.best_val})
    return result


class _Run:
    """The data of one run (paths, normalised scores, split indices) and its output folder."""

    def __init__(self, cfg: FinetuneConfig, dataset: Any, quiet: bool) -> None:
        self.cfg = cfg
        self.console = None if quiet else stderr_console()
        self.paths = [str(p) for p in dataset.paths]
        self.y = normalise_scores(np.asarray(dataset.scores), dataset.score_range, dataset.mos_type)
        self.train_idx, self.val_idx, self.test_idx = split_indices(
            dataset, split=cfg.split, n_splits=cfg.n_splits, seed=cfg.split_seed, limit=cfg.limit
        )
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", cfg.to_dict())
        self.metrics_path = self.out / "metrics.jsonl"
        self.metrics_path.write_text("")

    def log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def write(self, rec: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def predict(self, model: LmlModel, idx: np.ndarray, device: torch.device) -> np.ndarray:
        return predict_paths(model, [self.paths[i] for i in idx], crop=self.cfg.crop, mode=self.cfg.eval_mode,
                             batch=self.cfg.eval_batch, device=device, precision=self.cfg.precision)

    def batch(self, idx: np.ndarray, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Training crops (B, M, 3, c, c) on ``device``, their saliency (B, M) or None, targets (B,)."""
        crops, sals = [], []
        spectral = self.cfg.saliency == "spectral"
        for i in idx:
            c, _, s = sample_training_crops(load_image(self.paths[i]), self.cfg.crop, self.cfg.n_crops, self.cfg.scales,
                                            gen, saliency=spectral)
            crops.append(c)
            sals.append(s)
        sal_t = torch.stack(sals) if spectral else None  # type: ignore[arg-type]
        return torch.stack(crops).to(device), sal_t, torch.as_tensor(self.y[idx], dtype=torch.float32)


def _networks(
    cfg: FinetuneConfig, encoder_factory: Callable[[], nn.Module] | None, device: torch.device, run: _Run
) -> tuple[LmlModel, LmlModel, torch.optim.Optimizer]:
    """The student (head bias at the mean training score), its EMA teacher and AdamW (encoder at
    ``lr``, heads at ``head_lr``)."""
    model = build_model(cfg, encoder_factory).to(device).to(memory_format=torch.channels_last)
    with torch.no_grad():  # start the head at the mean training score (faster start under a small budget)
        model.head[-1].bias.fill_(float(np.mean(run.y[run.train_idx])))
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    head_params = list(model.head.parameters()) + list(model.projector.parameters())
    opt = torch.optim.AdamW(
        [{"params": list(model.encoder.parameters()), "lr": cfg.lr, "base_lr": cfg.lr},
         {"params": head_params, "lr": cfg.head_lr, "base_lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    return model, teacher, opt


@dataclass
class _TrainState:
    step: int = 0
    epoch_pos: float = 0.0
    best_val: float = -math.inf
    best_epoch: float = 0.0
    stopped_by: str = "epochs"
    eval_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _train(
    cfg: FinetuneConfig, run: _Run, model: LmlModel, teacher: LmlModel, opt: torch.optim.Optimizer,
    device: torch.device, t_start: float,
) -> _TrainState:
    """Epochs of steps until the epochs, the step budget or the time budget end; validation after
    every epoch (and at the stop) keeps the best checkpoint."""
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(run.train_idx) // min(cfg.batch_size, len(run.train_idx)))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes is not None else None
    st = _TrainState()
    model.train()
    for epoch in range(cfg.epochs):
        order = run.train_idx[torch.randperm(len(run.train_idx), generator=gen).numpy()]
        bs = min(cfg.batch_size, len(order))
        done = False
        for start in range(0, len(order) - bs + 1, bs):
            crops, sal, targets = run.batch(order[start : start + bs], gen, device)
            progress = st.step / total_steps
            if budget_s is not None:
                progress = max(progress, (time.perf_counter() - t_start) / budget_s)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * cosine_factor(progress)
            losses = lml_step_losses(model, teacher, crops, targets, sal, cfg, gen)
            if not torch.isfinite(losses["loss"]):
                raise TrainingError(f"non-finite loss at step {st.step}")
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            ema_update(teacher, model, cfg.ema_momentum)
            st.step += 1
            st.epoch_pos = epoch + (start + bs) / len(order)
            if st.step % cfg.log_every == 0 or st.step == 1:
                _log_step(run, st, losses, opt.param_groups[0]["lr"], t_start)
            if budget_s is not None and time.perf_counter() - t_start >= budget_s:
                st.stopped_by, done = "time", True
                break
            if cfg.max_steps is not None and st.step >= cfg.max_steps:
                st.stopped_by, done = "steps", True
                break
        _validate(run, model, st, st.epoch_pos if done else float(epoch + 1), device, t_start)
        if done:
            break
    return st


def _log_step(run: _Run, st: _TrainState, losses: dict[str, torch.Tensor], lr: float, t_start: float) -> None:
    rec = {"kind": "train", "step": st.step, "epoch": round(st.epoch_pos, 4),
           "loss": float(losses["loss"].detach()), "regression": float(losses["regression"].detach()),
           "lml": float(losses["lml"].detach()), "lr": lr, "elapsed_s": round(time.perf_counter() - t_start, 2)}
    run.write(rec)
    run.log(f"step {st.step} epoch {st.epoch_pos:.2f} loss {rec['loss']:.4f} (reg {rec['regression']:.4f}, "
            f"lml {rec['lml']:.4f}) lr {rec['lr']:.2e} {rec['elapsed_s']:.0f}s")


def _validate(run: _Run, model: LmlModel, st: _TrainState, epoch_pos: float, device: torch.device, t_start: float) -> None:
    """Validation SRCC / PLCC; a better SRCC than before saves ``best.safetensors``."""
    t0 = time.perf_counter()
    pv = run.predict(model, run.val_idx, device)
    s, pl = srcc(pv, run.y[run.val_idx]), plcc(pv, run.y[run.val_idx])
    s = float(s) if np.isfinite(s) else -1.0
    st.eval_seconds += time.perf_counter() - t0
    rec = {"kind": "val", "epoch": round(epoch_pos, 4), "step": st.step, "val_srcc": s, "val_plcc": float(pl),
           "elapsed_s": round(time.perf_counter() - t_start, 2)}
    st.history.append(rec)
    run.write(rec)
    improved = s > st.best_val
    if improved:
        st.best_val, st.best_epoch = s, epoch_pos
        save_lml_model(model, run.out / "best.safetensors",
                       {"config": run.cfg.to_dict(), "epoch": epoch_pos, "val_srcc": s, "split": run.cfg.split})
    run.log(f"val epoch {epoch_pos:.2f}: SRCC {s:.4f} PLCC {float(pl):.4f}{' (best)' if improved else ''}")


def with_overrides(cfg: FinetuneConfig, **overrides: Any) -> FinetuneConfig:
    """A copy of ``cfg`` with the given fields replaced (``None`` values are ignored)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "build_model",
    "cosine_factor",
    "finetune",
    "lml_step_losses",
    "with_overrides",
]
