"""Encoder weight files and foreign state-dict files: reading and writing tensors and their metadata.

A leaf module: it imports no other ``shamisa.models`` module (building an encoder from a file is
``shamisa.models.encoder.load_encoder``).

The encoder file format (``format = "shamisa-encoder"``, ``format_version = "1"``) is a safetensors file
whose tensors are the backbone ``state_dict`` with its usual key names (so the file is also a plain
torchvision-/EfficientNet-style state dict), and whose string metadata holds:

========================  ==========================================================================
``format``                ``"shamisa-encoder"``
``format_version``        ``"1"``
``encoder``               encoder name, e.g. ``"efficientnet_lite0"``
``feature_dim``           feature size D, e.g. ``"1280"``
``dtype``                 storage dtype of the floating tensors (``"float32"`` or ``"float16"``)
``tensors_sha256``        :func:`tensors_sha256` of the stored tensors
``meta``                  user metadata, JSON-encoded (``"{}"`` when none)
========================  ==========================================================================

Reading never unpickles: safetensors only, except :func:`load_state_file`, which also accepts
``.pth``/``.pt`` files through ``torch.load(weights_only=True)`` (tensors and plain containers only).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shamisa.errors import ModelFileError
from shamisa.fileio import atomic_path

FORMAT = "shamisa-encoder"
FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "encoder", "backbone", "params")


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over tensor names, dtypes, shapes and raw bytes, in sorted name order.

    Independent of dict insertion order and of the device; different for different dtypes.

    Args:
        tensors: name -> tensor (any device, any layout).

    Returns:
        64-character lowercase hex digest.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{str(t.dtype).removeprefix('torch.')}{tuple(t.shape)}".encode() + b"\0")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and sanity-check the JSON header of a safetensors file without loading tensors.

    Returns:
        The header dict (tensor entries plus an optional ``"__metadata__"`` str->str dict).

    Raises:
        ModelFileError: missing file, not a safetensors file, or truncated data.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: file not found")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{p}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > _MAX_HEADER or n + 8 > size:
            raise ModelFileError(
                f"{p}: not a safetensors file (bad header length; a pickle/.pth or corrupt file?)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{p}: not a safetensors file (unreadable header: {e})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{p}: not a safetensors file (header is not an object)")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise ModelFileError(f"{p}: corrupt safetensors header (entry {key!r})") from None
    if 8 + n + end != size:
        raise ModelFileError(f"{p}: truncated or corrupt file (expected {8 + n + end} bytes, found {size})")
    return header


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the str->str metadata of a safetensors file."""
    header = read_safetensors_header(path)
    meta = header.get("__metadata__") or {}
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - any decoder failure is a corrupt file for the user
        raise ModelFileError(f"{path}: cannot read safetensors data ({e})") from None
    return tensors, dict(meta)


def check_encoder_file(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> None:
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a shamisa encoder file (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: unsupported encoder file version {meta.get('format_version')!r} "
            f"(this version reads {FORMAT_VERSION!r})"
        )
    expected = meta.get("tensors_sha256")
    if not expected or tensors_sha256(tensors) != expected:
        raise ModelFileError(f"{path}: checksum mismatch (file corrupted or edited)")


def save_encoder(
    path: str | os.PathLike[str],
    encoder: nn.Module,
    metadata: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``encoder``'s backbone weights to a safetensors file, atomically.

    Args:
        path: destination file (``.safetensors`` recommended).
        encoder: the ``shamisa.models.Encoder`` to save (any device; its normalisation constants are
            not stored).
        metadata: JSON-serialisable user metadata, stored JSON-encoded under ``"meta"``.
        dtype: storage dtype of floating tensors (``torch.float16`` halves the file); default: as is.

    Returns:
        The destination path.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, t in encoder.backbone.state_dict().items():
        t = t.detach().cpu()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.contiguous().clone()
    try:
        meta_json = json.dumps(dict(metadata or {}), sort_keys=True)
    except TypeError as e:
        raise ValueError(f"encoder metadata must be JSON-serialisable: {e}") from None
    stored = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": encoder.name,
        "feature_dim": str(encoder.feature_dim),
        "dtype": ",".join(sorted(stored)),
        "tensors_sha256": tensors_sha256(tensors),
        "meta": meta_json,
    }
    dest = Path(path)
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return dest


def read_encoder_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The raw str->str metadata of an encoder file (no tensor data read, no checksum verified)."""
    meta = dict(read_safetensors_header(path).get("__metadata__") or {})
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a shamisa encoder file (format={meta.get('format')!r})")
    return meta


def _is_torch_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        magic = f.read(2)
    return magic == b"PK" or magic[:1] == b"\x80"


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        if isinstance(obj, Mapping):
            nested = [k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)]
            if nested:
                obj = obj[nested[0]]
                continue
        break
    raise ModelFileError(f"{path}: no state dict of tensors found in the file")


def load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a weights file, on the CPU.

    Accepts a shamisa encoder file (checksum verified), any safetensors state dict, and ``.pth`` /
    ``.pt`` / ``.ckpt`` files read with ``torch.load(weights_only=True)`` (a ``state_dict`` /
    ``model`` / ``encoder`` entry of a training checkpoint is unwrapped). Key prefixes are left as
    they are (see :func:`shamisa.models.encoder.load_backbone_state`).

    Raises:
        ModelFileError: missing, unreadable, unsafe (needs full unpickling) or corrupted file.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: file not found")
    try:
        read_safetensors_header(p)
        is_safetensors = True
    except ModelFileError:
        is_safetensors = False
    if not is_safetensors:
        if not _is_torch_pickle(p):
            raise ModelFileError(f"{p}: neither a safetensors file nor a PyTorch weights file (or truncated)")
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError(
                f"{p}: cannot read as a PyTorch weights file with weights_only=True "
                f"(only tensors and plain containers are allowed): {first}"
            ) from None
        return _unwrap(obj, p)
    tensors, meta = read_safetensors(p)
    if meta.get("format") == FORMAT:
        check_encoder_file(p, tensors, meta)
    return tensors
