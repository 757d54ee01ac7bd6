"""Training-free saliency and multi-scale crop sampling for LML-IQA.

LML-IQA picks, for every training image, the most salient of several crops as the anchor of its
local-manifold contrastive loss. This module holds the pieces that do not need a network:

* :func:`spectral_residual_saliency` -- the spectral-residual saliency map of Hou & Zhang (CVPR 2007),
  computed with ``torch.fft`` on a downsampled grey image and resized back to the input size;
* :func:`sample_crop_boxes` -- the multi-scale crop layout: boxes in original-image coordinates, each
  with the scale at which it is read (1 = full scale, 0.5 = half scale);
* :func:`extract_crops` -- reads the boxes out of an image into a ``(M, 3, crop, crop)`` stack;
* :func:`box_means` -- the mean of a map over every box (summed-area table, O(1) per box), which turns a
  saliency map into one score per crop;
* :func:`select_anchor` -- the index of the highest-scoring crop.

A box is ``(top, left, extent)`` in the coordinates of the (possibly enlarged) image: a full-scale crop
covers ``crop x crop`` pixels, a half-scale crop covers ``2*crop x 2*crop`` pixels and is resized to
``crop x crop`` (the same content as a crop of the half-scale image). Scoring boxes on one full-resolution
map makes full- and half-scale crops comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from shamisa.images import ensure_min_side, resize

# ITU-R BT.601 luma weights
_LUMA = (0.299, 0.587, 0.114)


def _gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with reflect padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel1d(sigma).to(x)
    r = k.numel() // 2
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x


def spectral_residual_saliency(
    x: torch.Tensor, *, work_size: int = 64, avg_size: int = 3, sigma: float = 3.0
) -> torch.Tensor:
    """Spectral-residual saliency map (Hou & Zhang, "Saliency detection: a spectral residual approach", 2007).

    The image is converted to grey and resized so that its longer side is ``work_size`` pixels. With
    ``A`` the log amplitude and ``P`` the phase of its 2-D Fourier transform, the spectral residual is
    ``R = A - mean_filter(A)`` (an ``avg_size x avg_size`` box filter); the saliency map is
    ``|IFFT(exp(R + iP))|^2`` smoothed by a Gaussian (``sigma`` pixels at the working size), resized
    back to the input size and min-max normalised to [0, 1] per image.

    Args:
        x: image(s), (3, H, W) or (B, 3, H, W), float in [0, 1].
        work_size: longer side of the working resolution (the paper uses 64).
        avg_size: side of the box filter on the log spectrum (the paper uses 3).
        sigma: Gaussian smoothing of the map, in working-resolution pixels.

    Returns:
        (H, W) or (B, H, W) float32 maps in [0, 1]; a constant image gives an all-zero map.
    """
    squeeze = x.ndim == 3
    xb = x.unsqueeze(0) if squeeze else x
    if xb.ndim != 4 or xb.shape[1] != 3:
        raise ValueError(f"expected (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    xb = xb.float()
    h, w = xb.shape[-2:]
    luma = torch.tensor(_LUMA, dtype=xb.dtype, device=xb.device).view(1, 3, 1, 1)
    grey = (xb * luma).sum(1, keepdim=True)
    s = work_size / max(h, w)
    wh, ww = max(8, round(h * s)), max(8, round(w * s))
    small = F.interpolate(grey, size=(wh, ww), mode="area")[:, 0].double()
    spec = torch.fft.fft2(small)
    log_amp = torch.log(spec.abs() + 1e-8)
    phase = torch.angle(spec)
    pad = avg_size // 2
    smooth = F.avg_pool2d(
        F.pad(log_amp.unsqueeze(1), (pad, pad, pad, pad), mode="replicate"), avg_size, stride=1
    )[:, 0]
    residual = log_amp - smooth
    sal = torch.fft.ifft2(torch.exp(torch.complex(residual, phase))).abs() ** 2
    sal = _blur(sal.unsqueeze(1).float(), sigma)
    sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    lo = sal.amin(dim=(1, 2), keepdim=True)
    hi = sal.amax(dim=(1, 2), keepdim=True)
    flat = small.flatten(1).std(dim=1).view(-1, 1, 1) < 1e-6  # a constant image has no salient region
    sal = torch.where((hi - lo > 1e-12) & ~flat, (sal - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(sal))
    return sal[0] if squeeze else sal


def box_means(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Mean of a map over each box, via a summed-area table.

    Args:
        values: (H, W) map.
        boxes: (M, 3) integer boxes ``(top, left, extent)`` (extra columns are ignored), inside the map.

    Returns:
        (M,) float64 means.
    """
    if values.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got {tuple(values.shape)}")
    v = values.double()
    sat = F.pad(v.cumsum(0).cumsum(1), (1, 0, 1, 0))
    t, l, e = boxes[:, 0].long(), boxes[:, 1].long(), boxes[:, 2].long()
    b, r = t + e, l + e
    if (t < 0).any() or (l < 0).any() or (b > v.shape[0]).any() or (r > v.shape[1]).any():
        raise ValueError("a box lies outside the map")
    total = sat[b, r] - sat[t, r] - sat[b, l] + sat[t, l]
    return total / (e * e).double()


