"""Pretraining checkpoints: write and read them crash-safely, check that a run may resume from one,
restore the model, optimizer and RNG state, and seed every random number generator.

Layout of ``<run>/ckpt/``::

    last.json                   commit record: step, epoch, optimizer hyper-parameters, RNG states, config
    last.safetensors            all model weights (encoder.*, projector.*, objective.*)
    last-optim.safetensors      SGD momentum buffers
    step-XXXXXXXX*.safetensors  the files ``last.json`` names (the aliases above are links to them)
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shamisa.configs import PretrainConfig, config_to_dict
from shamisa.errors import ConfigError, TrainingError
from shamisa.fileio import atomic_path, atomic_write_json

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_KEYS",
    "check_resumable",
    "read_checkpoint",
    "restore_checkpoint",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "shamisa-pretrain-checkpoint"
CHECKPOINT_VERSION = 1
# Config keys that may change between a run and its resumption (they do not change the result).
RESUMABLE_KEYS = frozenset(
    {"threads", "out_dir", "max_minutes", "max_steps", "num_workers", "log_every", "checkpoint_every", "device", "synth_on_device"}
)


# ---------------------------------------------------------------------------------------------------
# seeding and RNG state


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
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


def save_checkpoint(ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, record: dict[str, Any]) -> None:
    """Write step-named weight files, commit them by atomically replacing ``last.json``, then refresh
    the ``last.safetensors`` / ``last-optim.safetensors`` aliases and drop older step files.

    A crash at any point leaves ``last.json`` naming a complete, consistent pair of files.
    """
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


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Refuse to resume a run whose checkpoint was written with different settings.

    Raises:
        ConfigError: a key outside :data:`RESUMABLE_KEYS` differs.
    """
    with contextlib.suppress(ConfigError):  # keys added since the checkpoint was written take their defaults
        saved = config_to_dict(PretrainConfig.from_dict(dict(saved)))
    diff = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_KEYS and saved.get(k) != current.get(k))
    if diff:
        raise ConfigError(
            "the out dir holds a checkpoint of a run with a different config ("
            + ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:4])
            + "); use another out dir or the same settings"
        )


def restore_checkpoint(
    ckpt_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Resume from ``ckpt_dir/last.json`` when there is one: check the config, load the weights, the
    optimizer, the scaler and the RNG states. Returns the checkpoint record, or None (a fresh run)."""
    if not (ckpt_dir / "last.json").exists():
        return None
    record, w_path, o_path = read_checkpoint(ckpt_dir / "last.json")
    check_resumable(record["config"], config)
    model.load_state_dict(load_file(str(w_path)))
    opt.load_state_dict(_optimizer_join(load_file(str(o_path)), record["optimizer"]))
    if record.get("scaler"):
        scaler.load_state_dict(record["scaler"])
    set_rng_state(record["rng"])
    return record
