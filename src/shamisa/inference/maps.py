"""Spatial quality maps: where in an image the model sees quality drop.

Usage::

    import shamisa
    from shamisa.inference.maps import quality_map, save_overlay

    model = shamisa.load("default")
    qm = quality_map(model, "photo.jpg")          # also model.quality_map("photo.jpg")
    qm.map          # (H, W) float32, scores in [0, 1] (higher is better), aligned with the image
    qm.grid         # (rows, cols) float32: the score of each patch
    save_overlay(qm, "photo-map.png")             # the image with the map over it and a colour bar

How a map is made:

* The image is decoded and downscaled exactly as for scoring (``max_side``), then cut into square
  patches of ``patch`` pixels every ``stride`` pixels (defaults: the model's crop size, 224 for the
  bundled model, and half of it). The last row and column of patches are aligned with the bottom and
  right edges, so every pixel is covered.
* The value of a patch is the model's score of that patch taken as an image: for ``patch <= crop`` the
  patch (enlarged to the crop size if smaller) and its half-scale view (the patch downscaled by 2, then
  enlarged to the crop size, as the scorer does for small images) go through the encoder, their features
  are concatenated and the ridge head gives the raw score, mapped to [0, 1] like :meth:`score`. So
  ``map.grid[i, j] == model.score(patch_ij)`` (up to float rounding). For ``patch > crop`` the patch gets
  the full protocol (5 crops at 2 scales, averaged), as :meth:`score` would.
* The patches of all images of a call are stacked and go through the encoder in batches of
  ``batch_size`` patches; there is one forward pass per batch, never one full scoring per patch.
* The pixel map is the bilinear interpolation of the patch scores placed at the patch centres (held
  constant beyond the outermost centres), computed at the original image size.
* Images smaller than a patch (shorter side < ``patch``) are first enlarged (bicubic, aspect kept) until
  the shorter side equals ``patch``, like the scorer's ``enlarged`` policy, and flagged ``enlarged``; the
  map is still returned at the image's own size. Such an image has a single row (or column) of patches.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shamisa.errors import ConfigError, ImageLoadError, ShamisaError

__all__ = [
    "QualityMap",
    "patch_grid",
    "default_patch",
    "quality_map",
    "quality_maps",
    "upsample_grid",
    "render_overlay",
    "save_overlay",
    "heatmap_rgba",
    "COLORMAP",
]

COLORMAP = "RdYlGn"
"""Matplotlib colour map of the overlays: red = low quality, green = high."""
MIN_PATCH = 32
DEFAULT_PATCH_BATCH_CPU = 16
DEFAULT_PATCH_BATCH_CUDA = 128


@dataclass(frozen=True)
class QualityMap:
    """The quality map of one image.

    Attributes:
        map: (H, W) float32 scores in [0, 1] (higher is better) at the image's own size.
        grid: (rows, cols) float32 patch scores; ``raw_grid`` the same on the head's raw scale.
        centres_y, centres_x: patch centres in the image's own pixel coordinates (float64).
        patch, stride: in pixels of the processed image (after any downscale / enlargement).
        scale: processed size / original size (1.0 unless downscaled to ``max_side`` or enlarged).
        width, height: the image's own size.
        flags: ``downscaled`` and/or ``enlarged`` as for scoring.
        image: the (3, h, w) processed image in [0, 1] (for overlays; not the original resolution when
            downscaled).
        name: where it came from (a path, or ``image N``).
    """

    map: np.ndarray
    grid: np.ndarray
    raw_grid: np.ndarray
    centres_y: np.ndarray
    centres_x: np.ndarray
    patch: int
    stride: int
    scale: float
    width: int
    height: int
    flags: tuple[str, ...] = ()
    image: torch.Tensor | None = field(default=None, repr=False, compare=False)
    name: str = ""

    @property
    def score_range(self) -> tuple[float, float]:
        return float(self.grid.min()), float(self.grid.max())

    def to_dict(self, *, map_step: int | None = None) -> dict[str, Any]:
        """JSON-ready: the patch grid, its centres and the map subsampled every ``map_step`` pixels
        (default: so that the longer side has at most 512 values)."""
        step = map_step or max(1, math.ceil(max(self.width, self.height) / 512))
        return {
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "patch": self.patch,
            "stride": self.stride,
            "scale": round(self.scale, 6),
            "flags": list(self.flags),
            "grid": np.round(self.grid.astype(np.float64), 6).tolist(),
            "raw_grid": np.round(self.raw_grid.astype(np.float64), 6).tolist(),
            "centres_x": np.round(self.centres_x, 3).tolist(),
            "centres_y": np.round(self.centres_y, 3).tolist(),
            "map_step": step,
            "map": np.round(self.map[::step, ::step].astype(np.float64), 5).tolist(),
        }


# ---------------------------------------------------------------------------------------------- geometry


def default_patch(model: Any) -> int:
    """The model's crop size (what its encoder and head were fitted on)."""
    return int(model.card.crop)


