"""SHAMISA pretraining: one readable loop, top to bottom.

``pretrain(cfg)`` builds encoder f + projector g + objective, then for every optimizer step:

1. sets the learning rate (``CosineAnnealingWarmRestarts`` stepped with the fractional epoch);
2. for each of ``grad_accum`` micro-steps: fetches ``items_per_step`` structured items, runs
   ``h = f(x)``, ``z = g(h)`` on all crops (under autocast when AMP is on), gathers the embeddings of
   every process (DDP), evaluates the loss and back-propagates;
3. steps SGD (over encoder, projector and prototype parameters; the frozen weighting MLP has
   ``requires_grad=False``), logs, checkpoints.

Run folder (``cfg.out_dir``)::

    config.json                 resolved config
    metrics.jsonl               one JSON object per log window (loss terms, branch weights, lr, timings)
    loss_curve.png              written at the end
    ckpt/last.json              commit record: step, epoch, optimizer hyper-parameters, RNG states, config
    ckpt/last.safetensors       all model weights (encoder.*, projector.*, objective.*)
    ckpt/last-optim.safetensors SGD momentum buffers

Starting the same command again with the same ``out_dir`` resumes from ``ckpt/last.json``.

Distributed: launched by ``torchrun`` (``WORLD_SIZE > 1``), every process builds its share of the
items; embeddings are all-gathered with gradient (:class:`_GatherWithGrad`) so each process evaluates
the loss of the whole global batch, exactly as one process would (the SHAMISA objective couples all
items through its graphs and the variance/covariance terms, so per-process losses would differ).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import pickle
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from shamisa.configs import PretrainConfig, config_to_dict
from shamisa.errors import ConfigError, TrainingError
from shamisa.fileio import atomic_path, atomic_write_json, atomic_write_text

__all__ = ["CHECKPOINT_FORMAT", "LOSS_BUILDERS", "PretrainModel", "pretrain", "read_checkpoint", "register_loss"]

CHECKPOINT_FORMAT = "shamisa-pretrain-checkpoint"
CHECKPOINT_VERSION = 1
# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_KEYS = frozenset(
    {"threads", "out_dir", "max_minutes", "max_steps", "num_workers", "log_every", "checkpoint_every", "device", "synth_on_device"}
)


# ---------------------------------------------------------------------------------------------------
# the loss hook: method name -> builder of an nn.Module loss

LossBuilder = Callable[[PretrainConfig, int, int], nn.Module]
"""``builder(cfg, rep_dim, emb_dim) -> loss module``. The module's ``forward(z_ref, z_dist, h_ref,
h_dist, meta)`` gets ``z_ref (N_ref, E)``, ``z_dist (N_dist, E)`` flattened row-major over
``(item, view, composition, level)``, the matching ``h``, and ``meta = {"indices": (B,F,L,S),
"var_slot": (B,F), "n_views": 2R}``; it returns a dict with a scalar ``"loss"`` tensor and any number
of float terms (all logged). Parameters with ``requires_grad`` join the optimizer."""

LOSS_BUILDERS: dict[str, LossBuilder] = {}


def register_loss(method: str, builder: LossBuilder) -> None:
    """Make ``cfg.method == method`` train with the loss module ``builder`` returns."""
    LOSS_BUILDERS[method] = builder


def _build_shamisa_loss(cfg: PretrainConfig, rep_dim: int, emb_dim: int) -> nn.Module:
    from shamisa.objectives import ShamisaObjective

    return ShamisaObjective(cfg.loss, rep_dim=rep_dim, emb_dim=emb_dim)


def _build_arniqa_loss(cfg: PretrainConfig, rep_dim: int, emb_dim: int) -> nn.Module:
    from shamisa.arniqa_objective import build_arniqa_loss

    return build_arniqa_loss(cfg, rep_dim, emb_dim)


register_loss("shamisa", _build_shamisa_loss)
register_loss("arniqa", _build_arniqa_loss)


def build_loss(cfg: PretrainConfig, rep_dim: int, emb_dim: int) -> nn.Module:
    if cfg.method not in LOSS_BUILDERS:
        raise ConfigError(
            f"method {cfg.method!r} has no loss registered (available: {', '.join(sorted(LOSS_BUILDERS))})"
        )
    return LOSS_BUILDERS[cfg.method](cfg, rep_dim, emb_dim)


# ---------------------------------------------------------------------------------------------------
# distributed helpers


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows of every process; backward sums the gradients of all processes' (identical)
    losses and returns this process's slice, so that DDP's gradient averaging yields exactly the
    gradient of the single-process loss on the whole batch."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def _gather_split(x: torch.Tensor, n_first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``x = [first (n_first rows); rest]`` of every rank -> ``(cat firsts, cat rests)`` in rank order."""
    parts = _GatherWithGrad.apply(x)
    return torch.cat([p[:n_first] for p in parts]), torch.cat([p[n_first:] for p in parts])


