"""Real image codecs for the ``jpeg`` and ``jpeg2000`` distortions (Pillow: libjpeg, OpenJPEG).

The codecs run on the CPU; a batch is encoded and decoded image by image in a thread pool (Pillow
releases the GIL while coding). Tensors on another device are moved to the CPU and back.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, features

#: Number of wavelet resolutions used for JPEG2000 (capped by the image size, see :func:`jpeg2000_pillow`).
J2K_RESOLUTIONS = 8
#: Lossy JPEG2000 as usually configured (and as MATLAB's lossy mode, used to make KADID-10k, does it):
#: the irreversible 9/7 wavelet and the irreversible colour transform (ICT). Pillow's defaults (5/3
#: wavelet, no colour transform) are about twice as slow to encode and code R, G, B independently.
J2K_IRREVERSIBLE = True
J2K_MCT = True


#: Implementations of the ``jpeg2000`` distortion: the real codec (default) or the labelled wavelet
#: approximation of :mod:`shamisa.distortions.wavelet_codec` (batched, runs on the tensors' device). The
#: engine takes the choice as an explicit ``jpeg2000_impl`` argument (``apply_distortion``, ``apply_levels``,
#: ``build_structured_batch``, ``PristineDataset``); there is no process-wide setting.
JPEG2000_IMPLS = ("openjpeg", "approx")
DEFAULT_JPEG2000_IMPL = "openjpeg"


def check_jpeg2000_impl(name: str) -> str:
    """``name`` if it is one of :data:`JPEG2000_IMPLS`; ValueError otherwise.

    ``"openjpeg"`` is the real codec; ``"approx"`` the wavelet approximation (an option for speed, e.g. to
    keep synthesis on a GPU: its outputs differ from the real codec's, see ``bench/jpeg2000_approx.py``).
    """
    if name not in JPEG2000_IMPLS:
        raise ValueError(f"unknown jpeg2000 implementation {name!r}; choose one of {', '.join(JPEG2000_IMPLS)}")
    return name


def thread_pool() -> ThreadPoolExecutor:
    """The engine's shared worker threads (codecs and per-sample random draws; both release the GIL).

    One pool per process: a forked data worker gets its own (the parent's threads do not survive a fork).
    """
    return _pool_for(os.getpid())


@lru_cache(maxsize=4)
def _pool_for(pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="shamisa-codec")


def has_jpeg2000() -> bool:
    """Whether Pillow was built with OpenJPEG."""
    return bool(features.check("jpg_2000"))


def _to_rgb_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) float in [0, 1] -> B RGB images (8 bits, rounded). The planes are converted to 8 bits as they
    are and interleaved by Pillow's ``merge``: about half the cost of a channels-last conversion copy."""
    planes = x.detach().float().clamp(0, 1).mul_(255.0).round_().to(device="cpu", dtype=torch.uint8).numpy()
    _, _, h, w = planes.shape
    return [
        Image.merge("RGB", [Image.frombuffer("L", (w, h), plane, "raw", "L", 0, 1) for plane in image])
        for image in planes
    ]


def _map_batch(
    x: torch.Tensor, params: list[float], codec: Callable[[Image.Image, float], np.ndarray]
) -> torch.Tensor:
    images = _to_rgb_images(x)
    n_threads = max(1, torch.get_num_threads())
    if len(params) > 1 and n_threads > 1:
        outs = list(thread_pool().map(codec, images, params))
    else:
        outs = [codec(im, p) for im, p in zip(images, params, strict=True)]
    y = torch.empty(x.shape, dtype=torch.float32)
    yn = y.numpy()
    for i, decoded in enumerate(outs):  # back to (3, H, W) in [0, 1], one pass per image (float32 arithmetic)
        np.divide(decoded.transpose(2, 0, 1), np.float32(255.0), out=yn[i], dtype=np.float32)
    return y.to(device=x.device, dtype=x.dtype)


def _decode_rgb(data: bytes) -> np.ndarray:
    """Decoded (H, W, 3) uint8 RGB (no conversion copy when the codestream already decodes to RGB)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _jpeg_one(im: Image.Image, quality: float) -> np.ndarray:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(min(100, max(1, round(quality)))))
    return _decode_rgb(buf.getvalue())


def _j2k_one(im: Image.Image, ratio: float) -> np.ndarray:
    w, h = im.size
    n_res = max(1, min(J2K_RESOLUTIONS, int(math.floor(math.log2(max(1, min(h, w))))) + 1))
    buf = io.BytesIO()
    im.save(
        buf,
        format="JPEG2000",
        quality_mode="rates",
        quality_layers=[max(1.0, float(round(ratio)))],
        num_resolutions=n_res,
        prog_order="LRCP",
        irreversible=J2K_IRREVERSIBLE,
        mct=1 if J2K_MCT else 0,
    )
    return _decode_rgb(buf.getvalue())


def jpeg_pillow(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Real JPEG (libjpeg via Pillow, 4:2:0 chroma subsampling) at per-sample ``quality`` (rounded, 1..100).

    Args:
        x: (B, 3, H, W) float in [0, 1].
        quality: (B,) JPEG quality.

    Returns:
        (B, 3, H, W) decoded images, same device and dtype.
    """
    return _map_batch(x, [float(q) for q in quality.tolist()], _jpeg_one)


def jpeg2000_pillow(x: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Real JPEG2000 (OpenJPEG via Pillow) at per-sample compression ``ratio`` (rounded).

    Rate mode with one quality layer, LRCP progression, the 9/7 wavelet with the colour transform (see
    :data:`J2K_MCT`) and ``min(8, floor(log2(min(H, W))) + 1)`` wavelet resolutions (OpenJPEG refuses
    more resolutions than the image size allows).

    Raises:
        RuntimeError: Pillow was built without OpenJPEG.
    """
    if not has_jpeg2000():
        raise RuntimeError("this Pillow build has no JPEG2000 (OpenJPEG) support; the jpeg2000 distortion needs it")
    return _map_batch(x, [float(r) for r in ratio.tolist()], _j2k_one)
