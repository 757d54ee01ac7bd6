"""The public scoring API and the model file format.

Usage::

    import shamisa

    model = shamisa.load("default")            # the bundled model, or a path to a model file
    model.score("photo.jpg")                   # 0.63   (float in [0, 1], higher is better)
    model.score(["a.jpg", "b.png"])            # array([0.63, 0.41])
    r = model.score("photo.jpg", return_raw=True)
    r.score, r.raw                             # 0.63, 63.2   (raw = on the training data's MOS scale)

    metric = shamisa.create_metric("shamisa")  # pyiqa-style torch.nn.Module
    metric(x)                                  # x: (N, 3, H, W) in [0, 1] -> (N,) tensor

A score is computed exactly as in the linear-probe evaluation protocol: 5 crops (center and 4 corners)
of ``crop`` x ``crop`` pixels at full and at half scale, the L2-normalised encoder features of crop k at
both scales concatenated, the ridge head applied to each of the 5 crop features and the 5 predictions
averaged. This ``raw`` prediction is on the scale of the head's training labels; the public ``score``
maps it to [0, 1] with the training data's published range ``(lo, hi)``::

    score = clip((raw - lo) / (hi - lo), 0, 1)        # MOS heads
    score = 1 - clip((raw - lo) / (hi - lo), 0, 1)    # DMOS heads (lower DMOS = better)

Precision: the encoder runs in fp32 by default. ``load(..., precision="bf16")`` (``shamisa score
--precision bf16``) runs a channels-last copy of it under bfloat16 autocast instead: about 3x faster on
CPUs with native bfloat16 (AVX512-BF16, AMX) and on recent GPUs, with raw scores that differ from fp32
by 0.44 MOS points on average on CLIVE (largest 3.8 on the 0-100 scale) and the same cross-validated
SRCC (bench/score_precision.py). The ridge head always runs in fp32.

Input policy (also in docs/bad-inputs.md): images whose shorter side is below ``crop`` are enlarged
(bicubic, aspect kept) and flagged ``enlarged``; images whose longer side exceeds ``max_side`` (default
2048) are downscaled (JPEGs are first decoded at reduced size by libjpeg) and flagged ``downscaled``.

Model file format (version 1): one safetensors file holding the encoder tensors (prefix ``encoder.``,
floating point ones stored as fp16 by default), the ridge head tensors (prefix ``head.``) and string
metadata: ``format="shamisa-model"``, ``format_version="1"``, ``encoder``, ``feature_dim``,
``head_dim``, ``crop``, ``protocol``, ``dataset``, ``mos_type``, ``score_range`` (JSON ``[lo, hi]``),
``recipe``, ``metrics`` (JSON), ``name``, ``description``, ``shamisa_version`` and ``tensors_sha256``
(see :func:`tensors_sha256`), all verified by :func:`read_model_file`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shamisa.errors import ConfigError, ImageLoadError, ModelFileError, ShamisaError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PROTOCOL",
    "DEFAULT_MAX_SIDE",
    "ModelCard",
    "ScoreResult",
    "ScoreRecord",
    "QualityModel",
    "ShamisaMetric",
    "load",
    "create_metric",
    "list_models",
    "model_path",
    "save_model",
    "read_model_file",
    "read_card",
    "tensors_sha256",
    "raw_to_score",
    "prepare_image",
    "load_image_for_scoring",
    "HeadFit",
    "fit_head",
    "PRECISIONS",
    "cpu_has_native_bf16",
]

FORMAT = "shamisa-model"
FORMAT_VERSION = "1"
PROTOCOL = "5crop-2scale-mean"
DEFAULT_MAX_SIDE = 2048
"""Images whose longer side exceeds this are downscaled before cropping (bounded memory)."""
MAX_PIXELS_NON_JPEG = 64_000_000
"""Non-JPEG images over this many pixels are refused before decoding (JPEGs are decoded reduced)."""
MAX_PIXELS_JPEG = 2 * 89_478_485
DEFAULT_BATCH_SIZE_CPU = 1
"""Images per forward pass on the CPU (10 crops): measured fastest on a 2-core machine (bench/score_throughput.py)."""
DEFAULT_BATCH_SIZE_CUDA = 16
PRECISIONS = ("fp32", "bf16")
"""Encoder arithmetic for inference: ``fp32`` (default, the reference) or ``bf16`` (bfloat16 autocast,
channels-last; ~3x faster on CPUs with native bfloat16, raw scores within about 0.5 MOS points on
average, see BENCHMARKS.md "Scoring throughput")."""
MAX_ASPECT = 50
"""Images more elongated than this (longer / shorter side) are refused: enlarging them is unbounded."""

ASSETS = Path(__file__).parent / "assets"
BUNDLED: dict[str, str] = {"default": "default.safetensors"}
ALIASES: dict[str, str] = {"shamisa": "default", "shamisa-livec": "default", "shamisa-clive": "default"}

_REQUIRED_META = (
    "format",
    "format_version",
    "encoder",
    "feature_dim",
    "head_dim",
    "crop",
    "protocol",
    "dataset",
    "mos_type",
    "score_range",
    "tensors_sha256",
)


# --------------------------------------------------------------------------------------------- model card


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself (its string metadata, parsed).

    Attributes:
        name: short model name (e.g. ``"default"``).
        encoder: encoder architecture name understood by ``shamisa.models.build_encoder``.
        feature_dim: D, the encoder's feature size; the head takes 2D (full + half scale).
        crop: crop side in pixels (224 in the protocol).
        dataset: the head's training data (e.g. ``"clive"`` or a CSV file name).
        mos_type: ``"mos"`` (higher is better) or ``"dmos"`` (lower is better).
        score_range: the training labels' published range ``(lo, hi)``, used to map raw to [0, 1].
        protocol: feature protocol id (``"5crop-2scale-mean"``).
        recipe: free text: how the encoder and head were obtained.
        metrics: cross-validated agreement of the recipe (e.g. ``{"srcc_median": .., "plcc_median": ..}``).
        description: one line for ``shamisa models``.
        extra: any other metadata keys, kept as strings.
    """

    name: str
    encoder: str
    feature_dim: int
    crop: int
    dataset: str
    mos_type: str
    score_range: tuple[float, float]
    protocol: str = PROTOCOL
    recipe: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mos_type not in ("mos", "dmos"):
            raise ModelFileError(f"mos_type must be 'mos' or 'dmos', not {self.mos_type!r}")
        lo, hi = (float(v) for v in self.score_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ModelFileError(f"score_range must be finite with lo < hi, got {self.score_range!r}")
        object.__setattr__(self, "score_range", (lo, hi))
        if int(self.crop) < 32 or int(self.feature_dim) < 1:
            raise ModelFileError(f"invalid crop {self.crop} or feature_dim {self.feature_dim}")

    @property
    def head_dim(self) -> int:
        return 2 * int(self.feature_dim)

    def to_metadata(self) -> dict[str, str]:
        """The safetensors string metadata (without ``tensors_sha256``)."""
        from shamisa import __version__

        meta = dict(self.extra)
        meta.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "encoder": self.encoder,
                "feature_dim": str(int(self.feature_dim)),
                "head_dim": str(self.head_dim),
                "crop": str(int(self.crop)),
                "protocol": self.protocol,
                "dataset": self.dataset,
                "mos_type": self.mos_type,
                "score_range": json.dumps(list(self.score_range)),
                "recipe": self.recipe,
                "metrics": json.dumps(self.metrics, default=_json_default),
                "description": self.description,
                "shamisa_version": __version__,
            }
        )
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model file") -> ModelCard:
        """Parse and validate metadata; ModelFileError naming the bad key otherwise."""
        missing = [k for k in _REQUIRED_META if k not in meta]
        if missing:
            raise ModelFileError(f"{source}: metadata lacks {', '.join(missing)} (not a complete shamisa model file)")
        try:
            score_range = tuple(float(v) for v in json.loads(meta["score_range"]))
            if len(score_range) != 2:
                raise ValueError("score_range must have 2 values")
            metrics = json.loads(meta.get("metrics") or "{}")
            feature_dim = int(meta["feature_dim"])
            crop = int(meta["crop"])
            head_dim = int(meta["head_dim"])
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{source}: malformed metadata ({e})") from None
        if head_dim != 2 * feature_dim:
            raise ModelFileError(f"{source}: head_dim {head_dim} is not 2 x feature_dim {feature_dim}")
        if meta["protocol"] != PROTOCOL:
            raise ModelFileError(f"{source}: unknown feature protocol {meta['protocol']!r} (this version reads {PROTOCOL!r})")
        known = set(_REQUIRED_META) | {"name", "recipe", "metrics", "description", "shamisa_version"}
        try:
            return cls(
                name=meta.get("name", ""),
                encoder=meta["encoder"],
                feature_dim=feature_dim,
                crop=crop,
                dataset=meta["dataset"],
                mos_type=meta["mos_type"],
                score_range=score_range,  # type: ignore[arg-type]
                protocol=meta["protocol"],
                recipe=meta.get("recipe", ""),
                metrics=metrics if isinstance(metrics, dict) else {},
                description=meta.get("description", ""),
                extra={k: v for k, v in meta.items() if k not in known},
            )
        except ModelFileError as e:
            raise ModelFileError(f"{source}: {e}") from None

    def summary(self) -> dict[str, Any]:
        """A flat dict for listings (``shamisa models``)."""
        return {
            "name": self.name,
            "encoder": self.encoder,
            "dataset": self.dataset,
            "mos_type": self.mos_type,
            "score_range": list(self.score_range),
            "crop": self.crop,
            "metrics": self.metrics,
            "description": self.description,
            "recipe": self.recipe,
        }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def raw_to_score(raw: np.ndarray | float, score_range: tuple[float, float], mos_type: str) -> np.ndarray:
    """Map raw predictions (training-label scale) to [0, 1], higher is better (see module docstring)."""
    lo, hi = score_range
    s = np.clip((np.asarray(raw, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 - s if mos_type == "dmos" else s


# --------------------------------------------------------------------------------------------- file format


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A checksum of named tensors that does not depend on the file layout (the same definition as
    encoder weights files, :func:`shamisa.models.weights.tensors_sha256`): SHA-256 over, in sorted
    name order, each name, dtype, shape and the raw bytes of the contiguous CPU tensor."""
    from shamisa.models.weights import tensors_sha256 as _sha

    return _sha(tensors)


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
        head: a ``shamisa.regression.RidgeHead`` fitted on (.., 2 * feature_dim) features.
        card: the metadata; ``card.encoder`` must be the encoder's name.
        dtype: storage dtype of the encoder's floating-point tensors (fp16 halves the file; None keeps them).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    from shamisa.fileio import atomic_path
    from shamisa.regression import head_to_tensors

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
    from safetensors import safe_open

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
    from shamisa.models.weights import read_safetensors_header

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


# --------------------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Prepared:
    """One image ready for the encoder: (10, 3, crop, crop) crops (5 full-scale then 5 half-scale)."""

    crops: torch.Tensor
    width: int
    height: int
    flags: tuple[str, ...] = ()


def _peek(path: str | os.PathLike[str]) -> tuple[str | None, tuple[int, int] | None]:
    """(format, displayed (width, height) after EXIF orientation) from the header, or (None, None)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            with contextlib.suppress(Exception):
                if im.getexif().get(0x0112) in (5, 6, 7, 8):
                    w, h = h, w
            return im.format, (int(w), int(h))
    except Exception:  # any problem is reported by load_image itself
        return None, None


def load_image_for_scoring(path: str | os.PathLike[str], max_side: int = DEFAULT_MAX_SIDE) -> torch.Tensor:
    """Decode an image file with the scorer's memory bounds; returns (3, H, W) before any downscale.

    JPEGs are decoded at reduced DCT size when larger than ``max_side`` (and refused over Pillow's
    decompression-bomb limit, 89.5 MP, which ``shamisa.images.load_image`` turns into an error); other
    formats are refused over ``MAX_PIXELS_NON_JPEG`` pixels.
    """
    from shamisa.images import load_image

    if not os.path.isfile(path):  # FIFOs, devices, folders, missing files: never opened (a FIFO would block)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ImageLoadError(path, "not a regular file")
        return load_image(path)  # raises the right ImageLoadError (missing, broken link, directory)
    fmt, _ = _peek(path)
    limit = MAX_PIXELS_JPEG if fmt == "JPEG" else MAX_PIXELS_NON_JPEG
    x = load_image(path, max_pixels=limit, draft_max_side=max_side)
    h, w = x.shape[-2:]
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ImageLoadError(path, f"image is {w}x{h}, more elongated than the {MAX_ASPECT}:1 limit")
    return x


def _as_image_tensor(x: Any) -> torch.Tensor:
    """PIL image / numpy (H, W[, C]) / tensor (3, H, W) -> (3, H, W) float32 in [0, 1]."""
    from PIL import Image

    from shamisa.images import pil_to_tensor

    if isinstance(x, Image.Image):
        return pil_to_tensor(x)
    if isinstance(x, np.ndarray):
        a = x
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
            raise ValueError(f"expected a numpy image of shape (H, W), (H, W, 3) or (H, W, 4), got {x.shape}")
        if a.dtype == np.uint8:
            f = a.astype(np.float32) / 255.0
        elif a.dtype == np.uint16:
            f = a.astype(np.float32) / 65535.0
        elif np.issubdtype(a.dtype, np.floating):
            f = a.astype(np.float32)
        else:
            raise ValueError(f"unsupported numpy image dtype {a.dtype} (use uint8, uint16 or float in [0, 1])")
        t = torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1)
        if t.shape[0] == 4:  # composite over white, as for files
            alpha = t[3:4]
            t = t[:3] * alpha + (1.0 - alpha)
        elif t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return _check_range(t.contiguous())
    if isinstance(x, torch.Tensor):
        t = x.detach() if not x.requires_grad else x
        if t.ndim == 2:
            t = t.unsqueeze(0)
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected an image tensor of shape (3, H, W), got {tuple(x.shape)}")
        if not t.is_floating_point():
            t = t.float() / 255.0
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return _check_range(t.float())
    raise TypeError(f"cannot score an object of type {type(x).__name__}")


def _check_range(t: torch.Tensor) -> torch.Tensor:
    if t.numel() == 0:
        raise ValueError("empty image")
    lo, hi = float(t.detach().min()), float(t.detach().max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("image contains NaN or infinite values")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"image values must be in [0, 1] (got min {lo:.4g}, max {hi:.4g}); divide uint8 data by 255")
    return t.clamp(0.0, 1.0)


def prepare_image(x: torch.Tensor, crop: int, max_side: int = DEFAULT_MAX_SIDE) -> Prepared:
    """Apply the size policy to a (3, H, W) image and cut the protocol's 10 crops.

    Returns a :class:`Prepared` with crops (10, 3, crop, crop) = 5 full-scale crops then the
    5 matching half-scale crops, and flags ``enlarged`` (shorter side < crop) / ``downscaled``.
    """
    from shamisa.images import resize, two_scale_crops

    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected (3, H, W), got {tuple(x.shape)}")
    h, w = int(x.shape[1]), int(x.shape[2])
    if max(h, w) > MAX_ASPECT * min(h, w):
        raise ValueError(f"image is {w}x{h}, more elongated than the {MAX_ASPECT}:1 limit")
    flags: list[str] = []
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        x = resize(x, (max(1, round(h * s)), max(1, round(w * s))))
        flags.append("downscaled")
    if min(x.shape[1], x.shape[2]) < crop:
        flags.append("enlarged")
    full, half = two_scale_crops(x, crop)
    return Prepared(torch.cat([full, half]), w, h, tuple(flags))


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoreResult:
    """Scores with their raw values. ``score`` and ``raw`` are floats for one image, arrays (N,) else."""

    score: Any
    raw: Any

    def __float__(self) -> float:
        return float(self.score)


@dataclass(frozen=True)
class ScoreRecord:
    """One item of a streamed scoring job (CLI rows)."""

    path: str
    score: float | None = None
    raw: float | None = None
    width: int | None = None
    height: int | None = None
    flags: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------------------------------------- the model


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ShamisaError(f"invalid device {device!r} ({e})") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ShamisaError(f"device {device!r} requested but CUDA is not available")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ShamisaError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if d.type not in ("cpu", "cuda", "mps"):
        raise ShamisaError(f"unsupported device {device!r} (use cpu, cuda, cuda:N or auto)")
    return d


class QualityModel(nn.Module):
    """A frozen encoder + ridge head that scores images (see the module docstring for the recipe).

    Build with :func:`load`. Attributes: ``card`` (:class:`ModelCard`), ``encoder``, ``coef`` (2D,),
    ``intercept`` (scalar tensor), ``max_side``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        head: Any,
        card: ModelCard,
        *,
        max_side: int = DEFAULT_MAX_SIDE,
        optimize: bool = True,
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r} (use one of: {', '.join(PRECISIONS)})")
        self.precision = precision
        self.card = card
        self.encoder = encoder.eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        w, b = head.effective()
        coef = torch.as_tensor(np.asarray(w, dtype=np.float64).reshape(-1))
        if coef.numel() != card.head_dim:
            raise ModelFileError(f"head has {coef.numel()} coefficients, expected {card.head_dim}")
        self.head = head
        self.register_buffer("coef", coef.float(), persistent=False)
        self.register_buffer("intercept", torch.tensor(float(b)), persistent=False)
        self.max_side = int(max_side)
        self.optimize = bool(optimize) and not os.environ.get("SHAMISA_NO_JIT")
        self.__dict__["_frozen"] = None  # inference-optimised copy of the encoder (not a submodule)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> QualityModel:  # .to() / .cuda(): drop the copy
        self.__dict__["_frozen"] = None
        return super()._apply(fn, *args, **kwargs)

    def _inference_encoder(self, x: torch.Tensor) -> Any:
        """The encoder for no-grad inference on (N, 3, c, c) crops: a callable returning (N, D) features.

        fp32 on the CPU: the encoder traced once, frozen and passed through
        ``torch.jit.optimize_for_inference`` (batch-norm folded into the convolutions, oneDNN layouts),
        about 1.5-1.8x faster than eager mode with the same results (max difference ~1e-7).

        bf16: a channels-last copy of the encoder run under bfloat16 autocast (on the CPU traced and
        frozen the same way). Features differ from fp32 by a few per cent (rounding of activations to
        8-bit mantissas); the head still runs in fp32.

        Falls back to the eager encoder (with autocast for bf16) if tracing fails or with
        ``optimize=False`` / ``SHAMISA_NO_JIT=1``; CUDA always runs eagerly.
        """
        bf16 = self.precision == "bf16"
        if not bf16 and (not self.optimize or x.device.type != "cpu"):
            return self.encoder
        cached = self.__dict__.get("_frozen")  # cleared by .to() / .cuda() (see _apply)
        if cached is not None and cached[0] == tuple(x.shape[1:]):
            return cached[1]
        fast: Any = _Bf16Encoder(self.encoder, x.device.type) if bf16 else self.encoder
        if self.optimize and x.device.type == "cpu":
            traced = _traced_for_inference(fast, x, fold=not bf16)
            if traced is None:  # tracing failed: eager mode from now on, without retrying for other shapes
                self.optimize = False
            else:
                fast = traced
        self.__dict__["_frozen"] = (tuple(x.shape[1:]), fast)
        return fast

    # -- properties
    @property
    def crop(self) -> int:
        return int(self.card.crop)

    @property
    def device(self) -> torch.device:
        return self.coef.device

    def train(self, mode: bool = True) -> QualityModel:  # always frozen
        super().train(False)
        return self

    def default_batch_size(self) -> int:
        """Images per forward pass when not given: 1 on the CPU, 16 on CUDA."""
        return DEFAULT_BATCH_SIZE_CUDA if self.device.type == "cuda" else DEFAULT_BATCH_SIZE_CPU

    # -- core tensor path
    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 10, 3, c, c) crops -> (B, 5, 2D) protocol features (full-scale h_k || half-scale h_k)."""
        b = crops.shape[0]
        x = crops.reshape(b * 10, *crops.shape[2:]).to(self.device, non_blocking=True)
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.encoder.parameters())):
            h = self.encoder(x)
        else:
            h = self._inference_encoder(x)(x)
        h = h.float().reshape(b, 2, 5, -1)
        return torch.cat([h[:, 0], h[:, 1]], dim=-1)

    def predict_raw(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 5, 2D) -> (B,) raw predictions (mean of the 5 crop predictions)."""
        return (features @ self.coef + self.intercept).mean(dim=1)

    def raw_from_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, 10, 3, c, c) crops -> (B,) raw predictions."""
        return self.predict_raw(self.features(crops))

    def to_score(self, raw: torch.Tensor | np.ndarray) -> np.ndarray:
        """Raw predictions -> [0, 1] scores (higher is better)."""
        r = raw.detach().cpu().double().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        return raw_to_score(r, self.card.score_range, self.card.mos_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) or (3, H, W) in [0, 1] -> (N,) scores in [0, 1] as a tensor (differentiable)."""
        xb = x.unsqueeze(0) if x.ndim == 3 else x
        if xb.ndim != 4 or xb.shape[1] not in (1, 3):
            raise ValueError(f"expected an image tensor of shape (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
        crops = torch.stack([prepare_image(_as_image_tensor(img), self.crop, self.max_side).crops for img in xb])
        raw = self.raw_from_crops(crops)
        lo, hi = self.card.score_range
        s = ((raw - lo) / (hi - lo)).clamp(0.0, 1.0)
        return 1.0 - s if self.card.mos_type == "dmos" else s

    # -- user API
    def score(
        self,
        x: Any,
        *,
        return_raw: bool = False,
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> Any:
        """Score one or many images.

        Args:
            x: a path (str / PathLike), a list of paths, a PIL image, a numpy array (H, W, 3) uint8 or
                float in [0, 1], a tensor (3, H, W) or (N, 3, H, W) in [0, 1], or a list of any of these.
            return_raw: return a :class:`ScoreResult` with ``.score`` and ``.raw`` (training-label scale).
            batch_size: images per encoder batch (each image is 10 crops); default 1 on the CPU, 16 on CUDA.
            workers: decoding threads for paths (default: up to 4).

        Returns:
            A float for one image, a float64 array (N,) for several (or a ScoreResult of those).

        Raises:
            ImageLoadError: a path cannot be decoded (use :meth:`score_paths` to collect errors instead).
            ValueError / TypeError: an array or tensor of the wrong shape, type or range.
        """
        batch_size = self.default_batch_size() if batch_size is None else batch_size
        single, items = _normalise_inputs(x)
        raws = np.empty(len(items), dtype=np.float64)
        paths_idx = [i for i, it in enumerate(items) if isinstance(it, (str, os.PathLike))]
        if paths_idx:
            for i, rec in zip(
                paths_idx,
                self.score_paths(
                    [items[i] for i in paths_idx], batch_size=batch_size, workers=workers, raise_errors=True
                ),
                strict=True,
            ):
                raws[i] = rec.raw
        path_set = set(paths_idx)
        others = [i for i in range(len(items)) if i not in path_set]
        for start in range(0, len(others), max(1, batch_size)):
            idx = others[start : start + max(1, batch_size)]
            crops = torch.stack([prepare_image(_as_image_tensor(items[i]), self.crop, self.max_side).crops for i in idx])
            with torch.inference_mode():
                raws[idx] = self.raw_from_crops(crops).double().cpu().numpy()
        scores = self.to_score(raws)
        if single:
            return ScoreResult(float(scores[0]), float(raws[0])) if return_raw else float(scores[0])
        return ScoreResult(scores, raws) if return_raw else scores

    def score_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        raise_errors: bool = False,
    ) -> Iterator[ScoreRecord]:
        """Stream :class:`ScoreRecord` s for image files, in input order.

        Decoding and cropping run in a thread pool while the encoder works on the previous batch; at
        most about ``batch_size + 2 * workers`` decoded images are held in memory. A file that cannot
        be read gives a record with ``error`` set (or raises ImageLoadError if ``raise_errors``).
        ``batch_size`` defaults to 1 image on the CPU (fastest there, see bench/results) and 16 on CUDA;
        ``workers`` (decoding threads) to min(4, CPU count).
        """
        return _score_stream(self, paths, batch_size=batch_size, workers=workers, raise_errors=raise_errors)


def _normalise_inputs(x: Any) -> tuple[bool, list[Any]]:
    if isinstance(x, (str, os.PathLike)):
        return True, [x]
    if isinstance(x, torch.Tensor):
        if x.ndim == 4:
            return False, list(x)
        return True, [x]
    if isinstance(x, np.ndarray):
        if x.ndim == 4:
            return False, list(x)
        return True, [x]
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError("nothing to score (empty list)")
        return False, list(x)
    return True, [x]


def _prepare_path(path: Any, crop: int, max_side: int) -> Prepared:
    if isinstance(path, ImageLoadError):  # an input that failed before decoding (e.g. an unreadable folder)
        raise path
    try:
        x = load_image_for_scoring(path, max_side)
        prep = prepare_image(x, crop, max_side)
        _, size = _peek(path)  # report the file's own size, also when it was decoded reduced
        if size is not None and (size[0] >= prep.width) == (size[1] >= prep.height):
            prep = Prepared(prep.crops, size[0], size[1], prep.flags)
        return prep
    except ShamisaError:
        raise
    except MemoryError:
        raise ImageLoadError(path, "out of memory while decoding") from None
    except Exception as e:  # never let one odd file stop a job
        raise ImageLoadError(path, f"cannot process: {type(e).__name__}: {e}") from None


def display_path(path: Any) -> str:
    """A printable form of a path (undecodable bytes of non-UTF-8 names shown as \\xNN escapes)."""
    if isinstance(path, ImageLoadError):
        path = path.path
    s = os.fspath(path)
    if isinstance(s, bytes):
        return s.decode("utf-8", "backslashreplace")
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _score_stream(
    model: QualityModel,
    paths: Iterable[Any],
    *,
    batch_size: int | None,
    workers: int | None,
    raise_errors: bool,
) -> Iterator[ScoreRecord]:
    batch_size = max(1, int(model.default_batch_size() if batch_size is None else batch_size))
    n_workers = max(1, int(workers if workers is not None else min(4, os.cpu_count() or 1)))
    crop, max_side = model.crop, model.max_side
    path_iter = iter(paths)
    window = batch_size + 2 * n_workers
    pending: deque[tuple[Any, Future[Prepared]]] = deque()
    stop = threading.Event()

    def submit_more(pool: ThreadPoolExecutor) -> None:
        while len(pending) < window and not stop.is_set():
            try:
                p = next(path_iter)
            except StopIteration:
                return
            pending.append((p, pool.submit(_prepare_path, p, crop, max_side)))

    def run_batch(batch: list[tuple[Any, Prepared]]) -> list[ScoreRecord]:
        crops = torch.stack([prep.crops for _, prep in batch])
        with torch.inference_mode():
            raw = model.raw_from_crops(crops).double().cpu().numpy()
        scores = model.to_score(raw)
        return [
            ScoreRecord(display_path(p), float(s), float(r), prep.width, prep.height, prep.flags)
            for (p, prep), s, r in zip(batch, scores, raw, strict=True)
        ]

    # Build the optimised encoder before any decoding thread starts: tracing silences its warnings with
    # warnings.catch_warnings(), which is not thread-safe against other threads doing the same.
    model._inference_encoder(torch.zeros(1, 3, crop, crop, device=model.device))
    pool = ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="shamisa-decode")
    try:
        submit_more(pool)
        # out holds items in input order: ("ok", path, Prepared) or ("err", record)
        out: list[tuple[str, Any, Any]] = []
        n_ok = 0
        while pending:
            p, fut = pending.popleft()
            try:
                prep = fut.result()
                out.append(("ok", p, prep))
                n_ok += 1
            except ShamisaError as e:
                if raise_errors:
                    raise
                reason = e.reason if isinstance(e, ImageLoadError) else str(e)
                out.append(("err", ScoreRecord(display_path(p), error=reason), None))
            submit_more(pool)
            if n_ok >= batch_size or not pending:
                yield from _flush(out, run_batch)
                out, n_ok = [], 0
    finally:
        stop.set()
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _flush(out: list[tuple[str, Any, Any]], run_batch: Any) -> Iterator[ScoreRecord]:
    oks = [(p, prep) for kind, p, prep in out if kind == "ok"]
    scored = iter(run_batch(oks)) if oks else iter(())
    for kind, p, _ in out:
        yield next(scored) if kind == "ok" else p


# --------------------------------------------------------------------------------------------- loading


def _build_encoder_from_tensors(card: ModelCard, tensors: dict[str, torch.Tensor], source: str) -> nn.Module:
    from shamisa.errors import ConfigError
    from shamisa.models import build_encoder, load_backbone_state

    try:
        enc = build_encoder(card.encoder)
    except ConfigError as e:
        raise ModelFileError(f"{source}: {e}") from None
    load_backbone_state(enc, {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, source=source)
    if int(enc.feature_dim) != card.feature_dim:
        raise ModelFileError(
            f"{source}: encoder {card.encoder!r} gives {enc.feature_dim}-d features but the card says {card.feature_dim}"
        )
    return enc.eval()


class _Bf16Encoder(nn.Module):
    """Run an encoder in bfloat16 autocast on channels-last input (a copy: the model keeps its fp32 weights)."""

    def __init__(self, encoder: nn.Module, device_type: str) -> None:
        super().__init__()
        import copy

        self.inner = copy.deepcopy(encoder).eval().to(memory_format=torch.channels_last)
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.inner(x.contiguous(memory_format=torch.channels_last)).float()


def _traced_for_inference(module: nn.Module, x: torch.Tensor, *, fold: bool) -> Any:
    """Trace ``module`` on two of the crops, freeze it (and with ``fold`` run the oneDNN inference
    passes); None if tracing fails (the caller keeps eager mode, which is always correct)."""
    import warnings

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module.eval(), x[:2].clone(), check_trace=False)
            frozen = torch.jit.freeze(traced.eval())
            return torch.jit.optimize_for_inference(frozen) if fold else frozen
    except Exception:
        return None


def cpu_has_native_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """True if this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16), read from the flags in
    ``cpuinfo``; False where that file does not exist (not Linux). Without them ``precision="bf16"``
    is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def load(
    name_or_path: str | os.PathLike[str] = "default",
    *,
    device: str | torch.device | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    optimize: bool = True,
    precision: str = "fp32",
) -> QualityModel:
    """Load a bundled model by name (``"default"``; see :func:`list_models`) or a model file.

    Args:
        name_or_path: model name or path to a ``.safetensors`` model file written by
            ``shamisa fit`` / :func:`save_model`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or None / ``"auto"`` (CUDA when available).
        max_side: images with a longer side above this are downscaled first.
        optimize: on the CPU, run inference through a traced, frozen and inference-optimised copy of
            the encoder (same results, ~1.5x faster); False keeps eager mode.
        precision: ``"fp32"`` (default) or ``"bf16"``: bfloat16 encoder arithmetic, about 3x faster than
            fp32 on CPUs with native bfloat16 (AVX512-BF16 or AMX; see :func:`cpu_has_native_bf16`;
            slower than fp32 on CPUs without it) and on recent GPUs. Scores differ slightly from fp32
            (on CLIVE: raw scores within about 0.5 MOS points on average; see BENCHMARKS.md).

    Raises:
        ConfigError: unknown precision.
        ModelFileError: unknown name, missing/corrupt/mismatched file, unsupported format version.
    """
    from shamisa.regression import head_from_tensors

    path = model_path(name_or_path)
    card, enc_t, head_t = read_model_file(path)
    encoder = _build_encoder_from_tensors(card, enc_t, str(path))
    try:
        head = head_from_tensors(head_t)
    except ShamisaError:
        raise
    except Exception as e:
        raise ModelFileError(f"{path}: malformed head tensors ({type(e).__name__}: {e})") from None
    model = QualityModel(encoder, head, card, max_side=max_side, optimize=optimize, precision=precision)
    return model.to(_resolve_device(device))


