"""The 26 distortion functions, batched.

Convention (every function):

* ``x``: (B, 3, H, W) float in [0, 1], RGB, any device;
* ``v``: (B,) parameter values (the level-table unit of the type, see :mod:`shamisa.distortions.levels`),
  one per sample, any device / dtype;
* ``seeds``: (B,) int64 CPU tensor, one seed per sample. Every random draw of sample ``i`` is made on the CPU
  from ``seeds[i]`` and then moved to ``x.device``: the output of a sample depends only on its image, value
  and seed, never on the batch it sits in or on the device. Per-pixel draws (the normal noise of the noise types
  and jitter, through a table of normal quantiles, see :data:`NORMAL_TABLE_BITS`; impulsenoise's uniforms) come
  from numpy's SFC64 generator seeded with ``seeds[i]``; every other draw from a CPU ``torch.Generator`` seeded
  with ``seeds[i]``.
  Deterministic types ignore ``seeds``.
* returns (B, 3, H, W); the caller (:func:`shamisa.distortions.apply_distortion`) clamps to [0, 1] and casts
  back to the input dtype.

Filtering uses replicate borders (as MATLAB ``imfilter(..., 'replicate')`` in KADID-10k). Samples that
share a kernel (a structured batch has at most one value per level) are filtered together; separable
kernels use shift-and-add (short) or banded matrix products (long), 2-D kernels shift-and-add (up to 7x7)
or the FFT. These choices are made for CPUs, where depthwise convolutions are slow; the same code runs on
CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from shamisa.distortions.codecs import jpeg2000_pillow, jpeg_pillow, thread_pool
from shamisa.distortions.colour_matrix import mix3, numpy_ok
from shamisa.distortions.wavelet_codec import WaveletAnalysis, jpeg2000_analysis, jpeg2000_synthesis

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _col(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) on x's device and dtype."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _seed_list(seeds: Tensor | None, n: int) -> list[int]:
    """The ``n`` per-sample seeds as ints; ValueError when they are missing or their count is wrong."""
    if seeds is None:
        raise ValueError("this distortion is stochastic: per-sample seeds are required")
    if seeds.numel() != n:
        raise ValueError(f"expected {n} seeds, got {seeds.numel()}")
    return [int(s) for s in seeds.tolist()]


def _gens(seeds: Tensor | None, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in _seed_list(seeds, n)]


def _rand(seeds: Tensor | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Per-sample uniform [0, 1) draws of ``shape`` -> (B, *shape) on like's device; sample ``i``'s draws are a
    function of ``seeds[i]`` alone: the top 23 bits of each 32-bit word of numpy's SFC64 stream seeded with it, as
    the mantissa of a float in [1, 2), minus 1 (multiples of 2**-23). On CPUs about a third of the cost of
    ``torch.Tensor.uniform_``. The samples are filled in parallel when torch has several threads (numpy releases
    the GIL while drawing)."""
    b = like.shape[0]
    n = math.prod(shape)
    seed_list = _seed_list(seeds, b)
    out = torch.empty((b, n), dtype=torch.float32)
    flat = out.numpy()

    def fill(i: int) -> None:
        bits = flat[i].view(np.uint32)
        words = np.random.SFC64(seed_list[i] & 0xFFFF_FFFF_FFFF_FFFF).random_raw(-(-n // 2)).view(np.uint32)[:n]
        np.right_shift(words, 9, out=bits)
        np.bitwise_or(bits, np.uint32(0x3F80_0000), out=bits)  # 1.m: a float in [1, 2)
        np.subtract(flat[i], np.float32(1.0), out=flat[i])

    if b > 1 and torch.get_num_threads() > 1:
        list(thread_pool().map(fill, range(b)))
    else:
        for i in range(b):
            fill(i)
    return out.view(b, *shape).to(device=like.device, dtype=like.dtype)


#: Normal deviates are drawn by inverse-transform sampling from a table: each 16-bit word of the sample's
#: SFC64 stream picks one of the ``2**16`` standard-normal quantiles at ``(k + 1/2) / 2**16`` (rescaled to
#: unit variance). That is a discrete, equiprobable stand-in for N(0, 1) whose steps are far below an 8-bit
#: level of any noise amplitude used here; the tails stop at +-4.33 (a mass of 1.5e-5 lies beyond). On CPUs
#: it costs about half of ``torch.Tensor.normal_`` (one table look-up per deviate, where torch's
#: Mersenne Twister is sequential), and the jitter and noise types draw millions of deviates per item.
NORMAL_TABLE_BITS = 16


@lru_cache(maxsize=1)
def _normal_table() -> np.ndarray:
    q = (torch.arange(2**NORMAL_TABLE_BITS, dtype=torch.float64) + 0.5) / 2**NORMAL_TABLE_BITS
    t = torch.special.ndtri(q)
    return (t / t.square().mean().sqrt()).to(torch.float32).numpy()


def _randn(seeds: Tensor | None, shape: tuple[int, ...], like: Tensor, scale: Tensor | None = None) -> Tensor:
    """Per-sample standard-normal draws of ``shape`` (see :data:`NORMAL_TABLE_BITS`) -> (B, *shape) on like's
    device; sample ``i``'s deviates are a function of ``seeds[i]`` alone. With ``scale`` ((B,) float32), sample
    ``i``'s deviates are multiplied by ``scale[i]`` (through its own scaled table: equal to multiplying the draws,
    without a pass over them)."""
    b = like.shape[0]
    n = math.prod(shape)
    table = torch.from_numpy(_normal_table())
    out = torch.empty((b, n), dtype=torch.float32)
    for i, seed in enumerate(_seed_list(seeds, b)):
        words = np.random.SFC64(seed & 0xFFFF_FFFF_FFFF_FFFF).random_raw(-(-n // 4)).view(np.uint16)[:n]
        # torch's index_select with int32 indices: ~1.5x cheaper than numpy's take with the 16-bit words
        values = table if scale is None else table * scale[i]
        torch.index_select(values, 0, torch.from_numpy(words.astype(np.int32)), out=out[i])
    return out.view(b, *shape).to(device=like.device, dtype=like.dtype)


def _all_same(k: Tensor) -> bool:
    return bool((k == k[:1]).all())


def _by_unique_kernel(x: Tensor, k: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor | None:
    """Apply ``fn(x_group, k_row[None])`` once per distinct kernel when kernels repeat across the batch
    (a structured batch has at most one value per level); None when every kernel is different."""
    uniq, inverse = torch.unique(k.reshape(k.shape[0], -1), dim=0, return_inverse=True)
    if uniq.shape[0] * 2 > k.shape[0]:
        return None
    out = torch.empty_like(x)
    for u in range(uniq.shape[0]):
        idx = (inverse == u).nonzero()[:, 0]
        i0 = int(idx[0])
        out[idx.to(x.device)] = fn(x[idx.to(x.device)], k[i0 : i0 + 1])
    return out


def filter_matrix(k: Tensor, n: int) -> Tensor:
    """(B, K) 1-D kernels -> (B, n, n) matrices A with ``A @ s`` = correlation of s with k, replicate borders."""
    b, kk = k.shape
    p = kk // 2
    rows = torch.arange(n)[:, None]
    cols = (rows + torch.arange(kk)[None] - p).clamp(0, n - 1)  # (n, K)
    a = torch.zeros(b, n, n, dtype=torch.float64)
    a.scatter_add_(2, cols[None].expand(b, n, kk), k.double()[:, None, :].expand(b, n, kk))
    return a


#: Longest 1-D kernel applied by shift-and-add; longer ones use banded matrix products (:func:`_banded_products` on
#: the CPU). On one CPU core (224-px crops, float32) shift-and-add costs about as much as those products at 17
#: taps, 1.3x more at 25 and 2x more at 31; the kernels of 19 to 25 taps (gaublur's largest sigmas) are rare in
#: structured items and stay on shift-and-add.
SEP_DIRECT_MAX_K = 25


def _sep_direct(x: Tensor, k: Tensor) -> Tensor:
    """Separable shift-and-add with (1, K) (shared) or (B, K) kernels, replicate borders."""
    kk = k.shape[1]
    p = kk // 2
    same = k.shape[0] == 1
    weights = k[0].tolist() if same else [k[:, t].view(-1, 1, 1, 1) for t in range(kk)]
    for dim in (-1, -2):
        xp = F.pad(x, (p, p, 0, 0) if dim == -1 else (0, 0, p, p), mode="replicate")
        # tap t is the window at offset t along ``dim`` (shared weights of zero skipped)
        taps = [(0, t, wt) if dim == -1 else (t, 0, wt) for t, wt in enumerate(weights) if not same or wt != 0.0]
        x = _shift_add(xp, taps, torch.empty_like(x))
    return x


def sep_filter(x: Tensor, k: Tensor) -> Tensor:
    """Separable filtering with one odd-length 1-D kernel per sample, replicate borders.

    Implemented as ``A_h @ x @ A_w^T`` with banded (Toeplitz, border-folded) matrices: on CPUs a matrix
    product is far faster than a depthwise convolution, and it costs the same for any kernel length.

    Args:
        x: (B, C, H, W).
        k: (B, K) kernels (K odd), applied along rows and columns.
    """
    b, c, h, w = x.shape
    same = _all_same(k)
    if not same and (grouped := _by_unique_kernel(x, k, sep_filter)) is not None:
        return grouped
    kk = k[:1] if same else k
    if k.shape[1] <= SEP_DIRECT_MAX_K:
        return _sep_direct(x, kk.to(device=x.device, dtype=x.dtype))
    ah = filter_matrix(kk, h).to(device=x.device, dtype=x.dtype)
    aw = filter_matrix(kk, w).to(device=x.device, dtype=x.dtype) if w != h else ah
    ah, awt = (ah[0], aw[0].t()) if same else (ah[:, None], aw[:, None].transpose(-1, -2))
    if x.device.type == "cpu":
        return _banded_products(x, ah, awt, k.shape[1] // 2)
    return torch.matmul(torch.matmul(ah, x), awt)


#: Rows (columns) of the output computed per product in :func:`_banded_products`.
BAND_BLOCK = 32


def _banded_products(x: Tensor, ah: Tensor, awt: Tensor, p: int) -> Tensor:
    """``ah @ x @ awt`` for band matrices (non-zeros within ``p`` of the diagonal), in blocks of
    :data:`BAND_BLOCK` output rows (columns), each a product with only the band of the matrix it touches: for the
    long kernels that take this path, about 2x cheaper on a CPU than the full products (the same sums, rounded
    differently by a few ulp)."""
    h, w = x.shape[-2:]
    y = torch.empty(torch.broadcast_shapes(ah.shape[:-2], x.shape[:-2]) + (h, w), dtype=x.dtype, device=x.device)
    for i0 in range(0, h, BAND_BLOCK):
        i1 = min(h, i0 + BAND_BLOCK)
        r0, r1 = max(0, i0 - p), min(h, i1 + p)
        y[..., i0:i1, :] = torch.matmul(ah[..., i0:i1, r0:r1], x[..., r0:r1, :])
    z = torch.empty_like(y)
    for j0 in range(0, w, BAND_BLOCK):
        j1 = min(w, j0 + BAND_BLOCK)
        r0, r1 = max(0, j0 - p), min(w, j1 + p)
        z[..., j0:j1] = torch.matmul(y[..., r0:r1], awt[..., r0:r1, j0:j1])
    return z


#: Largest kernel side applied by direct shift-and-add; larger 2-D kernels go through the FFT.
DIRECT_MAX_K = 7


def filter2d(x: Tensor, k: Tensor) -> Tensor:
    """2-D filtering (correlation) with one (K, K) kernel per sample, replicate borders.

    Small kernels are applied by shift-and-add, larger ones by FFT of the replicate-padded image (the
    circular wrap-around only touches the padding, which is cropped away).

    Args:
        x: (B, C, H, W).
        k: (B, K, K), K odd.
    """
    b = x.shape[0]
    kk = k.shape[-1]
    p = kk // 2
    same = _all_same(k)
    if not same and (grouped := _by_unique_kernel(x, k, filter2d)) is not None:
        return grouped
    k = (k[:1] if same else k).to(device=x.device, dtype=x.dtype)
    if kk <= DIRECT_MAX_K:
        xp = F.pad(x, (p, p, p, p), mode="replicate")
        out = torch.empty_like(x)
        if same or x.device.type == "cpu":
            # on CPUs, per-sample kernels one sample at a time: only that kernel's non-zero taps (a motion-blur
            # line has few of the K x K)
            step = b if same else 1
            for i, ki in zip(range(0, b, step), k.tolist(), strict=True):
                taps = [(r, c, wt) for r, row in enumerate(ki) for c, wt in enumerate(row) if wt != 0.0]
                _shift_add(xp[i : i + step], taps, out[i : i + step])
            return out
        nz = (k != 0).any(0)
        taps = [(r, c, k[:, r, c].view(-1, 1, 1, 1)) for r in range(kk) for c in range(kk) if nz[r, c]]
        return _shift_add(xp, taps, out)
    return _fft_filter(x, k, 1 if x.device.type == "cpu" else b)


def _shift_add(xp: Tensor, taps: list[tuple[int, int, float | Tensor]], out: Tensor) -> Tensor:
    """``out = sum of w * xp[..., r : r + H, c : c + W]`` over the ``(r, c, w)`` taps (``w`` a number or a
    per-sample (B, 1, 1, 1) tensor), the first tap writing ``out``; zero without taps."""
    h, w = out.shape[-2:]
    if not taps:
        return out.zero_()
    for n, (r, c, wt) in enumerate(taps):
        win = xp[..., r : r + h, c : c + w]
        if n == 0:
            torch.mul(win, wt, out=out)
        elif isinstance(wt, float):
            out.add_(win, alpha=wt)
        else:
            out.addcmul_(win, wt)
    return out


def _fft_filter(x: Tensor, k: Tensor, step: int) -> Tensor:
    """Correlation of (B, C, H, W) with (1 or B, K, K) kernels by real 2-D FFTs of the replicate-padded images,
    ``step`` images at a time (the kernels' spectra once). On CPUs one image at a time costs about half as much
    per crop as a batch of 8, whose complex spectra leave the cache."""
    b, _, h, w = x.shape
    kk = k.shape[-1]
    p = kk // 2
    h2, w2 = _fft_size(h + 2 * p), _fft_size(w + 2 * p)
    kp = torch.zeros(k.shape[0], h2, w2, device=x.device, dtype=torch.float32)
    kp[:, :kk, :kk] = k.flip(-1, -2).float()
    kf = torch.fft.rfft2(kp)[:, None]
    out = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    for i in range(0, b, step):
        xp = F.pad(x[i : i + step], (p, p + w2 - w - 2 * p, p, p + h2 - h - 2 * p), mode="replicate").float()
        y = torch.fft.irfft2(torch.fft.rfft2(xp) * (kf if kf.shape[0] == 1 else kf[i : i + step]), s=(h2, w2))
        out[i : i + step] = y[..., 2 * p : 2 * p + h, 2 * p : 2 * p + w]
    return out.to(x.dtype)


def _fft_size(n: int) -> int:
    """The smallest 2-3-5-smooth integer >= n (fast FFT lengths)."""
    m = n
    while True:
        r = m
        for f in (2, 3, 5):
            while r % f == 0:
                r //= f
        if r == 1:
            return m
        m += 1


def gaussian_kernels(sigma: Tensor, half: Tensor | None = None) -> Tensor:
    """1-D Gaussian kernels, one per sample, zero-padded to the largest support.

    Args:
        sigma: (B,) standard deviations (> 0).
        half: (B,) half sizes; default ``ceil(2 sigma)`` (MATLAB-style size ``2 ceil(2 sigma) + 1``).

    Returns:
        (B, 2 max(half) + 1) float64 kernels summing to 1.
    """
    sigma = sigma.detach().double().cpu().clamp_min(1e-3)
    half = torch.ceil(2 * sigma).long() if half is None else half.detach().long().cpu()
    hmax = int(half.max())
    t = torch.arange(-hmax, hmax + 1, dtype=torch.float64)
    g = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None] ** 2)) * (t[None].abs() <= half[:, None])
    return g / g.sum(1, keepdim=True)


@lru_cache(maxsize=64)
def _disk(radius: float) -> np.ndarray:
    """Anti-aliased disk (pillbox) kernel: each tap = area fraction of its pixel inside the circle."""
    r = max(float(radius), 0.5)
    n = math.ceil(r - 0.5)
    ss = 16
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    c = np.arange(-n, n + 1, dtype=np.float64)
    yy = (c[:, None, None, None] + sub[None, None, :, None]) ** 2
    xx = (c[None, :, None, None] + sub[None, None, None, :]) ** 2
    k = ((yy + xx) <= r * r).mean(axis=(2, 3))
    return k / k.sum()


def disk_kernels(radius: Tensor) -> Tensor:
    """(B,) radii -> (B, K, K) disk kernels zero-padded to the largest size."""
    ks = [_disk(float(r)) for r in radius.tolist()]
    kmax = max(k.shape[0] for k in ks)
    out = torch.zeros(len(ks), kmax, kmax, dtype=torch.float64)
    for i, k in enumerate(ks):
        o = (kmax - k.shape[0]) // 2
        out[i, o : o + k.shape[0], o : o + k.shape[0]] = torch.from_numpy(k)
    return out


#: Points sampled along a motion-blur line (fixed, so a kernel does not depend on the rest of the batch).
MOTION_SAMPLES = 161


def motion_kernels(length: Tensor, angle_deg: Tensor) -> Tensor:
    """Anti-aliased line kernels (MATLAB ``fspecial('motion', len, angle)`` style), one per sample.

    A segment of ``length`` pixels through the centre at ``angle`` degrees (counter-clockwise, image y
    axis pointing down) is sampled densely and splatted bilinearly.

    Returns:
        (B, K, K) float64 kernels summing to 1.
    """
    length = length.detach().double().cpu().clamp_min(1.0)
    ang = angle_deg.detach().double().cpu() * math.pi / 180.0
    b = length.shape[0]
    half = int(math.ceil((float(length.max()) - 1) / 2)) + 1
    kk = 2 * half + 1
    n = MOTION_SAMPLES
    t = torch.linspace(-0.5, 0.5, n, dtype=torch.float64)[None] * (length[:, None] - 1)
    px = half + t * torch.cos(ang)[:, None]
    py = half - t * torch.sin(ang)[:, None]
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    k = torch.zeros(b, kk * kk, dtype=torch.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + dx).long().clamp(0, kk - 1)
        yi = (y0 + dy).long().clamp(0, kk - 1)
        k.scatter_add_(1, yi * kk + xi, wgt)
    k = k.view(b, kk, kk)
    return k / k.sum((1, 2), keepdim=True)


# sRGB (D65) <-> CIE Lab, the constants of kornia.color (rgb_to_lab / lab_to_rgb), written out per channel:
# far fewer passes over the data than the generic implementation.
# rows in the order Y, X / Xn, Z / Zn: L* (from Y) then lands in channel 0, where rgb_to_lab writes it in place
_RGB2XYZ = torch.tensor(
    [
        [0.212671, 0.715160, 0.072169],
        [0.412453 / 0.95047, 0.357580 / 0.95047, 0.180423 / 0.95047],
        [0.019334 / 1.08883, 0.119193 / 1.08883, 0.950227 / 1.08883],
    ],
    dtype=torch.float64,
)
_XYZ2RGB = torch.tensor(
    [
        [3.2404813432005266 * 0.95047, -1.5371515162713185, -0.4985363261688878 * 1.08883],
        [-0.9692549499965682 * 0.95047, 1.8759900014898907, 0.0415559265582928 * 1.08883],
        [0.0556466391351772 * 0.95047, -0.2040413383665112, 1.0573110696453443 * 1.08883],
    ],
    dtype=torch.float64,
)
#: ITU-R BT.601 luma weights (colorshift's edge map) in each row: the first output channel of this 3x3 product is
#: the luma. (A 1x3 product is rounded differently by BLAS, so it would change colorshift's outputs by an ulp.)
_LUMA3 = torch.tensor([[0.299, 0.587, 0.114]] * 3, dtype=torch.float64)


# Piecewise curves are evaluated without torch.where (slow on CPUs): with a continuous join at t,
# f(x) = g(max(x, t)) + l(min(x, t)) - l(t) where g is the branch above t and l the linear branch below.
_SRGB_T, _LIN_T, _LAB_T, _F_T = 0.04045, 0.0031308, 0.008856, 0.2068966
_LOG2_1055 = math.log2(1.055)


def _in_place(t: Tensor, ufunc: np.ufunc, torch_route: Callable[[Tensor], Tensor]) -> Tensor:
    """``ufunc`` applied to ``t`` in place through a numpy view where
    :func:`~shamisa.distortions.colour_matrix.numpy_ok`, else ``torch_route(t)``."""
    if numpy_ok(t):
        a = t.numpy()
        ufunc(a, out=a)
        return t
    return torch_route(t)


def _log2_(t: Tensor) -> Tensor:
    """``t.log2_()``; on CPU tensors numpy's vectorised log2, 2-4x cheaper than torch's there."""
    return _in_place(t, np.log2, Tensor.log2_)


def _cbrt_(t: Tensor) -> Tensor:
    """In place cube root of non-negative ``t``: numpy's ``cbrt`` on the CPU (~4x cheaper than the exp2-log2
    route there), ``exp2(log2(t) / 3)`` elsewhere."""
    return _in_place(t, np.cbrt, lambda u: u.log2_().mul_(1.0 / 3.0).exp2_())


def rgb_to_lab(x: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> Lab (L in [0, 100]); matches ``kornia.color.rgb_to_lab`` to ~3e-4."""
    x = x.clamp(0, 1)
    # powers of positive values as exp2(p log2 t): about 1.7x faster than pow on CPUs, same to ~1e-6 (log2 and the
    # cube root through numpy on CPUs: see _in_place)
    lin = _log2_(x.clamp_min(_SRGB_T).add_(0.055)).sub_(_LOG2_1055).mul_(2.4).exp2_()  # ((x + .055) / 1.055)^2.4
    lin.add_(x.clamp_max_(_SRGB_T).sub_(_SRGB_T).mul_(1 / 12.92))
    t = mix3(lin, _RGB2XYZ)  # (Y, X / Xn, Z / Zn)
    f = _cbrt_(t.clamp_min(_LAB_T)).add_(t.clamp_max_(_LAB_T).sub_(_LAB_T).mul_(7.787))
    fy = f[:, 0:1]
    torch.sub(fy, f[:, 2:3], out=f[:, 2:3]).mul_(200.0)  # b* = 200 (f(Y) - f(Z))
    torch.sub(f[:, 1:2], fy, out=f[:, 1:2]).mul_(500.0)  # a* = 500 (f(X) - f(Y))
    fy.mul_(116.0).sub_(16.0)  # L* = 116 f(Y) - 16
    return f


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Lab -> sRGB clipped to [0, 1]; matches ``kornia.color.lab_to_rgb(lab, clip=True)`` to ~1e-5."""
    return lab_channels_to_rgb(lab[:, 0:1], lab[:, 1:2], lab[:, 2:3])


def lab_channels_to_rgb(lum: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """:func:`lab_to_rgb` of the Lab image whose L*, a* and b* channels are ``lum``, ``a`` and ``b`` ((B, 1, H, W)
    each, any strides): the Lab-based types change one or two channels and pass them separately (no concatenated
    copy)."""
    f = torch.empty((lum.shape[0], 3, *lum.shape[2:]), dtype=lum.dtype, device=lum.device)
    fy = f[:, 1:2]
    torch.add(lum, 16.0, out=fy).mul_(1 / 116.0)
    torch.add(fy, a, alpha=1 / 500.0, out=f[:, 0:1])
    torch.sub(fy, b, alpha=1 / 200.0, out=f[:, 2:3]).clamp_min_(0.0)
    t = f.clamp_min(_F_T)
    t = t.pow_(3).add_(f.clamp_max_(_F_T).sub_(_F_T).mul_(1 / 7.787))  # pow_(3) is t * t * t, in place
    lin = mix3(t, _XYZ2RGB)
    rgb = _log2_(lin.clamp_min(_LIN_T)).mul_(1 / 2.4).add_(_LOG2_1055).exp2_().sub_(0.055)  # 1.055 lin^(1/2.4) - .055
    rgb.add_(lin.clamp_max_(_LIN_T).sub_(_LIN_T).mul_(12.92))
    return rgb.clamp_(0, 1)


def _truncate_to_8bit_(x: Tensor) -> Tensor:
    """8-bit truncation (``trunc(255 x) / 255``) in place of ``x`` in [0, 1] (:func:`lab_to_rgb`'s output), as the
    reference applies after Lab round trips.

    ``floor`` is ``trunc`` on these non-negative values, and about 10x cheaper on CPUs."""
    return x.mul_(255.0).floor_().div_(255.0)


def parabola_curve(x: Tensor, mid: Tensor) -> Tensor:
    """Tone curve through (0, 0), (0.5, mid), (1, 1) (MATLAB ``spline`` on 3 points is this parabola), clamped."""
    y = x.mul(4 * mid - 2)
    return y.mul_(1 - x).add_(x).clamp_(0, 1)


#: Interior knots of the linear-contrast tone curve (the reference uses 0.3 / 0.7, which makes amount 0 a
#: mild contrast change rather than the identity; see docs/distortions.md).
CONTRAST_KNOTS = (0.25, 0.5, 0.75)


@lru_cache(maxsize=256)
def _contrast_spline_coefs(amount: float) -> tuple[tuple[float, ...], ...]:
    from scipy.interpolate import CubicSpline

    xs = np.array([0.0, *CONTRAST_KNOTS, 1.0])
    ys = np.array([0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0])
    cs = CubicSpline(xs, ys, bc_type="not-a-knot")
    return tuple(tuple(float(c) for c in cs.c[:, i]) for i in range(4))  # per segment: c3, c2, c1, c0


def contrast_curve(x: Tensor, amount: Tensor) -> Tensor:
    """Tone curve: not-a-knot cubic spline through (0,0), (0.25, 0.25 - a/4), (0.5, 0.5), (0.75, 0.75 + a/4), (1,1).

    With three interior knots the not-a-knot conditions make the first two and the last two pieces one cubic
    each, so the spline is ``P(x) + d max(x - k, 0)^3`` with ``P`` the first piece, ``k`` the middle knot and
    ``d`` the jump of the cubic coefficient there (0 up to rounding for the symmetric knots used here, where the
    curve is the single cubic ``x - (16 a / 3) x (x - 1/2) (x - 1)``). Evaluated elementwise, without a
    per-pixel segment search.

    Args:
        x: (B, C, H, W).
        amount: (B,) curve amounts (positive = more contrast).
    """
    coefs = torch.tensor([_contrast_spline_coefs(float(a)) for a in amount.tolist()], dtype=torch.float64)  # (B,4,4)
    c = coefs[:, 0]  # first piece, local coordinate x - 0: c3, c2, c1, c0
    jump = coefs[:, 2, 0] - coefs[:, 0, 0]
    y = torch.addcmul(_col(c[:, 1], x), x, _col(c[:, 0], x))
    y.mul_(x).add_(_col(c[:, 2], x)).mul_(x).add_(_col(c[:, 3], x))
    if bool((jump.abs() > 1e-12).any()):
        t = (x - CONTRAST_KNOTS[1]).clamp_min_(0.0)
        y.addcmul_(t.mul(t).mul_(t), _col(jump, x))
    return y.clamp_(0, 1)


# --------------------------------------------------------------------------------------------------
# blur
# --------------------------------------------------------------------------------------------------


def gaublur(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Gaussian blur with standard deviation ``v`` (kernel size ``2 ceil(2 v) + 1``)."""
    return sep_filter(x, gaussian_kernels(v))


def lensblur(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Lens (disk / pillbox) blur of radius ``v`` pixels."""
    return filter2d(x, disk_kernels(v))


def motionblur(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Linear motion blur over ``v`` pixels in a random direction (uniform angle in [0, 180) degrees)."""
    gens = _gens(seeds, x.shape[0])
    angle = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in gens]) * 180.0
    return filter2d(x, motion_kernels(v, angle))


# --------------------------------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------------------------------


def colordiff(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Colour diffusion: Lab chroma (a, b) blurred with sigma ``1.5 v + 2`` and scaled by ``v``."""
    return _colordiff_finish(rgb_to_lab(x), x, v, seeds)


def _colordiff_finish(lab: Tensor, x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    sigma = 1.5 * v.detach().double().cpu() + 2.0
    ab = sep_filter(lab[:, 1:3], gaussian_kernels(sigma)).mul_(_col(v, x))
    return _truncate_to_8bit_(lab_channels_to_rgb(lab[:, :1], ab[:, 0:1], ab[:, 1:2]))


def _percentile_lower(e: Tensor, q: float) -> Tensor:
    """Per-sample value at ascending rank round(n q) (1-based, MATLAB-like) of flattened (B, N) data, q >= 0.5."""
    n = e.shape[1]
    k = int(round(min(max(n * q, 1.0), float(n))))
    if numpy_ok(e) and e.is_contiguous():
        a = e.numpy()
        return torch.from_numpy(np.array([_upper_order_statistic(row, k - 1) for row in a], dtype=a.dtype))
    return torch.topk(e, n - k + 1, dim=1, largest=True, sorted=False).values.min(1).values


#: Every this many values of a row form the sample that :func:`_upper_order_statistic` picks its threshold from.
ORDER_STAT_SAMPLE_STEP = 16


def _upper_order_statistic(a: np.ndarray, rank: int) -> np.generic:
    """The value at 0-based ascending ``rank`` of the 1-D array ``a`` (a rank in its upper part), exactly.

    A threshold taken from a sample of ``a`` (every :data:`ORDER_STAT_SAMPLE_STEP`-th value, at about twice the
    share of values above the rank) keeps the few values at or above it; when they include every value at ranks
    ``rank`` and up, the answer is an order statistic of those few, otherwise of all of ``a``. On CPUs this costs a
    fraction of a partial sort of the whole row (torch's topk: ~3.5x more for colorshift's 1 % of 50k values).
    """
    n = a.shape[0]
    above = n - rank  # values at ranks rank .. n - 1
    sample = a[::ORDER_STAT_SAMPLE_STEP]
    j = sample.shape[0] - min(sample.shape[0], 2 * math.ceil(sample.shape[0] * above / n) + 8)
    if j > 0:
        kept = a[a >= np.partition(sample, j)[j]]
        if kept.shape[0] >= above:  # every value below the threshold ranks below ``rank``
            r = rank - (n - kept.shape[0])
            return np.partition(kept, r)[r]
    return np.partition(a, rank)[rank]


def colorshift(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Colour shift: the green channel is displaced by ``v`` pixels in a random (down/right) direction and
    blended in where the image has edges (smoothed gradient magnitude, 1 %/99 % percentile-clipped)."""
    return _colorshift_finish(_edge_weight(x), x, v, seeds)


def _edge_weight(x: Tensor) -> Tensor:
    """colorshift's blending weight (B, 1, H, W): smoothed gradient magnitude of the luma, min-max normalised
    and clipped to its 1 % and 99 % percentiles."""
    b, _, h, w = x.shape
    gray = mix3(x, _LUMA3)[:, :1]
    gp = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = (gp[..., 1:-1, 2:] - gp[..., 1:-1, :-2]) * 0.5  # central differences (kornia "diff" mode)
    gy = (gp[..., 2:, 1:-1] - gp[..., :-2, 1:-1]) * 0.5
    e = (gx * gx + gy * gy).sqrt()
    e = sep_filter(e, gaussian_kernels(torch.full((b,), 4.0, dtype=torch.float64)))
    flat = e.view(b, -1)
    mn, mx = flat.min(1).values, flat.max(1).values
    rng = torch.where(mx > mn, mx - mn, torch.ones_like(mx))
    flat = torch.where((mx > mn)[:, None], (flat - mn[:, None]) / rng[:, None], flat)
    hi = _percentile_lower(flat, 0.99)
    lo = 1 - _percentile_lower(1 - flat, 0.99)
    return torch.maximum(torch.minimum(flat, hi[:, None]), lo[:, None]).view(b, 1, h, w)


def _colorshift_finish(e: Tensor, x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    b, _, h, w = x.shape
    gens = _gens(seeds, b)
    a = torch.stack([torch.rand(2, generator=g, dtype=torch.float64) for g in gens])
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    shift = torch.round(a * v.detach().double().cpu()[:, None]).long().to(x.device)  # (B, 2): (dx, dy)
    rows = (torch.arange(h, device=x.device)[None] - shift[:, 1:2]).clamp(0, h - 1)
    cols = (torch.arange(w, device=x.device)[None] - shift[:, 0:1]).clamp(0, w - 1)
    g = x[:, 1]
    shifted = g.gather(1, rows[:, :, None].expand(b, h, w)).gather(2, cols[:, None, :].expand(b, h, w))
    out = x.clone()
    out[:, 1] = shifted * e[:, 0] + g * (1 - e[:, 0])
    return out


def colorsat1(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """HSV saturation multiplied by ``v`` (hue and value kept): ``c' = V - v (V - c)``, V = max channel.

    This is exactly the HSV round trip with S scaled (each channel is affine in S for fixed H, V);
    negative factors push channels above V and are clamped.
    """
    # the channel maximum as two elementwise maxima: a reduction over the channel dimension is ~40x slower on CPUs
    vmax = torch.maximum(x[:, 0:1], x[:, 1:2])
    vmax = torch.maximum(vmax, x[:, 2:3], out=vmax)
    t = torch.sub(vmax, x).mul_(_col(v, x))
    return torch.sub(vmax, t, out=t)


def colorsat2(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Lab chroma (a, b) multiplied by ``v``."""
    return _colorsat2_finish(rgb_to_lab(x), x, v, seeds)


def _colorsat2_finish(lab: Tensor, x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    ab = lab[:, 1:3] * _col(v, x)
    return _truncate_to_8bit_(lab_channels_to_rgb(lab[:, :1], ab[:, 0:1], ab[:, 1:2]))


# --------------------------------------------------------------------------------------------------
# compression
# --------------------------------------------------------------------------------------------------


def jpeg2000(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """JPEG2000 at compression ratio ``v`` (rate mode), the real codec (OpenJPEG). The labelled wavelet
    approximation is :func:`jpeg2000_approx_type`, chosen with ``jpeg2000_impl="approx"``."""
    return jpeg2000_pillow(x, v)


def jpeg2000_approx_type(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """The ``jpeg2000`` type's labelled approximation: the batched wavelet model of
    :mod:`shamisa.distortions.wavelet_codec` at compression ratio ``v`` (not the codec)."""
    return _jpeg2000_approx_finish(jpeg2000_analysis(x), x, v, seeds)


def _jpeg2000_approx_finish(state: WaveletAnalysis, x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    return jpeg2000_synthesis(state, v)


def jpeg(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """JPEG (libjpeg, 4:2:0) at quality ``v``."""
    return jpeg_pillow(x, v)


# --------------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------------


def whitenoise(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Additive white Gaussian noise of variance ``v`` on RGB."""
    return _randn(seeds, tuple(x.shape[1:]), x).mul_(_col(v, x).sqrt()).add_(x)


# kornia's YCbCr -> RGB matrix applied to a noise vector (offsets cancel)
_YCC_TO_RGB = torch.tensor([[1.0, 0.0, 1.403], [1.0, -0.344, -0.714], [1.0, 1.773, 0.0]])


def whitenoiseCC(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:  # noqa: N802
    """White Gaussian noise of variance ``v`` added in YCbCr (each of Y, Cb, Cr), mapped back to RGB."""
    n = _randn(seeds, tuple(x.shape[1:]), x).mul_(_col(v, x).sqrt())
    return mix3(n, _YCC_TO_RGB).add_(x)


def impulsenoise(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Salt-and-pepper noise of density ``v``: each value independently becomes 0 (prob v/2) or 1 (prob v/2)."""
    u = _rand(seeds, tuple(x.shape[1:]), x)
    d = _col(v, x)
    # indicators as clamp(floor(u - t) + 1, 0, 1) = [u >= t] (exact: the sign of u - t is), no torch.where
    keep = torch.sub(u, d).floor_().add_(1.0).clamp_(0.0, 1.0)  # [u >= d]: the value is kept
    salt = u.sub_(d / 2).floor_().add_(1.0).clamp_(0.0, 1.0)  # [u >= d/2]: 1 where replaced, else 0
    return torch.addcmul(salt, keep, x - salt)


def multnoise(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Multiplicative (speckle) noise: ``x + x n``, n ~ N(0, v)."""
    return _randn(seeds, tuple(x.shape[1:]), x).mul_(x).mul_(_col(v, x).sqrt()).add_(x)


# --------------------------------------------------------------------------------------------------
# brightness
# --------------------------------------------------------------------------------------------------


def brighten(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Brighten: tone curve through (0.5, 0.5 + v/2) on RGB, averaged 2:1 with the same curve on Lab L*."""
    return _brighten_finish(rgb_to_lab(x), x, v, seeds)


def _brighten_finish(lab: Tensor, x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    mid = _col(0.5 + v / 2, x)
    lum = parabola_curve(lab[:, :1] / 100.0, mid).mul_(100.0)
    return parabola_curve(x, mid).mul_(2).add_(lab_channels_to_rgb(lum, lab[:, 1:2], lab[:, 2:3])).div_(3)


def darken(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Darken: tone curve through (0.5, 0.5 - v/2) on RGB."""
    return parabola_curve(x, _col(0.5 - v / 2, x))


def meanshiftneg(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Mean shift: ``x + v`` (v <= 0)."""
    return x + _col(v, x)


def meanshiftpos(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Mean shift: ``x + v`` (v >= 0)."""
    return x + _col(v, x)


# --------------------------------------------------------------------------------------------------
# spatial
# --------------------------------------------------------------------------------------------------

JITTER_ITERATIONS = 5


def jitter(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Pixel jitter: 5 rounds of bilinear resampling at positions displaced by N(0, v^2) pixels (replicate borders)."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    base = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)  # (H, W, 2) as (x, y)
    px = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=x.device, dtype=x.dtype)
    # the grids: displacement in grid units (sampled at p - d) plus the identity grid. On square images the scale is
    # one number per sample, applied through the normal table (no pass over the draws); else per (x, y), in place
    scale = -_col(v, x).view(-1, 1, 1, 1, 1)
    shape = (JITTER_ITERATIONS, h, w, 2)  # (B, 5, H, W, (dx, dy))
    if h == w and x.dtype == torch.float32:
        noise = _randn(seeds, shape, x, scale=(scale * px[0]).flatten().cpu())
    else:
        noise = _randn(seeds, shape, x).mul_(scale * px)
    noise.add_(base)
    y = x
    for it in range(JITTER_ITERATIONS):
        y = F.grid_sample(y, noise[:, it], mode="bilinear", padding_mode="border", align_corners=True)
    return y


NONECC_PATCH = 16
NONECC_RADIUS = 16


def noneccpatch(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Non-eccentricity patches: ``v`` times, a 16x16 patch is copied to a position displaced by up to
    +-8 pixels (sequentially, so later copies may read earlier ones)."""
    b, c, h, w = x.shape
    p, r = min(NONECC_PATCH, h), min(NONECC_PATCH, w)
    counts = [max(0, int(round(n))) for n in v.tolist()]
    nmax = max(counts, default=0)
    if nmax == 0:
        return x
    gens = _gens(seeds, b)
    draws = torch.zeros(b, nmax, 4, dtype=torch.float64)
    active = torch.zeros(b, nmax, dtype=torch.bool)
    for i, (g, n) in enumerate(zip(gens, counts, strict=True)):
        draws[i, :n] = torch.rand(n, 4, generator=g, dtype=torch.float64)
        active[i, :n] = True
    h_min, w_min = min(NONECC_RADIUS, h - p), min(NONECC_RADIUS, w - r)
    h_max, w_max = max(h_min, h - p - NONECC_RADIUS), max(w_min, w - r - NONECC_RADIUS)
    hs = torch.round(draws[..., 0] * (h_max - h_min)) + h_min
    ws = torch.round(draws[..., 1] * (w_max - w_min)) + w_min
    th = torch.round((draws[..., 2] - 0.5) * NONECC_RADIUS + hs).clamp(0, h - p)
    tw = torch.round((draws[..., 3] - 0.5) * NONECC_RADIUS + ws).clamp(0, w - r)
    th = torch.where(active, th, hs).long().to(x.device)
    tw = torch.where(active, tw, ws).long().to(x.device)
    hs, ws = hs.long().to(x.device), ws.long().to(x.device)
    y = x.clone()
    copy = _copy_patches_sliced if y.device.type == "cpu" else _copy_patches_indexed
    copy(y, (hs, ws), (th, tw), counts, (p, r))
    return y


def _copy_patches_sliced(
    y: Tensor, src: tuple[Tensor, Tensor], dst: tuple[Tensor, Tensor], counts: list[int], size: tuple[int, int]
) -> None:
    """In place on a CPU batch: for each sample ``i`` and ``k < counts[i]`` in order, the ``size`` patch at
    ``src[.][i, k]`` (top, left) is copied to ``dst[.][i, k]``. A few hundred small slice copies: far cheaper on
    a CPU than one batched gather and scatter per patch index."""
    yn = y.detach().numpy()  # a view: the copies below write into y
    (p, r), (sh, sw), (dh, dw) = size, (t.tolist() for t in src), (t.tolist() for t in dst)
    for i, n in enumerate(counts):
        for k in range(n):
            a, b, c, d = sh[i][k], sw[i][k], dh[i][k], dw[i][k]
            yn[i, :, c : c + p, d : d + r] = yn[i, :, a : a + p, b : b + r]  # numpy copies overlaps safely


def _copy_patches_indexed(
    y: Tensor, src: tuple[Tensor, Tensor], dst: tuple[Tensor, Tensor], counts: list[int], size: tuple[int, int]
) -> None:
    """:func:`_copy_patches_sliced` as one gather and scatter over the batch per patch index (any device; a
    sample's patches past its count must have ``dst == src``, a copy onto itself)."""
    (p, r), (hs, ws), (th, tw) = size, src, dst
    bi = torch.arange(y.shape[0], device=y.device)[:, None, None]
    ar_h = torch.arange(p, device=y.device)[None, :, None]
    ar_w = torch.arange(r, device=y.device)[None, None, :]
    for k in range(max(counts, default=0)):
        patch = y[bi, :, hs[:, k, None, None] + ar_h, ws[:, k, None, None] + ar_w]  # (B, p, r, C)
        y[bi, :, th[:, k, None, None] + ar_h, tw[:, k, None, None] + ar_w] = patch


def pixelate(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Pixelation: nearest down-sampling by ``z = 0.95 - v^0.6`` and nearest up-sampling back."""
    b, _, h, w = x.shape
    z = 0.95 - v.detach().double().cpu().clamp_min(0) ** 0.6
    sizes = [(max(1, int(h * float(zi))), max(1, int(w * float(zi)))) for zi in z]
    out = torch.empty_like(x)
    for size in set(sizes):
        idx = torch.tensor([i for i, s in enumerate(sizes) if s == size], device=x.device)
        lo = F.interpolate(x[idx], size=size, mode="nearest")
        out[idx] = F.interpolate(lo, size=(h, w), mode="nearest")
    return out


def quantization(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Quantisation of every channel to ``v`` equally spaced levels ``0, 1/(v-1), ..., 1`` (rounding)."""
    steps = (v.detach().double().cpu().round().clamp_min(2) - 1).to(x.dtype)
    s = _col(steps, x)
    return torch.round(x * s) / s


COLORBLOCK_SIZE = 32


def colorblock(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Colour blocks: ``v`` uniformly placed 32x32 squares of uniformly random RGB colour (later on top)."""
    b, c, h, w = x.shape
    ph, pw = min(COLORBLOCK_SIZE, h), min(COLORBLOCK_SIZE, w)
    counts = [max(0, int(round(n))) for n in v.tolist()]
    nmax = max(counts, default=0)
    if nmax == 0:
        return x
    gens = _gens(seeds, b)
    draws = torch.zeros(b, nmax, 5, dtype=torch.float64)
    for i, (g, n) in enumerate(zip(gens, counts, strict=True)):
        draws[i, :n] = torch.rand(n, 5, generator=g, dtype=torch.float64)
    top = torch.floor(draws[..., 3] * (h - ph)).long().to(x.device)
    left = torch.floor(draws[..., 4] * (w - pw)).long().to(x.device)
    color = draws[..., :3].to(device=x.device, dtype=x.dtype)
    paint = _paint_blocks_sliced if x.device.type == "cpu" else _paint_blocks_masked
    return paint(x, top, left, color, counts, (ph, pw))


def _paint_blocks_sliced(
    x: Tensor, top: Tensor, left: Tensor, color: Tensor, counts: list[int], size: tuple[int, int]
) -> Tensor:
    """A copy of CPU batch ``x`` with, for each sample ``i`` and ``k < counts[i]`` in order, the ``size`` square
    at ``(top[i, k], left[i, k])`` painted ``color[i, k]`` (3,). Slice assignments: no full-image pass per square."""
    y = x.clone()
    yn, tops, lefts, colors = y.detach().numpy(), top.tolist(), left.tolist(), color.detach().cpu().numpy()
    ph, pw = size
    for i, n in enumerate(counts):
        for k in range(n):
            yn[i, :, tops[i][k] : tops[i][k] + ph, lefts[i][k] : lefts[i][k] + pw] = colors[i, k, :, None, None]
    return y


def _paint_blocks_masked(
    x: Tensor, top: Tensor, left: Tensor, color: Tensor, counts: list[int], size: tuple[int, int]
) -> Tensor:
    """:func:`_paint_blocks_sliced` with one masked select over the batch per square index (any device)."""
    h, w = x.shape[-2:]
    ph, pw = size
    active = (torch.arange(max(counts, default=0))[None] < torch.tensor(counts)[:, None]).to(x.device)
    ys = torch.arange(h, device=x.device)[None]
    xs = torch.arange(w, device=x.device)[None]
    y = x
    for k in range(active.shape[1]):
        mr = (ys >= top[:, k : k + 1]) & (ys < top[:, k : k + 1] + ph) & active[:, k : k + 1]
        mc = (xs >= left[:, k : k + 1]) & (xs < left[:, k : k + 1] + pw)
        m = (mr[:, :, None] & mc[:, None, :])[:, None]
        y = torch.where(m, color[:, k, :, None, None], y)
    return y


# --------------------------------------------------------------------------------------------------
# sharpness and contrast
# --------------------------------------------------------------------------------------------------

SHARPEN_SIGMA = 6.0
SHARPEN_HALF = 6


def highsharpen(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Unsharp masking of Lab L*: ``L + v (L - G*L)`` with a 13x13 Gaussian of sigma 6."""
    return _highsharpen_finish(_highsharpen_prepare(x), x, v, seeds)


def _highsharpen_prepare(x: Tensor) -> tuple[Tensor, Tensor]:
    """Lab of ``x`` and its L* detail ``L - G*L``."""
    b = x.shape[0]
    lab = rgb_to_lab(x)
    lum = lab[:, :1]
    k = gaussian_kernels(torch.full((1,), SHARPEN_SIGMA), torch.full((1,), SHARPEN_HALF)).expand(b, -1)
    return lab, torch.sub(lum, sep_filter(lum, k))


def _highsharpen_finish(state: tuple[Tensor, Tensor], x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    lab, detail = state
    return lab_channels_to_rgb(detail.mul(_col(v, x)).add_(lab[:, :1]), lab[:, 1:2], lab[:, 2:3])


def lincontrchangeneg(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Linear contrast decrease: spline tone curve with amount ``v`` <= 0."""
    return contrast_curve(x, v)


def lincontrchangepos(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Linear contrast increase: spline tone curve with amount ``v`` >= 0."""
    return contrast_curve(x, v)


def nonlincontrchange(x: Tensor, v: Tensor, seeds: Tensor | None = None) -> Tensor:
    """Non-linear contrast change: the range [0, 1] is remapped affinely onto [0.5 - v, 0.5 + v]."""
    vv = _col(v, x)
    return torch.minimum(torch.maximum(0.5 - vv + 2 * vv * x, 0.5 - vv), 0.5 + vv)


#: Types whose work splits into a part that depends on the image only and a part that depends on the value:
#: ``name: (prepare(x) -> state, finish(state, x, v, seeds) -> y)`` with ``fn(x, v, seeds) ==
#: finish(prepare(x), x, v, seeds)``. :func:`shamisa.distortions.registry.apply_levels` uses them to run the
#: first part once for all the levels of the varying slot of a structured batch.
SHARED_STAGES: dict[str, tuple[Callable[[Tensor], object], Callable[..., Tensor]]] = {
    "colordiff": (rgb_to_lab, _colordiff_finish),
    "colorshift": (_edge_weight, _colorshift_finish),
    "colorsat2": (rgb_to_lab, _colorsat2_finish),
    "brighten": (rgb_to_lab, _brighten_finish),
    "highsharpen": (_highsharpen_prepare, _highsharpen_finish),
}

#: The ``jpeg2000`` type under each implementation of :data:`shamisa.distortions.codecs.JPEG2000_IMPLS`:
#: ``impl: (fn, shared stages or None)``. The real codec has no image-only stage to share.
JPEG2000_TYPES: dict[str, tuple[Callable[..., Tensor], tuple[Callable[[Tensor], object], Callable[..., Tensor]] | None]] = {
    "openjpeg": (jpeg2000, None),
    "approx": (jpeg2000_approx_type, (jpeg2000_analysis, _jpeg2000_approx_finish)),
}
