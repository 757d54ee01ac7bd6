"""LML-IQA: supervised fine-tuning with a contrastive local-manifold term (arXiv 2406.19247).

The published description leaves most details open; the choices made here are listed in
``docs/methods.md`` and summarised below.

Model
    ``LmlModel`` = encoder (any :mod:`shamisa.models` encoder, ImageNet or self-supervised start) +
    a quality head MLP ``D -> head_hidden -> 1`` on the unnormalised pooled features + a projector MLP
    ``D -> proj_hidden -> proj_dim`` whose L2-normalised output is the space of the contrastive term.

One training step (B images)
    1. For every image, M crops are sampled at two scales (full and half, alternating; see
       :func:`shamisa.saliency.sample_crop_boxes`).
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shamisa.errors import ConfigError, DatasetError
from shamisa.fileio import atomic_path, atomic_write_json
from shamisa.images import center_corners_crops, ensure_min_side, load_image, two_scale_crops
from shamisa.saliency import box_means, extract_crops, sample_crop_boxes, spectral_residual_saliency

SaliencyMode = Literal["spectral", "random", "teacher"]
EvalMode = Literal["five_two_scale", "center"]
FORMAT_NAME = "shamisa-lml-model"
FORMAT_VERSION = "1"


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


# ----------------------------------------------------------------------------------------------- model


class LmlModel(nn.Module):
    """Encoder + quality head + contrastive projector.

    Args:
        encoder: an encoder with ``feature_dim`` and ``features(x) -> (N, D)``.
        head_hidden, proj_hidden, proj_dim: MLP sizes.
    """

    def __init__(self, encoder: nn.Module, head_hidden: int = 256, proj_hidden: int = 512, proj_dim: int = 128) -> None:
        super().__init__()
        dim = int(encoder.feature_dim)  # type: ignore[arg-type]
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(dim, head_hidden), nn.ReLU(inplace=True), nn.Linear(head_hidden, 1))
        self.projector = nn.Sequential(
            nn.Linear(dim, proj_hidden), nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) in [0, 1] -> (scores (N,), z (N, E) L2-normalised, features (N, D))."""
        f = self.encoder.features(x)  # type: ignore[operator]
        score = self.head(f).squeeze(-1)
        z = F.normalize(self.projector(f).float(), dim=-1)
        return score, z, f

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of crops; no gradient."""
        return self.forward(x)[0]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student (parameters); buffers are copied."""
    for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
        pt.mul_(momentum).add_(ps.detach(), alpha=1.0 - momentum)
    for bt, bs in zip(teacher.buffers(), student.buffers(), strict=True):
        bt.copy_(bs)


def cosine_factor(progress: float) -> float:
    """Cosine learning-rate factor for progress in [0, 1] (1 -> 0)."""
    p = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


# ------------------------------------------------------------------------------------------ data helpers


def normalise_scores(scores: np.ndarray, score_range: Sequence[float], mos_type: str) -> np.ndarray:
    """Map raw scores to [0, 1] with higher = better (DMOS is flipped)."""
    lo, hi = float(score_range[0]), float(score_range[1])
    if hi <= lo:
        raise DatasetError(f"invalid score range {tuple(score_range)}")
    y = (np.asarray(scores, dtype=np.float64) - lo) / (hi - lo)
    return 1.0 - y if str(mos_type).lower() == "dmos" else y


