"""Decoding any image file into an RGB float tensor, with clear errors; crops and scales.

Conventions: image tensors are float32 in [0, 1], RGB, shape (3, H, W) for one image or (B, 3, H, W)
for a batch. ImageNet normalisation happens inside the encoders, never here.

Decoding policy (documented in docs/bad-inputs.md):

* EXIF orientation is applied (``ImageOps.exif_transpose``).
* Grayscale (L, I, I;16, F), palette (P), CMYK, YCbCr, LAB, HSV are converted to RGB; 16-bit data keeps
  its precision (divided by 65535) before the conversion to float.
* An alpha channel (RGBA, LA, PA) is composited over a white background.
* Animated images (GIF, APNG, WebP) use their first frame.
* Images over ``max_pixels`` (default 178 956 970, Pillow's bomb limit x2) are refused before decoding
  as a decompression-bomb guard; JPEGs larger than ``draft_max_side`` are decoded at reduced size by
  libjpeg's DCT scaling, which keeps memory bounded.
* Truncated, corrupt, empty and non-image files raise :class:`~shamisa.errors.ImageLoadError` naming
  the file and the reason.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from shamisa.errors import ImageLoadError
from shamisa.fileio import atomic_path

# Our own pixel guard (``max_pixels``) runs before decoding; Pillow's softer warning is redundant.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm", ".jp2", ".j2k"}
)
DEFAULT_MAX_PIXELS = 2 * 89_478_485
MIN_SIDE = 8


def is_image_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert a PIL image of any mode to a (3, H, W) float32 RGB tensor in [0, 1]."""
    img = _to_rgb_pil_or_array(img)
    if isinstance(img, np.ndarray):
        arr = img
    else:
        arr = np.asarray(img, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return t.clamp_(0.0, 1.0)


def _to_rgb_pil_or_array(img: Image.Image) -> Image.Image | np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in {"I;16", "I;16L", "I;16B", "I;16N", "I"}:
        arr = np.asarray(img).astype(np.float32)
        scale = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        return np.clip(arr / scale, 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max(initial=1.0))
        return np.clip(arr / (255.0 if hi > 1.0 else 1.0), 0.0, 1.0)
    if mode in {"RGBA", "LA", "PA", "La", "RGBa"} or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "1":
        return img.convert("L").convert("RGB")
    return img.convert("RGB")


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_max_side: int | None = None,
    min_side: int = MIN_SIDE,
) -> torch.Tensor:
    """Read an image file into a (3, H, W) float32 RGB tensor in [0, 1].

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard), before decoding.
        draft_max_side: if given, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps
            the longer side >= this value, bounding memory for huge photos.
        min_side: refuse images whose shorter side is below this many pixels.

    Raises:
        ImageLoadError: with the path and a one-line reason.
    """
    p = Path(path)
    try:
        if p.is_symlink() and not p.exists():
            raise ImageLoadError(p, "broken symbolic link")
        if not p.exists():
            raise ImageLoadError(p, "no such file")
        if p.is_dir():
            raise ImageLoadError(p, "is a directory, not an image")
        if p.stat().st_size == 0:
            raise ImageLoadError(p, "empty file")
        with Image.open(p) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageLoadError(
                    p, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (decompression-bomb guard)"
                )
            if min(w, h) < min_side:
                raise ImageLoadError(p, f"image is {w}x{h}, smaller than the minimum side of {min_side} px")
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft_max_side is not None and img.format == "JPEG":
                scale = max(w, h) / draft_max_side
                if scale >= 2:
                    img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
            img.load()
            img = ImageOps.exif_transpose(img)
            return pil_to_tensor(img)
    except ImageLoadError:
        raise
    except PermissionError:
        raise ImageLoadError(p, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageLoadError(p, "not a recognised image format") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(p, f"refused as a possible decompression bomb ({e})") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower():
            msg = "truncated or corrupt image data"
        raise ImageLoadError(p, f"cannot decode: {msg}") from None
    except (ValueError, SyntaxError, TypeError, IndexError, EOFError, MemoryError) as e:
        raise ImageLoadError(p, f"cannot decode: {type(e).__name__}: {e}") from None


def to_batch(x: torch.Tensor) -> torch.Tensor:
    """Validate an image tensor and return it as (B, 3, H, W) float in [0, 1]."""
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected an image tensor of shape (N, 3, H, W) or (3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if not x.is_floating_point():
        x = x.float() / 255.0
    return x


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bicubic resize of (B, 3, H, W) or (3, H, W) to ``size`` = (H, W), clamped to [0, 1]."""
    squeeze = x.ndim == 3
    xb = x.unsqueeze(0) if squeeze else x
    out = F.interpolate(xb, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return out[0] if squeeze else out


def half_scale(x: torch.Tensor) -> torch.Tensor:
    """Downscale by 2 to (H // 2, W // 2), as the protocol's half-scale view."""
    h, w = x.shape[-2:]
    return resize(x, (max(1, h // 2), max(1, w // 2)))


def ensure_min_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """Upscale (bicubic, aspect kept) so that the shorter side is at least ``size``; else unchanged.

    Policy for images smaller than a crop: they are enlarged rather than padded, so that every crop
    is all image content. Scores of such images are less reliable; the scorer flags them.
    """
    h, w = x.shape[-2:]
    if min(h, w) >= size:
        return x
    s = size / min(h, w)
    return resize(x, (max(size, round(h * s)), max(size, round(w * s))))


def center_corners_crops(x: torch.Tensor, size: int = 224) -> torch.Tensor:
    """The protocol's 5 crops (center, top-left, top-right, bottom-left, bottom-right) of a (3, H, W) image.

    Returns (5, 3, size, size). The image must be at least ``size`` on both sides (see :func:`ensure_min_side`).
    """
    if x.ndim != 3:
        raise ValueError(f"expected (3, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"image {w}x{h} is smaller than the crop size {size}")
    top, left = (h - size) // 2, (w - size) // 2
    boxes = [(top, left), (0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    return torch.stack([x[:, t : t + size, l : l + size] for t, l in boxes])


def two_scale_crops(x: torch.Tensor, size: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-scale and half-scale 5-crop stacks of one image, each (5, 3, size, size).

    Images too small for a crop at a scale are enlarged first (:func:`ensure_min_side`).
    """
    full = ensure_min_side(x, size)
    half = ensure_min_side(half_scale(x), size)
    return center_corners_crops(full, size), center_corners_crops(half, size)


def save_image(x: torch.Tensor, path: str | os.PathLike[str], **kwargs: object) -> None:
    """Save a (3, H, W) tensor in [0, 1] atomically; the format follows the file extension."""
    arr = (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    dest = Path(path)
    fmt = Image.registered_extensions().get(dest.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image extension {dest.suffix!r} for {dest}")
    with atomic_path(dest) as tmp:
        Image.fromarray(arr).save(tmp, format=fmt, **kwargs)
