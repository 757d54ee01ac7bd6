"""The model file: one safetensors file with the encoder, the ridge head and the model card.

Format (version 1): the encoder tensors (prefix ``encoder.``, floating point ones stored as fp16 by
default), the ridge head tensors (prefix ``head.``) and string metadata: ``format="shamisa-model"``,
``format_version="1"``, ``encoder``, ``feature_dim``, ``head_dim``, ``crop``, ``protocol``,
``dataset``, ``mos_type``, ``score_range`` (JSON ``[lo, hi]``), ``recipe``, ``metrics`` (JSON),
``name``, ``description``, ``shamisa_version`` and ``tensors_sha256`` (see :func:`tensors_sha256`),
all verified by :func:`read_model_file`. Bundled models live in ``shamisa/assets`` and are found by
name (:func:`model_path`, :func:`list_models`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from shamisa.errors import ModelFileError
from shamisa.evaluation.ridge import head_to_tensors
from shamisa.fileio import atomic_path
from shamisa.inference.card import FORMAT, FORMAT_VERSION, ModelCard
from shamisa.models.paired import PairedEncoder
from shamisa.models.readout import readout_of
from shamisa.models.weights import read_safetensors_header
from shamisa.models.weights import tensors_sha256 as _tensors_sha256

__all__ = ["ALIASES", "BUNDLED", "encoder_card_fields", "list_models", "model_path", "read_card", "read_model_file", "save_model", "tensors_sha256"]

ASSETS = Path(__file__).parent.parent / "assets"
BUNDLED: dict[str, str] = {"default": "default.safetensors", "imagenet-lite0": "imagenet-lite0.safetensors"}
ALIASES: dict[str, str] = {"shamisa": "default", "shamisa-livec": "default", "shamisa-clive": "default"}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of named tensors that does not depend on the file layout (the same definition as
    encoder weights files, :func:`shamisa.models.weights.tensors_sha256`): SHA-256 over, in sorted
    name order, each name, dtype, shape and the raw bytes of the contiguous CPU tensor."""
    return _tensors_sha256(tensors)


def encoder_card_fields(encoder: nn.Module) -> dict[str, Any]:
    """The card fields that describe ``encoder``: ``encoder`` (architecture), ``feature_dim`` and, for a
    content + quality pair (:class:`shamisa.models.PairedEncoder`), ``content`` and ``shared_stages``; for a
    readout other than ``head``, ``readout``."""
    readout = {"readout": readout_of(encoder)} if readout_of(encoder) != "head" else {}
    if isinstance(encoder, PairedEncoder):
        return {"encoder": encoder.quality.name, "feature_dim": int(encoder.feature_dim), "content": "imagenet",
                "shared_stages": int(encoder.shared_stages), **readout}
    return {"encoder": str(getattr(encoder, "name", "")), "feature_dim": int(getattr(encoder, "feature_dim", 0)), **readout}


