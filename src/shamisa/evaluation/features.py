"""Frozen-encoder features for the linear probe, with an on-disk cache.

Protocol (SHAMISA / ARNIQA): for every image, the full-resolution image and its half-scale version
(:func:`shamisa.images.two_scale_crops`) each give 5 crops (center, top-left, top-right, bottom-left,
bottom-right). The encoder maps every crop to an L2-normalised representation h (D,). Crop k's feature
is ``concat(h(full crop k), h(half crop k))`` (2D,). An image therefore yields a (5, 2D) array, and a
list of N images an (N, 5, 2D) float32 array.

Pipeline: images are decoded and cropped in DataLoader worker processes (``num_workers``) while the
main process runs the encoder (channels-last memory format; optional bfloat16 autocast, off by
default, see docs/evaluation.md for the measured effect). Progress goes to stderr.

Cache: ``<cache_dir>/<dataset>-<encoder>-<key16>.npy`` plus a JSON sidecar. The key is a SHA-256 of
the protocol version, the encoder name and ``weights_hash()``, the dataset name, the list of absolute
image paths, the crop size and the autocast dtype. On load the sidecar must match the key, the array
shape and the file's SHA-256; anything else (stale, truncated, corrupt) is recomputed. Writes are atomic
(temporary file + rename) and, where ``fcntl`` exists, concurrent runs on the same key take a lock so the
second one waits and then reads the first one's result instead of recomputing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from shamisa.errors import ImageLoadError
from shamisa.fileio import atomic_path, atomic_write_json, sha256_file
from shamisa.images import load_image, two_scale_crops
from shamisa.progress import progress_bar

__all__ = [
    "PROTOCOL_VERSION",
    "N_CROPS",
    "FeatureEncoder",
    "ExtractionStats",
    "extract_features",
    "encode_image",
    "feature_cache_key",
    "feature_cache_paths",
    "cached_array",
    "load_cached_features",
]

PROTOCOL_VERSION = "probe-v1"
N_CROPS = 5


class FeatureEncoder(Protocol):
    """What :func:`extract_features` needs from an encoder (``shamisa.models.Encoder`` satisfies it)."""

    name: str
    feature_dim: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # (B,3,H,W) in [0,1] -> (B,D) L2-normalised

    def weights_hash(self) -> str: ...


@dataclass(frozen=True)
class ExtractionStats:
    """Timing of the last extraction (for benchmarks)."""

    n_images: int
    n_crops: int
    seconds: float
    cache_hit: bool

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("inf")

    @property
    def crops_per_s(self) -> float:
        return self.n_crops / self.seconds if self.seconds > 0 else float("inf")


last_stats: ExtractionStats | None = None


# --------------------------------------------------------------------------------------------------
# image -> crops


class _CropDataset(torch.utils.data.Dataset):
    """Index -> (index, (10, 3, s, s) crops: 5 full-scale then 5 half-scale) or a load error."""

    def __init__(self, paths: Sequence[str], crop: int) -> None:
        self.paths = list(paths)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            full, half = two_scale_crops(load_image(self.paths[i]), self.crop)
        except ImageLoadError as e:  # re-raised in the main process with the file name
            return i, None, e.reason
        return i, torch.cat([full, half]), None


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Any:
    return items


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# encoding


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _encode_crops(encoder: Any, crops: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """(B*10, 3, s, s) crops -> (B*10, D) float32 representations."""
    x = crops.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), _autocast(device, amp):
        h = encoder(x)
    return h.float()


def _pair_scales(h: torch.Tensor) -> torch.Tensor:
    """(B*10, D) ordered [img0 full 0..4, img0 half 0..4, img1 ...] -> (B, 5, 2D) = concat(full k, half k)."""
    d = h.shape[-1]
    h = h.reshape(-1, 2, N_CROPS, d)
    return torch.cat([h[:, 0], h[:, 1]], dim=-1)


def encode_image(encoder: Any, image: torch.Tensor, *, crop: int = 224, device: str = "cpu", amp: bool = False) -> np.ndarray:
    """The (5, 2D) probe features of one (3, H, W) image tensor (no cache)."""
    full, half = two_scale_crops(image, crop)
    return _pair_scales(_encode_crops(encoder, torch.cat([full, half]), torch.device(device), amp))[0].cpu().numpy()


# --------------------------------------------------------------------------------------------------
# cache


def absolute_path(p: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(p))


def feature_cache_key(encoder: Any, paths: Sequence[str | os.PathLike[str]], *, dataset_name: str, crop: int, amp: bool) -> str:
    """SHA-256 (hex) identifying a feature array: protocol, encoder weights, dataset, image list, crop, dtype."""
    h = hashlib.sha256()
    head = {
        "protocol": PROTOCOL_VERSION,
        "encoder": getattr(encoder, "name", type(encoder).__name__),
        "weights": encoder.weights_hash(),
        "dataset": dataset_name,
        "crop": int(crop),
        "autocast": "bf16" if amp else "fp32",
        "n": len(paths),
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    for p in paths:
        h.update(b"\0" + absolute_path(p).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def safe_name(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:60] or "x"


def feature_cache_paths(cache_dir: str | os.PathLike[str], key: str, *, dataset_name: str, encoder_name: str) -> tuple[Path, Path]:
    """(array file, JSON sidecar) for a cache key."""
    stem = f"{safe_name(dataset_name)}-{safe_name(encoder_name)}-{key[:16]}"
    folder = Path(cache_dir)
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def load_cached_features(npy: Path, meta: Path, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array if it is complete and matches ``key`` and ``shape``; else None."""
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("key") != key or tuple(info.get("shape", ())) != tuple(shape):
            return None
        if npy.stat().st_size != info.get("bytes") or sha256_file(npy) != info.get("sha256"):
            return None
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, json.JSONDecodeError, TypeError):
        return None
    if arr.shape != tuple(shape) or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    return arr