# --------------------------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class HeadFit:
    """A ridge head fitted with the protocol, and its cross-validated agreement.

    Attributes:
        head: the final head, fitted on ALL images with the selected alpha.
        alpha: the penalty chosen by median validation SRCC over the splits.
        srcc, plcc: (S,) test-split SRCC / PLCC of heads fitted on each split's training images.
        n_images: number of images used.
    """

    head: Any
    alpha: float
    srcc: np.ndarray
    plcc: np.ndarray
    n_images: int
    grid: str = "protocol"

    @property
    def srcc_median(self) -> float:
        return float(np.median(self.srcc))

    @property
    def plcc_median(self) -> float:
        return float(np.median(self.plcc))

    def metrics(self) -> dict[str, Any]:
        """The card's ``metrics`` entry."""
        return {
            "srcc_median": round(self.srcc_median, 4),
            "plcc_median": round(self.plcc_median, 4),
            "splits": int(self.srcc.size),
            "alpha": self.alpha,
            "alpha_grid": self.grid,
            "n_images": self.n_images,
            "srcc_per_split": [round(float(v), 4) for v in self.srcc],
            "plcc_per_split": [round(float(v), 4) for v in self.plcc],
        }


def fit_head(features: np.ndarray, scores: np.ndarray, splits: Any, *, grid: str = "protocol") -> HeadFit:
    """The linear-probe protocol on precomputed features, then a final head on every image.

    Args:
        features: (N, 5, 2D) protocol features (``shamisa.probe.extract_features``).
        scores: (N,) human scores.
        splits: ``shamisa.datasets.Splits`` (train / val / test index arrays per split).
        grid: alpha grid name (``"protocol"``: 100 values in [1e-3, 1e3]; ``"budget"``: 24).

    Returns:
        :class:`HeadFit`: alpha chosen by the median validation SRCC over splits; per split a head on
        the training images with that alpha, scored on the test images (mean of 5 crop predictions);
        the final head fitted on all N images.
    """
    from shamisa.metrics import plcc, srcc
    from shamisa.regression import alpha_grid, fit_ridge, select_alpha

    y = np.asarray(scores, dtype=np.float64)
    alpha, _ = select_alpha(features, y, splits.train, splits.val, alpha_grid(grid))
    s_list, p_list = [], []
    for tr, te in zip(splits.train, splits.test, strict=True):
        h = fit_ridge(features[tr], y[tr], alpha)
        pred = h.predict_images(features[te])
        s_list.append(srcc(pred, y[te]))
        p_list.append(plcc(pred, y[te]))
    head = fit_ridge(features, y, alpha)
    return HeadFit(head, float(alpha), np.asarray(s_list), np.asarray(p_list), int(y.size), grid)