def sample_training_crops(
    image: torch.Tensor, crop: int, n_crops: int, scales: Sequence[float], generator: torch.Generator, *, saliency: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Crops of one training image and their spectral-residual saliency.

    Returns:
        ``(crops (M, 3, crop, crop), boxes (M, 4), saliency (M,) or None)``.
    """
    x = ensure_min_side(image, crop)
    boxes = sample_crop_boxes(x.shape[-2], x.shape[-1], crop, n_crops, scales, generator=generator)
    crops = extract_crops(x, boxes, crop)
    sal = box_means(spectral_residual_saliency(x), boxes) if saliency else None
    return crops, boxes, sal


def eval_views(image: torch.Tensor, crop: int, mode: EvalMode) -> torch.Tensor:
    """The crops an image is scored on: (10, 3, crop, crop) for five_two_scale, (1, ...) for center."""
    if mode == "center":
        return center_corners_crops(ensure_min_side(image, crop), crop)[:1]
    full, half = two_scale_crops(image, crop)
    return torch.cat([full, half])


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def predict_paths(
    model: LmlModel,
    paths: Sequence[str],
    *,
    crop: int,
    mode: EvalMode = "five_two_scale",
    batch: int = 50,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> np.ndarray:
    """Predicted quality of each image = mean over its evaluation crops; (N,) float64."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[float] = []
    pending: list[torch.Tensor] = []
    counts: list[int] = []

    def flush() -> None:
        if not pending:
            return
        x = torch.cat(pending).to(device).contiguous(memory_format=torch.channels_last)
        with _autocast(device, precision):
            s = model.predict(x).float().cpu()
        i = 0
        for c in counts:
            preds.append(float(s[i : i + c].mean()))
            i += c
        pending.clear()
        counts.clear()

    for p in paths:
        v = eval_views(load_image(p), crop, mode)
        pending.append(v)
        counts.append(v.shape[0])
        if sum(counts) >= batch:
            flush()
    flush()
    model.train(was_training)
    return np.asarray(preds, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- losses


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
    from shamisa.objectives.lml import local_manifold_contrastive_loss

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
            with _autocast(device, cfg.precision):
                tf = teacher.encoder.features(flat)  # type: ignore[operator]
            anchor = tf.float().norm(dim=-1).view(b, m).argmax(dim=1)
        anchor_crops = crops[rows, anchor].flip(-1).contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.precision):
            _, z_pos, _ = teacher(anchor_crops)
        z_pos = z_pos.float()
    with _autocast(device, cfg.precision):
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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but CUDA is not available")
    return torch.device(name)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _save_checkpoint(model: LmlModel, path: Path, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_lml_model(path: str | Path, *, device: str = "cpu") -> tuple[LmlModel, dict[str, Any]]:
    """Rebuild an :class:`LmlModel` from a checkpoint written by :func:`finetune`.

    Returns:
        ``(model in eval mode, metadata with the config decoded)``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from shamisa.errors import ModelFileError
    from shamisa.models import build_encoder

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(p), device=device)
    except Exception as e:  # safetensors raises several types for corrupt files
        raise ModelFileError(f"{p}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{p}: not an LML-IQA model file (format {meta.get('format')!r})")
    cfg = json.loads(meta["config"])
    enc = build_encoder(cfg["encoder"], pretrained=False)
    model = LmlModel(enc, cfg["head_hidden"], cfg["proj_hidden"], cfg["proj_dim"])
    model.load_state_dict(tensors)
    meta["config"] = cfg
    return model.eval(), meta


def build_model(cfg: FinetuneConfig, encoder_factory: Callable[[], nn.Module] | None = None) -> LmlModel:
    """The student network: encoder (from ``encoder_factory`` when given, else ``shamisa.models``) + heads."""
    if encoder_factory is not None:
        enc = encoder_factory()
    else:
        from shamisa.models import build_encoder, load_encoder

        if cfg.weights:
            enc, _ = load_encoder(cfg.weights)
            enc.train()
        else:
            enc = build_encoder(cfg.encoder, pretrained=cfg.pretrained)
    return LmlModel(enc, cfg.head_hidden, cfg.proj_hidden, cfg.proj_dim)


def _split_indices(cfg: FinetuneConfig, ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from shamisa.datasets.splits import make_splits

    splits = make_splits(ds, n_splits=cfg.n_splits, seed=cfg.split_seed)
    n = len(splits.train)
    if not 0 <= cfg.split < n:
        raise ConfigError(f"split {cfg.split} out of range: the dataset has {n} splits")
    parts = [np.asarray(s[cfg.split], dtype=np.int64) for s in (splits.train, splits.val, splits.test)]
    parts = [p[p >= 0] for p in parts]
    if cfg.limit is not None:
        parts = [p[: cfg.limit] for p in parts]
    train, val, test = parts
    if len(train) < 2 or len(val) < 2 or len(test) < 2:
        raise DatasetError(
            f"split {cfg.split} has too few images (train {len(train)}, val {len(val)}, test {len(test)}; need >= 2 each)"
        )
    return train, val, test


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
    from shamisa.metrics import plcc, srcc

    t_start = time.perf_counter()
    console = None if quiet else _stderr_console()

    def log(msg: str) -> None:
        if console is not None:
            console.print(msg)

    if dataset is None:
        from shamisa.datasets import load_dataset

        dataset = load_dataset(cfg.dataset, cfg.root)
    paths = [str(p) for p in dataset.paths]
    y_all = normalise_scores(np.asarray(dataset.scores), dataset.score_range, dataset.mos_type)
    train_idx, val_idx, test_idx = _split_indices(cfg, dataset)

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    log(f"[bold]LML-IQA[/] {cfg.dataset} split {cfg.split}: train {len(train_idx)}, val {len(val_idx)}, "
        f"test {len(test_idx)} images; config {json.dumps(cfg.to_dict())}")

    def write_metrics(rec: dict[str, Any]) -> None:
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    torch.manual_seed(cfg.seed)
    device = _resolve_device(cfg.device)
    model = build_model(cfg, encoder_factory).to(device).to(memory_format=torch.channels_last)
    with torch.no_grad():  # start the head at the mean training score (faster start under a small budget)
        model.head[-1].bias.fill_(float(np.mean(y_all[train_idx])))
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    enc_params = list(model.encoder.parameters())
    head_params = list(model.head.parameters()) + list(model.projector.parameters())
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": cfg.lr, "base_lr": cfg.lr},
         {"params": head_params, "lr": cfg.head_lr, "base_lr": cfg.head_lr}],
        weight_decay=cfg.weight_decay,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(train_idx) // min(cfg.batch_size, len(train_idx)))
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes is not None else None

    best_val = -math.inf
    best_epoch = 0.0
    history: list[dict[str, Any]] = []
    step = 0
    stopped_by = "epochs"
    eval_seconds = 0.0

    def validate(epoch_pos: float) -> None:
        nonlocal best_val, best_epoch, eval_seconds
        t0 = time.perf_counter()
        pv = predict_paths(model, [paths[i] for i in val_idx], crop=cfg.crop, mode=cfg.eval_mode,
                           batch=cfg.eval_batch, device=device, precision=cfg.precision)
        s, pl = srcc(pv, y_all[val_idx]), plcc(pv, y_all[val_idx])
        s = float(s) if np.isfinite(s) else -1.0
        eval_seconds += time.perf_counter() - t0
        rec = {"kind": "val", "epoch": round(epoch_pos, 4), "step": step, "val_srcc": s, "val_plcc": float(pl),
               "elapsed_s": round(time.perf_counter() - t_start, 2)}
        history.append(rec)
        write_metrics(rec)
        improved = s > best_val
        if improved:
            best_val, best_epoch = s, epoch_pos
            _save_checkpoint(model, out / "best.safetensors",
                             {"config": cfg.to_dict(), "epoch": epoch_pos, "val_srcc": s, "split": cfg.split})
        log(f"val epoch {epoch_pos:.2f}: SRCC {s:.4f} PLCC {float(pl):.4f}{' (best)' if improved else ''}")

    model.train()
    done = False
    epoch_pos = 0.0
    for epoch in range(cfg.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        bs = min(cfg.batch_size, len(order))
        for start in range(0, len(order) - bs + 1, bs):
            batch_idx = order[start : start + bs]
            crops, sals = [], []
            for i in batch_idx:
                c, _, s_ = sample_training_crops(load_image(paths[i]), cfg.crop, cfg.n_crops, cfg.scales, gen,
                                                 saliency=cfg.saliency == "spectral")
                crops.append(c)
                sals.append(s_)
            crops_t = torch.stack(crops).to(device)
            sal_t = torch.stack(sals) if cfg.saliency == "spectral" else None  # type: ignore[arg-type]
            targets = torch.as_tensor(y_all[batch_idx], dtype=torch.float32)
            elapsed = time.perf_counter() - t_start
            progress = step / total_steps
            if budget_s is not None:
                progress = max(progress, elapsed / budget_s)
            factor = cosine_factor(progress)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor
            losses = lml_step_losses(model, teacher, crops_t, targets, sal_t, cfg, gen)
            if not torch.isfinite(losses["loss"]):
                from shamisa.errors import TrainingError

                raise TrainingError(f"non-finite loss at step {step}")
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            ema_update(teacher, model, cfg.ema_momentum)
            step += 1
            epoch_pos = epoch + (start + bs) / len(order)
            if step % cfg.log_every == 0 or step == 1:
                rec = {"kind": "train", "step": step, "epoch": round(epoch_pos, 4),
                       "loss": float(losses["loss"].detach()), "regression": float(losses["regression"].detach()),
                       "lml": float(losses["lml"].detach()), "lr": opt.param_groups[0]["lr"],
                       "elapsed_s": round(time.perf_counter() - t_start, 2)}
                write_metrics(rec)
                log(f"step {step} epoch {epoch_pos:.2f} loss {rec['loss']:.4f} (reg {rec['regression']:.4f}, "
                    f"lml {rec['lml']:.4f}) lr {rec['lr']:.2e} {rec['elapsed_s']:.0f}s")
            if budget_s is not None and time.perf_counter() - t_start >= budget_s:
                stopped_by = "time"
                done = True
                break
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped_by = "steps"
                done = True
                break
        validate(epoch_pos if done else float(epoch + 1))
        if done:
            break
    train_seconds = time.perf_counter() - t_start

    # test with the best checkpoint
    from safetensors.torch import load_file

    best_path = out / "best.safetensors"
    if best_path.exists():
        model.load_state_dict(load_file(str(best_path), device=str(device)))
    t0 = time.perf_counter()
    pt = predict_paths(model, [paths[i] for i in test_idx], crop=cfg.crop, mode=cfg.eval_mode,
                       batch=cfg.eval_batch, device=device, precision=cfg.precision)
    test_s, test_p = float(srcc(pt, y_all[test_idx])), float(plcc(pt, y_all[test_idx]))
    test_seconds = time.perf_counter() - t0
    rec = {"kind": "test", "test_srcc": test_s, "test_plcc": test_p, "best_epoch": best_epoch}
    write_metrics(rec)
    log(f"[bold]test[/] (best val epoch {best_epoch:.2f}): SRCC {test_s:.4f} PLCC {test_p:.4f}; "
        f"training {train_seconds:.0f}s, stopped by {stopped_by}")
    result = FinetuneResult(
        config=cfg.to_dict(), split=cfg.split, n_train=len(train_idx), n_val=len(val_idx), n_test=len(test_idx),
        best_epoch=best_epoch, best_val_srcc=best_val, test_srcc=test_s, test_plcc=test_p, steps=step,
        epochs_done=epoch_pos, stopped_by=stopped_by, train_seconds=round(train_seconds, 2),
        eval_seconds=round(eval_seconds + test_seconds, 2), history=history,
    )
    atomic_write_json(out / "result.json", result.to_dict())
    if hasattr(model.encoder, "backbone"):
        from shamisa.models import save_encoder

        save_encoder(out / "encoder.safetensors", model.encoder,  # type: ignore[arg-type]
                     {"method": "lml", "dataset": cfg.dataset, "split": cfg.split, "val_srcc": best_val})
    return result


def with_overrides(cfg: FinetuneConfig, **overrides: Any) -> FinetuneConfig:
    """A copy of ``cfg`` with the given fields replaced (``None`` values are ignored)."""
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "LmlModel",
    "build_model",
    "cosine_factor",
    "ema_update",
    "eval_views",
    "finetune",
    "lml_step_losses",
    "load_lml_model",
    "normalise_scores",
    "predict_paths",
    "sample_training_crops",
    "with_overrides",
]