def _gather_plain(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------------
# the model


class PretrainModel(nn.Module):
    """Encoder + projector + loss. ``forward(batch)`` returns the loss dict of the (gathered) batch.

    Args:
        encoder: ``shamisa.models.Encoder`` (``forward`` gives L2-normalised h).
        projector: maps h (D) to z (E).
        loss: a loss module (see :data:`LossBuilder`).
        amp_dtype: autocast dtype for encoder + projector, or None.
        channels_last: feed the encoder channels-last tensors.
        gather: all-gather embeddings across processes before the loss (DDP).
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        loss: nn.Module,
        *,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        gather: bool = False,
    ) -> None:
        super().__init__()
        self.encoder, self.projector, self.loss = encoder, projector, loss
        self.amp_dtype, self.channels_last, self.gather = amp_dtype, channels_last, gather

    def forward(self, refs: torch.Tensor, dist_imgs: torch.Tensor, meta: Mapping[str, Any]) -> dict[str, Any]:
        """refs (B,2R,3,P,P), dist_imgs (B,2R,F,L,3,P,P), meta {"indices" (B,F,L,S), "var_slot" (B,F)}."""
        n_views = refs.shape[1]
        x = torch.cat([refs.flatten(0, 1), dist_imgs.flatten(0, 3)])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n_ref = refs.shape[0] * n_views
        device_type = x.device.type
        with torch.autocast(device_type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            h = self.encoder(x)
            z = self.projector(h)
        h, z = h.float(), z.float()
        meta = dict(meta)
        if self.gather:
            h_ref, h_dist = _gather_split(h, n_ref)
            z_ref, z_dist = _gather_split(z, n_ref)
            meta = {k: _gather_plain(v) if torch.is_tensor(v) else v for k, v in meta.items()}
        else:
            h_ref, h_dist, z_ref, z_dist = h[:n_ref], h[n_ref:], z[:n_ref], z[n_ref:]
        meta["n_views"] = n_views
        return self.loss(z_ref, z_dist, h_ref, h_dist, meta)


def build_model(cfg: PretrainConfig) -> PretrainModel:
    """Encoder (ImageNet / weights file / random), projector with the default dims, loss module."""
    from shamisa.models import Projector, build_encoder, default_projector_dims
    from shamisa.models.encoder import freeze_stages

    encoder = build_encoder(cfg.encoder, pretrained=cfg.pretrained, weights=cfg.weights)
    freeze_stages(encoder, cfg.encoder_frozen_stages)
    hidden, out = default_projector_dims(encoder.feature_dim)
    scale = math.sqrt(encoder.feature_dim) if cfg.projector_input == "sqrt_dim" else 1.0
    projector = Projector(encoder.feature_dim, hidden, out, input_scale=scale)
    loss = build_loss(cfg, encoder.feature_dim, out)
    return PretrainModel(encoder, projector, loss, channels_last=cfg.channels_last)


def param_groups(model: PretrainModel, cfg: PretrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters as SGD groups: one group at ``lr``, or, with ``encoder_lr_scale != 1`` or
    ``encoder_freeze_steps > 0``, the projector/prototypes at ``lr`` (first group, the one logged) and the
    encoder at ``lr * encoder_lr_scale`` (second group; see :func:`freeze_encoder_lr`)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if cfg.encoder_lr_scale == 1.0 and cfg.encoder_freeze_steps == 0:
        return [{"params": trainable}]
    encoder_ids = {id(p) for p in model.encoder.parameters()}
    head = [p for p in trainable if id(p) not in encoder_ids]
    enc = [p for p in trainable if id(p) in encoder_ids]
    return [{"params": head}, {"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale}]


def freeze_encoder_lr(opt: torch.optim.Optimizer, cfg: PretrainConfig, step: int) -> None:
    """Linear-probe-then-fine-tune warm-up: while ``step < encoder_freeze_steps`` (0-based, after the
    scheduler has set this step's rates) the encoder group's lr is 0, so only the projector and the
    prototypes move and the encoder starts adapting under a trained projector rather than a random one.
    SGD's momentum buffers still see the encoder's gradients, as they would with a tiny lr."""
    if step < cfg.encoder_freeze_steps and len(opt.param_groups) > 1:
        opt.param_groups[1]["lr"] = 0.0


def set_train_mode(model: nn.Module, bn_mode: str) -> None:
    """Training mode; with ``bn_mode == "frozen"`` batch-norm layers use their running statistics."""
    model.train()
    from shamisa.models.encoder import keep_frozen_stages_eval

    for module in model.modules():
        keep_frozen_stages_eval(module)
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


# ---------------------------------------------------------------------------------------------------
# seeding and RNG state


def _mix_seed(*parts: int) -> int:
    from shamisa.pretrain_data import item_seed

    return item_seed(parts[0], parts[1], parts[2]) & 0x7FFF_FFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Torch CPU/CUDA, numpy and python RNG states as JSON-safe values (base64 for byte blobs)."""
    b64 = lambda t: base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")  # noqa: E731
    state: dict[str, Any] = {
        "torch_cpu": b64(torch.get_rng_state()),
        "numpy": base64.b64encode(pickle.dumps(np.random.get_state(), protocol=4)).decode("ascii"),
        "python": base64.b64encode(pickle.dumps(random.getstate(), protocol=4)).decode("ascii"),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = [b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` output (the pickles are our own numpy/python state tuples)."""
    unb64 = lambda s: torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy())  # noqa: E731
    torch.set_rng_state(unb64(state["torch_cpu"]))
    np.random.set_state(_restricted_unpickle(base64.b64decode(state["numpy"])))
    random.setstate(_restricted_unpickle(base64.b64decode(state["python"])))
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([unb64(s) for s in state["torch_cuda"]])


class _SafeUnpickler(pickle.Unpickler):
    """Only plain containers and numpy arrays: RNG states, nothing executable."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _restricted_unpickle(data: bytes) -> Any:
    import io

    return _SafeUnpickler(io.BytesIO(data)).load()


# ---------------------------------------------------------------------------------------------------
# checkpoints


def _state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors for safetensors, JSON-safe rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for idx, vals in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(ckpt_dir: Path, model: PretrainModel, opt: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    """Write step-named weight files, commit them by atomically replacing ``last.json``, then refresh
    the ``last.safetensors`` / ``last-optim.safetensors`` aliases and drop older step files.

    A crash at any point leaves ``last.json`` naming a complete, consistent pair of files.
    """
    from safetensors.torch import save_file

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tag = f"step-{record['step']:08d}"
    weights = _state_tensors(model)
    optim_t, optim_info = _optimizer_split(opt)
    meta = {"format": CHECKPOINT_FORMAT, "step": str(record["step"])}
    with atomic_path(ckpt_dir / f"{tag}.safetensors") as tmp:
        save_file(weights, str(tmp), metadata=meta)
    with atomic_path(ckpt_dir / f"{tag}-optim.safetensors") as tmp:
        save_file(optim_t, str(tmp), metadata=meta)
    record = dict(record, format=CHECKPOINT_FORMAT, format_version=CHECKPOINT_VERSION, optimizer=optim_info)
    record["files"] = {"weights": f"{tag}.safetensors", "optimizer": f"{tag}-optim.safetensors"}
    atomic_write_json(ckpt_dir / "last.json", record)  # commit point
    for src, alias in ((f"{tag}.safetensors", "last.safetensors"), (f"{tag}-optim.safetensors", "last-optim.safetensors")):
        _link_or_copy(ckpt_dir / src, ckpt_dir / alias)
    for old in ckpt_dir.glob("step-*.safetensors"):
        if not old.name.startswith(tag):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def _link_or_copy(src: Path, dest: Path) -> None:
    import shutil

    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path, Path]:
    """Locate a checkpoint from a run folder, its ``ckpt`` folder, ``last.json`` or a weights file.

    Returns:
        ``(record, weights_path, optimizer_path)``.

    Raises:
        TrainingError: no checkpoint there, or an unreadable / inconsistent one.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "ckpt" / "last.json" if (p / "ckpt" / "last.json").exists() else p / "last.json"
    elif p.suffix == ".safetensors":
        p = p.parent / "last.json"
    if not p.exists():
        raise TrainingError(f"{path}: no pretraining checkpoint found (expected ckpt/last.json)")
    try:
        record = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TrainingError(f"{p}: unreadable checkpoint record ({e})") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{p}: not a shamisa pretraining checkpoint")
    weights, optim = p.parent / record["files"]["weights"], p.parent / record["files"]["optimizer"]
    for f in (weights, optim):
        if not f.exists():
            raise TrainingError(f"{p}: checkpoint file {f.name} is missing")
    return record, weights, optim


# ---------------------------------------------------------------------------------------------------
# logging


class RunLog:
    """JSONL metrics + stderr lines (+ a rich progress bar on a terminal); rank 0 only."""

    def __init__(self, out_dir: Path, enabled: bool, total_steps: int, start_step: int) -> None:
        from rich.console import Console

        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.console = Console(stderr=True)
        self.progress = None
        if enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"), console=self.console, transient=True,
            )
            self.task = self.progress.add_task("steps", total=total_steps, completed=start_step, info="")
            self.progress.start()

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False, soft_wrap=True)

    def advance(self, step: int, info: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def plot_loss_curve(metrics_path: Path, png_path: Path) -> None:
    """Loss (and lr) against step from ``metrics.jsonl`` -> PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.set_title("pretraining loss (mean per log window)")
    ax2 = ax.twinx()
    ax2.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    ax2.set_ylabel("learning rate")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="best")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# data


def _batch_parts(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    nb = device.type == "cuda"
    refs = batch.refs.to(device, non_blocking=nb)
    dist_imgs = batch.dist.to(device, non_blocking=nb)
    meta = {"indices": batch.indices.to(device), "var_slot": batch.var_slot.to(device)}
    return refs, dist_imgs, meta


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Any, cfg: PretrainConfig, info: DistInfo, epoch: int, start_micro: int, pin: bool) -> Iterator[Any]:
    from shamisa.distortions import builder
    from shamisa.pretrain_data import ItemSampler

    sampler = ItemSampler(
        len(dataset), items_per_rank=cfg.items_per_step, seed=cfg.seed, epoch=epoch,
        rank=info.rank, world_size=info.world, start_step=start_micro,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.items_per_step, sampler=sampler, collate_fn=builder.collate_structured,
        num_workers=cfg.num_workers, worker_init_fn=_worker_init if cfg.num_workers else None,
        pin_memory=pin, drop_last=True, prefetch_factor=2 if cfg.num_workers else None,
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------------
# the loop


def resolve_device(cfg: PretrainConfig, info: DistInfo) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device is cuda but no CUDA device is available")
        if dev.index is None:
            dev = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(dev)
    return dev


def resolve_amp(cfg: PretrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler)."""
    mode = cfg.amp
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ConfigError("amp=fp16 needs a CUDA device (use amp=bf16 on the CPU)")
    return torch.float16, True


def _check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    with contextlib.suppress(ConfigError):  # keys added since the checkpoint was written take their defaults
        saved = config_to_dict(PretrainConfig.from_dict(dict(saved)))
    diff = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
    if diff:
        raise ConfigError(
            "the out dir holds a checkpoint of a run with a different config ("
            + ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
            + "); use another out dir or the same settings"
        )


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) pretraining; returns the run folder.

    Raises:
        ConfigError: invalid settings, or an out dir holding a different run.
        DatasetError: no usable images.
        TrainingError: ``max_nonfinite`` non-finite losses in a row (the last good checkpoint is kept).
    """
    t_start = time.perf_counter()
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _pretrain(cfg, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _pretrain(cfg: PretrainConfig, t_start: float) -> Path:
    from safetensors.torch import load_file

    from shamisa.distortions.codecs import set_jpeg2000_impl
    from shamisa.pretrain_data import PristineDataset

    device_type = "cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    info = init_distributed(device_type)
    device = resolve_device(cfg, info)
    amp_dtype, use_scaler = resolve_amp(cfg, device)
    out_dir = Path(cfg.out_dir)
    ckpt_dir = out_dir / "ckpt"
    resolved = config_to_dict(cfg)
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        print(json.dumps({"config": resolved}, indent=2), file=sys.stderr)
        atomic_write_json(out_dir / "config.json", resolved)

    seed_everything(cfg.seed)
    set_jpeg2000_impl(cfg.jpeg2000_impl)  # also seen by data workers (environment)
    dataset = PristineDataset(
        cfg.data_dirs, exclude=cfg.exclude_dirs, patch_size=cfg.patch_size, n_refs=cfg.n_refs,
        n_comps=cfg.n_comps, n_levels=cfg.n_levels, max_distortions=cfg.max_distortions,
        severity_dist=cfg.severity_dist, seed=cfg.seed, device=device if cfg.synth_on_device else "cpu",
    )
    items_per_opt_step = cfg.items_per_step * info.world * cfg.grad_accum
    steps_per_epoch = len(dataset) // items_per_opt_step
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{len(dataset)} images are fewer than the {items_per_opt_step} items of one optimizer step"
        )
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    model = build_model(cfg).to(device)
    model.amp_dtype = amp_dtype
    if cfg.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cfg.t0_epochs, T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    # resume
    step, wall_before, summary = 0, 0.0, {"nonfinite_total": 0}
    if (ckpt_dir / "last.json").exists():
        record, w_path, o_path = read_checkpoint(ckpt_dir / "last.json")
        _check_resumable(record["config"], resolved)
        model.load_state_dict(load_file(str(w_path)))
        opt.load_state_dict(_optimizer_join(load_file(str(o_path)), record["optimizer"]))
        if record.get("scaler"):
            scaler.load_state_dict(record["scaler"])
        set_rng_state(record["rng"])
        step, wall_before = int(record["step"]), float(record.get("wall_s", 0.0))
        summary = dict(record.get("summary", summary))
        if info.main:
            print(f"resuming from {ckpt_dir / 'last.json'} at step {step} of {total_steps}", file=sys.stderr)
    if info.world > 1:
        dist.barrier()  # every rank has read the checkpoint before rank 0 may replace it

    if info.world > 1:
        model.gather = True
        if device.type == "cuda" and cfg.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp: nn.Module = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    else:
        ddp = model
    core: PretrainModel = model
    set_train_mode(core, cfg.bn_mode)
    if step >= total_steps:
        if info.main:
            print(f"{out_dir}: already finished ({step}/{total_steps} steps); nothing to do", file=sys.stderr)
        return out_dir

    log = RunLog(out_dir, info.main, total_steps, step)
    if step == 0:
        if info.main and log.path.exists():
            log.path.unlink()
    else:
        log.truncate_after(step)
    log.info(
        f"pretraining {cfg.encoder} ({cfg.method}) on {len(dataset)} images"
        + (f" ({len(dataset.skipped)} skipped)" if dataset.skipped else "")
        + f": {total_steps} steps of {items_per_opt_step} items x {cfg.crops_per_item} crops, "
        f"{info.world} process(es), device {device}"
    )

    def checkpoint(stop_reason: str | None) -> None:
        if not info.main:
            return
        record = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "finished": step >= total_steps,
            "stop_reason": stop_reason,
            "wall_s": wall_before + time.perf_counter() - t_start,
            "scaler": scaler.state_dict() if use_scaler else None,
            "scheduler": sched.state_dict(),
            "rng": rng_state(),
            "summary": summary,
            "config": resolved,
        }
        save_checkpoint(ckpt_dir, core, opt, record)

    window: list[dict[str, float]] = []
    nonfinite_run = 0
    stop_reason = "done"
    loader_epoch, loader = -1, None
    crops_per_micro = cfg.items_per_step * cfg.crops_per_item
    try:
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            if loader_epoch != epoch:
                loader = make_loader(dataset, cfg, info, epoch, step_in_epoch * cfg.grad_accum, device.type == "cuda")
                loader_epoch = epoch
            sched.step(epoch + step_in_epoch / steps_per_epoch)
            freeze_encoder_lr(opt, cfg, step)
            torch.manual_seed(_mix_seed(cfg.seed, 1_000_003 + info.rank, step))
            opt.zero_grad(set_to_none=True)
            t_data = t_fwd = t_bwd = 0.0
            terms: dict[str, float] = {}
            finite = True
            for micro in range(cfg.grad_accum):
                t0 = time.perf_counter()
                batch = next(loader)  # type: ignore[arg-type]
                refs, dist_imgs, meta = _batch_parts(batch, device)
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
                nonfinite_run = 0
            else:
                opt.zero_grad(set_to_none=True)
                nonfinite_run += 1
                summary["nonfinite_total"] = summary.get("nonfinite_total", 0) + 1
                log.write({"step": step + 1, "event": "nonfinite_loss", "loss": terms.get("loss"), "in_a_row": nonfinite_run})
                log.info(f"step {step + 1}: non-finite loss ({terms.get('loss')}), step skipped ({nonfinite_run} in a row)")
            t_opt = time.perf_counter() - t4
            step += 1
            if nonfinite_run >= cfg.max_nonfinite:
                stop_reason = "nonfinite"
                raise TrainingError(
                    f"{nonfinite_run} non-finite losses in a row at step {step}; stopped, the last good checkpoint "
                    f"is kept in {ckpt_dir}"
                )
            if finite:
                window.append(
                    dict(terms, lr=opt.param_groups[0]["lr"], t_data=t_data, t_forward=t_fwd, t_backward=t_bwd + t_opt,
                         t_step=t_data + t_fwd + t_bwd + t_opt)
                )
            if window and (step % cfg.log_every == 0 or step == total_steps):
                row = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                row["crops_per_s"] = crops_per_micro * info.world * cfg.grad_accum / max(row["t_step"], 1e-9)
                row = {"step": step, "epoch": round(step / steps_per_epoch, 6), **row,
                       "elapsed_s": round(wall_before + time.perf_counter() - t_start, 2)}
                log.write(row)
                summary.update(last_loss=row["loss"], last_step=step)
                summary["best_loss"] = min(summary.get("best_loss", math.inf), row["loss"])
                msg = (f"step {step}/{total_steps} loss {row['loss']:.4f} (var {row.get('var', 0):.3f} cov "
                       f"{row.get('cov', 0):.3f} rel {row.get('rel', 0):.4f}) lr {row['lr']:.2e} "
                       f"{row['t_step']:.2f}s/step [data {row['t_data']:.2f} fwd {row['t_forward']:.2f} "
                       f"bwd {row['t_backward']:.2f}]")
                if log.progress is not None:
                    log.advance(step, f"loss {row['loss']:.4f}")
                else:
                    log.info(msg)
                window = []
            out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t_start) / 60.0 >= cfg.max_minutes
            if info.world > 1:
                flag = torch.tensor([float(out_of_time)], device=device)
                dist.all_reduce(flag)
                out_of_time = bool(flag.item() > 0)
            if out_of_time and step < total_steps:
                stop_reason = "max_minutes"
                log.info(f"wall-time cap of {cfg.max_minutes} min reached at step {step}/{total_steps}; stopping")
                break
            if step % cfg.checkpoint_every == 0 and step < total_steps:
                checkpoint(None)
        checkpoint(stop_reason)
    finally:
        log.close()
        if info.main and log.path.exists():
            with contextlib.suppress(Exception):
                plot_loss_curve(log.path, out_dir / "loss_curve.png")
    if info.main:
        log.info(f"finished: step {step}/{total_steps} ({stop_reason}); checkpoint in {ckpt_dir}")
    return out_dir


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# export


def export_encoder(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, fp16: bool = False) -> Path:
    """Write the encoder of a pretraining checkpoint as a shamisa encoder file.

    Args:
        checkpoint: a run folder, its ``ckpt`` folder, ``last.json`` or a checkpoint weights file.
        out: destination ``.safetensors`` (loadable by ``shamisa.models.load_encoder`` and
            ``shamisa evaluate --weights``).
        fp16: store the weights as float16 (half the size).

    Returns:
        The written path.
    """
    from safetensors.torch import load_file

    from shamisa.models import build_encoder, save_encoder

    record, weights_path, _ = read_checkpoint(checkpoint)
    cfg = record["config"]
    state = load_file(str(weights_path))
    enc_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not enc_state:
        raise TrainingError(f"{weights_path}: no encoder weights in this checkpoint")
    encoder = build_encoder(cfg["encoder"])
    try:
        encoder.load_state_dict(enc_state, strict=True)
    except RuntimeError as e:
        raise TrainingError(f"{weights_path}: encoder weights do not fit {cfg['encoder']}: {e}") from None
    metadata = {
        "recipe": f"shamisa-pretrain/{cfg.get('method', 'shamisa')}",
        "step": record["step"],
        "total_steps": record.get("total_steps"),
        "finished": record.get("finished"),
        "stop_reason": record.get("stop_reason"),
        "epoch": record.get("epoch"),
        "summary": record.get("summary", {}),
        "config": cfg,
    }
    return save_encoder(out, encoder, metadata, dtype=torch.float16 if fp16 else None)