# --------------------------------------------------------------------------------------------- pyiqa-style


class ShamisaMetric(nn.Module):
    """pyiqa-style metric module: ``metric(x) -> (N,)`` scores in [0, 1], higher is better.

    ``x`` is a tensor (N, 3, H, W) / (3, H, W) in [0, 1], a path, a list of paths or a PIL image.
    Gradients flow to a tensor input that requires them (the encoder itself stays frozen).
    """

    lower_better = False
    score_range = "0, 1"
    metric_mode = "NR"

    def __init__(self, model: QualityModel, name: str = "shamisa") -> None:
        super().__init__()
        self.net = model
        self.metric_name = name

    @property
    def device(self) -> torch.device:
        return self.net.device

    def forward(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            if x.requires_grad:
                return self.net(x)
            with torch.inference_mode():
                return self.net(x).clone()
        return torch.as_tensor(np.atleast_1d(self.net.score(x)), dtype=torch.float32)


def create_metric(name: str = "shamisa", device: str | torch.device | None = None, **kwargs: Any) -> ShamisaMetric:
    """A pyiqa-style ``nn.Module`` for a bundled model name (``"shamisa"`` = ``"default"``) or model file.

    Attributes of the result: ``lower_better=False``, ``score_range="0, 1"``, ``metric_mode="NR"``.
    """
    return ShamisaMetric(load(name, device=device, **kwargs), name=str(name))