def _share(path: Path) -> None:
    """Give a cache file the permissions of a normally created file (temporary files are 0600),
    so a cache folder shared between users stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (POSIX); a no-op where fcntl is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# extraction


def _compute(
    encoder: Any,
    paths: Sequence[str],
    *,
    crop: int,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    amp: bool,
    progress: bool,
    label: str,
) -> np.ndarray:
    n = len(paths)
    d = int(encoder.feature_dim)
    out = np.empty((n, N_CROPS, 2 * d), dtype=np.float32)
    loader = torch.utils.data.DataLoader(
        _CropDataset(paths, crop),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None,
        persistent_workers=False,
    )
    was_training = getattr(encoder, "training", False)
    if hasattr(encoder, "eval"):
        encoder.eval()
    t0 = time.perf_counter()
    done = 0
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task(label, total=n, info="")
        for items in loader:
            for i, crops, reason in items:
                if crops is None:
                    raise ImageLoadError(paths[i], reason or "cannot decode")
            idx = [i for i, _, _ in items]
            batch = torch.cat([c for _, c, _ in items])  # (B*10, 3, s, s)
            h = _encode_crops(encoder, batch, device, amp)
            if h.shape != (batch.shape[0], d):
                raise RuntimeError(f"encoder returned shape {tuple(h.shape)}, expected {(batch.shape[0], d)}")
            out[idx] = _pair_scales(h).cpu().numpy()
            done += len(idx)
            rate = done / max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=len(idx), info=f"{rate:.1f} img/s")
    if was_training and hasattr(encoder, "train"):
        encoder.train()
    if not np.isfinite(out).all():
        raise RuntimeError("the encoder produced NaN or infinite features")
    return out


def extract_features(
    encoder: Any,
    paths: Sequence[str | os.PathLike[str]],
    *,
    crop: int = 224,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    num_workers: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
    dataset_name: str = "images",
    amp: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """Probe features of a list of images.

    Args:
        encoder: a frozen encoder (``.name``, ``.feature_dim``, ``.weights_hash()``, ``forward(x) -> h``),
            already on ``device``.
        paths: N image files.
        crop: crop side in pixels (224 in the paper).
        batch_size: images per forward pass (each contributes 10 crops).
        device: torch device of the encoder.
        num_workers: decoding worker processes (0: decode in the main process).
        cache_dir: folder of the feature cache; None disables caching.
        dataset_name: part of the cache key and file name.
        amp: bfloat16 autocast (off by default: it changes the features by a few percent, see
            docs/evaluation.md).
        progress: show a progress bar on stderr.

    Returns:
        (N, 5, 2D) float32: crop k = [h(full-scale crop k), h(half-scale crop k)], crops ordered
        center, top-left, top-right, bottom-left, bottom-right.

    Raises:
        ImageLoadError: an image cannot be read (evaluation needs every image).
    """
    global last_stats
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = [absolute_path(p) for p in paths]
    dev = torch.device(device)
    d = int(encoder.feature_dim)
    shape = (len(paths), N_CROPS, 2 * d)
    label = f"features {dataset_name}"
    compute_kwargs = dict(
        crop=crop, batch_size=batch_size, device=dev, num_workers=num_workers, amp=amp, progress=progress, label=label
    )
    t0 = time.perf_counter()
    if len(paths) == 0:
        return np.empty(shape, dtype=np.float32)
    if cache_dir is None:
        feats = _compute(encoder, paths, **compute_kwargs)
        last_stats = ExtractionStats(len(paths), 10 * len(paths), time.perf_counter() - t0, False)
        return feats

    key = feature_cache_key(encoder, paths, dataset_name=dataset_name, crop=crop, amp=amp)
    name = getattr(encoder, "name", "encoder")
    feats, hit = cached_array(
        cache_dir,
        key,
        stem=f"{safe_name(dataset_name)}-{safe_name(name)}",
        shape=shape,
        compute=lambda: _compute(encoder, paths, **compute_kwargs),
        info={
            "protocol": PROTOCOL_VERSION,
            "encoder": name,
            "weights_hash": encoder.weights_hash(),
            "dataset": dataset_name,
            "n_images": len(paths),
            "crop": crop,
            "autocast": "bf16" if amp else "fp32",
        },
        progress=progress,
    )
    last_stats = ExtractionStats(len(paths), 10 * len(paths), time.perf_counter() - t0, hit)
    return feats


def cached_array(
    cache_dir: str | os.PathLike[str],
    key: str,
    *,
    stem: str,
    shape: tuple[int, ...],
    compute: Callable[[], np.ndarray],
    info: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, bool]:
    """Return the cached float32 array for ``key`` or compute, store and return it.

    Files: ``<cache_dir>/<stem>-<key[:16]>.npy`` and ``.json`` (key, shape, size, SHA-256, ``info``).
    A sidecar that does not match (stale key, other shape, truncated or altered data) means a
    recompute. Concurrent callers with the same key serialise on a lock file.

    Returns:
        (array, cache_hit).
    """
    folder = Path(cache_dir)
    npy, meta = folder / f"{stem}-{key[:16]}.npy", folder / f"{stem}-{key[:16]}.json"
    cached = load_cached_features(npy, meta, key, shape)
    if cached is None:
        with _key_lock(npy.with_suffix(".lock")):
            cached = load_cached_features(npy, meta, key, shape)  # another run may have just written it
            if cached is None:
                t0 = time.perf_counter()
                arr = np.ascontiguousarray(compute(), dtype=np.float32)
                if arr.shape != tuple(shape):
                    raise RuntimeError(f"computed array has shape {arr.shape}, expected {tuple(shape)}")
                with atomic_path(npy) as tmp:
                    with open(tmp, "wb") as f:
                        np.save(f, arr, allow_pickle=False)
                        f.flush()
                        os.fsync(f.fileno())
                _share(npy)
                atomic_write_json(
                    meta,
                    {
                        "key": key,
                        **(info or {}),
                        "shape": list(shape),
                        "dtype": "float32",
                        "bytes": npy.stat().st_size,
                        "sha256": sha256_file(npy),
                        "seconds": round(time.perf_counter() - t0, 3),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    },
                )
                _share(meta)
                return arr, False
    if progress:
        print(f"cache hit: {npy}", file=sys.stderr)
    return cached, True