def _check_patch_stride(patch: int, stride: int) -> None:
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < MIN_PATCH:
        raise ConfigError(f"patch must be an integer >= {MIN_PATCH} pixels, got {patch!r}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride:
        raise ConfigError(f"stride must be a positive integer, got {stride!r}")
    if stride > patch:
        raise ConfigError(f"stride ({stride}) must not exceed the patch size ({patch}): pixels would be left out")


def _starts(length: int, patch: int, stride: int) -> list[int]:
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def patch_grid(height: int, width: int, patch: int, stride: int) -> tuple[list[int], list[int]]:
    """Top and left coordinates of the patches of an image (both sides >= ``patch``): every ``stride``
    pixels from 0, plus a last one aligned with the far edge when the stride does not land on it.

    Raises:
        ConfigError: patch < 32, stride < 1, stride > patch, or the image smaller than a patch.
    """
    _check_patch_stride(patch, stride)
    if height < patch or width < patch:
        raise ConfigError(f"image {width}x{height} is smaller than the patch size {patch} (enlarge it first)")
    return _starts(height, patch, stride), _starts(width, patch, stride)


def upsample_grid(
    grid: np.ndarray, centres_y: np.ndarray, centres_x: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Bilinear interpolation of patch values placed at their centres onto every pixel (``height`` x
    ``width``, centres in the same pixel coordinates); constant beyond the outermost centres."""
    g = np.asarray(grid, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64) + 0.5
    xs = np.arange(width, dtype=np.float64) + 0.5

    def weights(coords: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.asarray(centres, dtype=np.float64)
        if c.size == 1:
            z = np.zeros(coords.size, dtype=np.int64)
            return z, z, np.zeros(coords.size)
        q = np.clip(coords, c[0], c[-1])
        i1 = np.clip(np.searchsorted(c, q, side="right"), 1, c.size - 1)
        i0 = i1 - 1
        t = (q - c[i0]) / (c[i1] - c[i0])
        return i0, i1, t

    y0, y1, ty = weights(ys, centres_y)
    x0, x1, tx = weights(xs, centres_x)
    rows = g[y0] * (1.0 - ty)[:, None] + g[y1] * ty[:, None]  # (H, cols)
    out = rows[:, x0] * (1.0 - tx)[None, :] + rows[:, x1] * tx[None, :]
    return out.astype(np.float32)


# ---------------------------------------------------------------------------------------------- inputs


def _load_one(item: Any, index: int, max_side: int) -> tuple[torch.Tensor, str, int, int]:
    """Any accepted input -> ((3, H, W) in [0, 1], name, original width, original height)."""
    from shamisa.inference.preprocess import _peek, as_image_tensor, display_path, load_image_for_scoring

    if isinstance(item, (str, os.PathLike)):
        name = display_path(item)
        try:
            x = load_image_for_scoring(item, max_side)
        except ShamisaError:
            raise
        except MemoryError:
            raise ImageLoadError(name, "out of memory while decoding") from None
        except Exception as e:
            raise ImageLoadError(name, f"cannot process: {type(e).__name__}: {e}") from None
        _, size = _peek(item)  # the file's own size, also when a JPEG was decoded reduced
        h, w = int(x.shape[1]), int(x.shape[2])
        if size is not None and (size[0] >= w) == (size[1] >= h):
            w, h = size
        return x, name, w, h
    name = f"image {index}"
    try:
        x = as_image_tensor(item)
    except (ValueError, TypeError) as e:
        raise ImageLoadError(name, str(e)) from None
    from shamisa.images import MIN_SIDE

    if min(x.shape[1], x.shape[2]) < MIN_SIDE:
        raise ImageLoadError(name, f"image is {x.shape[2]}x{x.shape[1]}, smaller than the minimum side of {MIN_SIDE} px")
    return x, name, int(x.shape[2]), int(x.shape[1])


def _split_inputs(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ConfigError("no images given (empty list)")
        return list(images)
    return [images]


# ---------------------------------------------------------------------------------------------- maps


def _patch_views(patches: torch.Tensor, crop: int) -> torch.Tensor:
    """(N, 3, P, P) patches, P <= crop -> (N, 2, 3, crop, crop): the full and half-scale views the
    scorer builds for a P x P image (5 identical crops at each scale, so one suffices)."""
    from shamisa.images import resize

    p = patches.shape[-1]
    full = patches if p == crop else resize(patches, (crop, crop))
    half = resize(patches, (max(1, p // 2), max(1, p // 2)))
    half = resize(half, (crop, crop))
    return torch.stack([full, half], dim=1)


def quality_maps(
    model: Any,
    images: Any,
    *,
    patch: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
) -> list[QualityMap]:
    """Quality maps of several images, their patches scored in shared encoder batches.

    Args:
        model: a :class:`shamisa.inference.quality_model.QualityModel`.
        images: paths, PIL images, numpy arrays (H, W[, C]), tensors (3, H, W) / (N, 3, H, W) in [0, 1],
            or a list of these.
        patch: patch side in pixels (default: the model's crop size).
        stride: step between patches (default: ``patch // 2``).
        batch_size: patches per encoder pass (default 16 on the CPU, 128 on CUDA).

    Returns:
        One :class:`QualityMap` per image, in order.

    Raises:
        ConfigError: invalid patch / stride / batch size, or no images.
        ImageLoadError: an image cannot be read or is not a valid image array.
    """
    crop = int(model.card.crop)
    patch = default_patch(model) if patch is None else patch
    if stride is None and isinstance(patch, (int, np.integer)) and not isinstance(patch, bool):
        stride = max(1, int(patch) // 2)
    _check_patch_stride(patch, stride)  # type: ignore[arg-type]
    patch, stride = int(patch), int(stride)  # type: ignore[arg-type]
    if batch_size is None:
        batch_size = DEFAULT_PATCH_BATCH_CUDA if model.device.type == "cuda" else DEFAULT_PATCH_BATCH_CPU
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    from shamisa.images import resize
    from shamisa.inference.preprocess import MAX_ASPECT, prepare_image

    items = _split_inputs(images)
    metas: list[dict[str, Any]] = []
    views: list[torch.Tensor] = []  # per image (n_patches, k, 3, crop, crop)
    for i, item in enumerate(items):
        x, name, w0, h0 = _load_one(item, i, model.max_side)
        h, w = int(x.shape[1]), int(x.shape[2])
        if max(h, w) > MAX_ASPECT * min(h, w):
            raise ImageLoadError(name, f"image is {w}x{h}, more elongated than the {MAX_ASPECT}:1 limit")
        flags: list[str] = []
        if max(h, w) > model.max_side:
            s = model.max_side / max(h, w)
            x = resize(x, (max(1, round(h * s)), max(1, round(w * s))))
            flags.append("downscaled")
        if min(x.shape[1], x.shape[2]) < patch:
            s = patch / min(x.shape[1], x.shape[2])
            x = resize(x, (max(patch, round(x.shape[1] * s)), max(patch, round(x.shape[2] * s))))
            flags.append("enlarged")
        hp, wp = int(x.shape[1]), int(x.shape[2])
        tops, lefts = patch_grid(hp, wp, patch, stride)
        patches = torch.stack([x[:, t : t + patch, l : l + patch] for t in tops for l in lefts])
        if patch <= crop:
            v = _patch_views(patches, crop)
        else:
            v = torch.stack([prepare_image(p, crop, model.max_side).crops for p in patches])
        views.append(v)
        sy, sx = h0 / hp, w0 / wp
        metas.append({
            "name": name, "w0": w0, "h0": h0, "shape": (len(tops), len(lefts)), "flags": tuple(flags),
            "cy": (np.asarray(tops, dtype=np.float64) + patch / 2) * sy,
            "cx": (np.asarray(lefts, dtype=np.float64) + patch / 2) * sx,
            "scale": hp / h0, "image": x,
        })
    raws = _raw_patch_scores(model, torch.cat(views), int(batch_size))
    out: list[QualityMap] = []
    start = 0
    for m in metas:
        rows, cols = m["shape"]
        raw = raws[start : start + rows * cols].reshape(rows, cols)
        start += rows * cols
        grid = model.to_score(raw).astype(np.float32)
        out.append(
            QualityMap(
                map=upsample_grid(grid, m["cy"], m["cx"], m["h0"], m["w0"]),
                grid=grid,
                raw_grid=raw.astype(np.float32),
                centres_y=m["cy"],
                centres_x=m["cx"],
                patch=patch,
                stride=stride,
                scale=float(m["scale"]),
                width=m["w0"],
                height=m["h0"],
                flags=m["flags"],
                image=m["image"],
                name=m["name"],
            )
        )
    return out


def _raw_patch_scores(model: Any, views: torch.Tensor, batch_size: int) -> np.ndarray:
    """(N, k, 3, c, c) views, k = 2 (full, half) or 10 (5 full then 5 half) -> (N,) raw scores."""
    n, k = views.shape[:2]
    raws = np.empty(n, dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, n, batch_size):
            v = views[s : s + batch_size]
            b = v.shape[0]
            x = v.reshape(b * k, *v.shape[2:]).to(model.device)
            h = model._inference_encoder(x)(x).float().reshape(b, 2, k // 2, -1)
            feats = torch.cat([h[:, 0], h[:, 1]], dim=-1)  # (b, k/2, 2D): full || half per crop
            raws[s : s + b] = model.predict_raw(feats).double().cpu().numpy()
    return raws


def quality_map(
    model: Any, image: Any, *, patch: int | None = None, stride: int | None = None, batch_size: int | None = None
) -> QualityMap:
    """The quality map of one image (see :func:`quality_maps`)."""
    if isinstance(image, (list, tuple)) or (isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4):
        raise ConfigError("quality_map takes one image; use quality_maps for several")
    return quality_maps(model, [image], patch=patch, stride=stride, batch_size=batch_size)[0]


# ---------------------------------------------------------------------------------------------- rendering


def _value_range(qm: QualityMap, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    lo, hi = qm.score_range
    lo = lo if vmin is None else float(vmin)
    hi = hi if vmax is None else float(vmax)
    if hi - lo < 0.05:  # a nearly uniform map: show a span of 0.05 around it rather than amplify noise
        mid = (hi + lo) / 2
        lo, hi = max(0.0, mid - 0.025), min(1.0, mid + 0.025)
        if hi - lo < 0.05:
            lo, hi = (0.0, 0.05) if lo <= 0.0 else (0.95, 1.0)
    return lo, hi


def heatmap_rgba(
    qm: QualityMap, *, max_side: int = 1024, vmin: float | None = None, vmax: float | None = None
) -> tuple[bytes, float, float]:
    """The map alone as an opaque colour PNG (no axes), at most ``max_side`` pixels on its longer
    side, aspect as the image; returns (png bytes, vmin, vmax) of its colour scale."""
    from matplotlib import colormaps
    from PIL import Image

    lo, hi = _value_range(qm, vmin, vmax)
    s = min(1.0, max_side / max(qm.width, qm.height))
    w, h = max(1, round(qm.width * s)), max(1, round(qm.height * s))
    small = upsample_grid(qm.grid, qm.centres_y * s, qm.centres_x * s, h, w) if s < 1 else qm.map
    rgba = colormaps[COLORMAP](np.clip((small - lo) / (hi - lo), 0.0, 1.0), bytes=True)
    buf = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buf, format="PNG")
    return buf.getvalue(), lo, hi


def render_overlay(
    qm: QualityMap,
    *,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> bytes:
    """A PNG of the image with its quality map over it (``alpha`` opacity) and a colour bar in score
    units (matplotlib's Agg backend; thread-safe, no display needed). The colour scale spans the map's
    own range unless ``vmin`` / ``vmax`` are given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if qm.image is None:
        raise ConfigError("this map carries no image to draw under it")
    lo, hi = _value_range(qm, vmin, vmax)
    img = qm.image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    h, w = img.shape[:2]
    long_side = 8.0
    fig_w, fig_h = (long_side, long_side * h / w) if w >= h else (long_side * w / h, long_side)
    fig = Figure(figsize=(fig_w + 1.4, fig_h + 0.6), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.04, fig_w / (fig_w + 1.4) - 0.02, 0.88))
    ax.imshow(img, interpolation="bilinear")
    map_img = upsample_grid(qm.grid, qm.centres_y * (h / qm.height), qm.centres_x * (w / qm.width), h, w)
    im = ax.imshow(map_img, cmap=COLORMAP, vmin=lo, vmax=hi, alpha=float(alpha), interpolation="bilinear")
    ax.set_axis_off()
    if title is None:
        title = f"{Path(qm.name).name}: patch scores {qm.grid.min():.3f} to {qm.grid.max():.3f}"
    ax.set_title(title, fontsize=10)
    cax = fig.add_axes((fig_w / (fig_w + 1.4) + 0.01, 0.1, 0.025, 0.76))
    cb = fig.colorbar(im, cax=cax)
    cb.solids.set_alpha(1.0)
    cb.set_label("quality score (0-1, higher is better)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_overlay(qm: QualityMap, path: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Write :func:`render_overlay` to ``path`` atomically."""
    from shamisa.fileio import atomic_path

    dest = Path(path)
    data = render_overlay(qm, **kwargs)
    with atomic_path(dest) as tmp:
        Path(tmp).write_bytes(data)
    return dest


class OverlayWriter:
    """Writes one overlay PNG per image into a folder (``shamisa score --map DIR``): ``<stem>.map.png``,
    ``<stem>-2.map.png`` when two inputs share a stem."""

    def __init__(self, model: Any, folder: str | os.PathLike[str], *, patch: int | None = None,
                 stride: int | None = None) -> None:
        self.model = model
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(f"{self.folder}: exists and is not a folder (--map needs a folder)")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.patch, self.stride = patch, stride
        self.written: list[Path] = []
        self._used: set[str] = set()

    def _name(self, source: str) -> Path:
        stem = Path(source).stem or "image"
        name, n = f"{stem}.map.png", 1
        while name in self._used:
            n += 1
            name = f"{stem}-{n}.map.png"
        self._used.add(name)
        return self.folder / name

    def write(self, image: Any, name: str | None = None) -> Path:
        """Map ``image`` (a path or any input of :func:`quality_map`) and write its overlay."""
        qm = quality_map(self.model, image, patch=self.patch, stride=self.stride)
        out = save_overlay(qm, self._name(name or qm.name))
        self.written.append(out)
        return out
