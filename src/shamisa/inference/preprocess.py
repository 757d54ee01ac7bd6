"""Image preparation for scoring: decode a file robustly (size and aspect limits, reduced JPEG
decoding), accept arrays, tensors and PIL images, and cut the protocol's crops.

Input policy (also in docs/bad-inputs.md): images whose shorter side is below ``crop`` are enlarged
(bicubic, aspect kept) and flagged ``enlarged``; images whose longer side exceeds ``max_side`` (default
2048) are downscaled (JPEGs are first decoded at reduced size by libjpeg) and flagged ``downscaled``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shamisa.errors import ImageLoadError, ShamisaError
from shamisa.images import load_image, pil_to_tensor, resize, two_scale_crops

__all__ = [
    "DEFAULT_MAX_SIDE",
    "MAX_ASPECT",
    "Prepared",
    "as_image_tensor",
    "display_path",
    "load_image_for_scoring",
    "prepare_image",
    "prepare_path",
]

DEFAULT_MAX_SIDE = 2048
"""Images whose longer side exceeds this are downscaled before cropping (bounded memory)."""
MAX_PIXELS_NON_JPEG = 64_000_000
"""Non-JPEG images over this many pixels are refused before decoding (JPEGs are decoded reduced)."""
MAX_PIXELS_JPEG = 2 * 89_478_485
MAX_ASPECT = 50
"""Images more elongated than this (longer / shorter side) are refused: enlarging them is unbounded."""


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


def as_image_tensor(x: Any) -> torch.Tensor:
    """PIL image / numpy (H, W[, C]) / tensor (3, H, W) -> (3, H, W) float32 in [0, 1]."""
    from PIL import Image

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


def prepare_path(path: Any, crop: int, max_side: int) -> Prepared:
    """Decode and prepare one file for scoring; any failure becomes an :class:`ImageLoadError`."""
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