def _encoder_tensors(encoder: nn.Module, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    module = getattr(encoder, "backbone", encoder)  # the same tensors as an encoder weights file
    for k, v in module.state_dict().items():
        t = v.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[f"encoder.{k}"] = t.contiguous().clone()
    return out


def save_model(
    path: str | os.PathLike[str],
    encoder: nn.Module,
    head: Any,
    card: ModelCard,
    *,
    dtype: torch.dtype | None = torch.float16,
) -> Path:
    """Write a complete model file (encoder + ridge head + card) atomically.

    Args:
        path: destination ``.safetensors`` file.
        encoder: a ``shamisa.models`` encoder (its ``state_dict`` is stored under ``encoder.``).
        head: a ``shamisa.evaluation.ridge.RidgeHead`` fitted on (.., 2 * feature_dim) features.
        card: the metadata; ``card.encoder`` must be the encoder's name.
        dtype: storage dtype of the encoder's floating-point tensors (fp16 halves the file; None keeps them).

    Returns:
        The path written.
    """
    if head.feature_dim != card.head_dim:
        raise ModelFileError(f"head has {head.feature_dim} coefficients but the card says head_dim {card.head_dim}")
    tensors = _encoder_tensors(encoder, dtype)
    for k, v in head_to_tensors(head).items():
        tensors[f"head.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
    meta = card.to_metadata()
    weights_hash = getattr(encoder, "weights_hash", None)
    if callable(weights_hash):
        with contextlib.suppress(Exception):
            meta.setdefault("encoder_weights_sha256", str(weights_hash()))
    meta["tensors_sha256"] = tensors_sha256(tensors)
    dest = Path(path)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return dest


def _sniff_wrong_format(path: Path) -> str | None:
    """A friendly reason if the file is obviously not safetensors (pickle, zip checkpoint, empty)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty file"
    if head[:2] == b"PK":
        return "this is a zip/PyTorch checkpoint (torch.save), not a safetensors model file; it is never unpickled"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= 5:
        return "this is a Python pickle, not a safetensors model file; it is never unpickled"
    if len(head) < 8:
        return "file too short to be a safetensors file"
    n = int.from_bytes(head[:8], "little")
    if n == 0 or n > 100_000_000 or n + 8 > path.stat().st_size:
        return "not a safetensors file (bad header length)"
    return None


def read_model_file(
    path: str | os.PathLike[str], *, verify: bool = True
) -> tuple[ModelCard, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Read and check a model file.

    Returns:
        ``(card, encoder_tensors, head_tensors)``; tensor names have their prefix removed.

    Raises:
        ModelFileError: missing, unreadable, not safetensors (e.g. a pickle), wrong format or version,
            incomplete metadata, checksum mismatch, or tensors inconsistent with the card.
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: model file not found")
    if p.is_dir():
        raise ModelFileError(f"{p}: is a directory, not a model file")
    try:
        reason = _sniff_wrong_format(p)
    except OSError as e:
        raise ModelFileError(f"{p}: cannot read ({e.strerror or e})") from None
    if reason:
        raise ModelFileError(f"{p}: {reason}")
    read_safetensors_header(p)  # header sanity and truncation check, before any tensor is read
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                what = meta.get("format") or "no format key"
                raise ModelFileError(
                    f"{p}: not a shamisa model file (format: {what}); an encoder weights file needs a head: "
                    "build a model with 'shamisa fit --weights FILE'"
                )
            if meta.get("format_version") != FORMAT_VERSION:
                raise ModelFileError(
                    f"{p}: model format version {meta.get('format_version')!r} is not supported "
                    f"(this shamisa reads version {FORMAT_VERSION})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except ModelFileError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers / data
        raise ModelFileError(f"{p}: corrupt or unreadable safetensors file ({type(e).__name__}: {e})") from None
    card = ModelCard.from_metadata(meta, source=str(p))
    if verify:
        digest = tensors_sha256(tensors)
        if digest != meta["tensors_sha256"]:
            raise ModelFileError(f"{p}: checksum mismatch (tensors_sha256), the file is corrupt or was modified")
    enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
    head = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    if not enc or not head:
        raise ModelFileError(f"{p}: model file must hold 'encoder.' and 'head.' tensors")
    return card, enc, head


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of a model file (checked, tensors not loaded)."""
    return read_model_file(path, verify=True)[0]


def model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Resolve a bundled model name (``"default"``, aliases) or a file path."""
    s = os.fspath(name_or_path)
    key = ALIASES.get(s, s)
    if key in BUNDLED:
        p = ASSETS / BUNDLED[key]
        if not p.is_file():
            raise ModelFileError(f"bundled model {key!r} is missing from the installation ({p})")
        return p
    p = Path(s).expanduser()
    if not p.exists():
        names = ", ".join(sorted(BUNDLED))
        raise ModelFileError(f"{s}: no such model file (bundled models: {names})")
    return p


def list_models() -> list[str]:
    """Names of the bundled models (``shamisa.load(name)`` accepts these, any alias, or a file path)."""
    return sorted(k for k, v in BUNDLED.items() if (ASSETS / v).is_file())