def prepare_image(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Enlarge an image whose shorter side is below ``crop`` (see :func:`shamisa.images.ensure_min_side`)."""
    return ensure_min_side(x, crop)


def sample_crop_boxes(
    height: int,
    width: int,
    crop: int,
    n_crops: int,
    scales: Sequence[float] = (1.0, 0.5),
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random multi-scale crop boxes for one image.

    Crops are assigned to scales round-robin (crop ``i`` gets ``scales[i % len(scales)]``). At scale ``s``
    a crop covers ``extent = round(crop / s)`` original pixels, clamped to the shorter image side (an image
    too small for a half-scale crop yields a box of the whole short side: the crop is then read at the
    largest scale the image allows). Positions are uniform over the valid range.

    Args:
        height, width: the image size; both must be >= ``crop`` (use :func:`prepare_image`).
        crop: output crop side in pixels.
        n_crops: number of boxes M (>= 1).
        scales: scale factors in (0, 1].
        generator: randomness.

    Returns:
        (M, 4) int64 tensor of ``(top, left, extent, scale_index)``.
    """
    if n_crops < 1:
        raise ValueError(f"n_crops must be >= 1, got {n_crops}")
    if min(height, width) < crop:
        raise ValueError(f"image {width}x{height} is smaller than the crop size {crop}")
    if not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"scales must be in (0, 1], got {tuple(scales)}")
    out = torch.empty(n_crops, 4, dtype=torch.long)
    for i in range(n_crops):
        si = i % len(scales)
        extent = min(round(crop / scales[si]), height, width)
        top = int(torch.randint(0, height - extent + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - extent + 1, (1,), generator=generator))
        out[i] = torch.tensor([top, left, extent, si])
    return out


def extract_crops(x: torch.Tensor, boxes: torch.Tensor, crop: int) -> torch.Tensor:
    """Read boxes out of a (3, H, W) image into a (M, 3, crop, crop) stack (anti-aliased resize when the
    box extent differs from ``crop``)."""
    crops = []
    for t, l, e in boxes[:, :3].tolist():
        patch = x[:, t : t + e, l : l + e]
        if e != crop:
            patch = resize(patch, (crop, crop))
        crops.append(patch)
    return torch.stack(crops)


def crop_saliency(x: torch.Tensor, boxes: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """Mean spectral-residual saliency of each box of one (3, H, W) image; (M,) float64."""
    return box_means(spectral_residual_saliency(x, **kwargs), boxes)  # type: ignore[arg-type]


def select_anchor(scores: torch.Tensor) -> torch.Tensor:
    """Index of the highest score along the last axis (first one on ties); (...,) int64."""
    return scores.argmax(dim=-1)
