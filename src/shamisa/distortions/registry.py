"""The registry of the 26 distortion types and :func:`apply_distortion`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from shamisa.distortions import functional as Fn
from shamisa.distortions.codecs import DEFAULT_JPEG2000_IMPL, check_jpeg2000_impl
from shamisa.distortions.levels import DISTORTION_NAMES, GROUP_OF, GROUPS, INT_TYPES_EXTENDED, LEVELS
from shamisa.errors import ConfigError

DistortionFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]

#: Types whose output depends on random draws (they use the per-sample seeds).
STOCHASTIC: frozenset[str] = frozenset(
    {"motionblur", "colorshift", "whitenoise", "whitenoiseCC", "impulsenoise", "multnoise", "jitter",
     "noneccpatch", "colorblock"}
)

#: What the parameter of each type means (for listings and docs).
PARAMETER: dict[str, str] = {
    "gaublur": "Gaussian sigma (px)",
    "lensblur": "disk radius (px)",
    "motionblur": "line length (px)",
    "colordiff": "chroma diffusion amount",
    "colorshift": "green shift (px)",
    "colorsat1": "HSV saturation factor",
    "colorsat2": "Lab chroma factor",
    "jpeg2000": "compression ratio",
    "jpeg": "JPEG quality",
    "whitenoise": "noise variance (RGB)",
    "whitenoiseCC": "noise variance (YCbCr)",
    "impulsenoise": "salt-and-pepper density",
    "multnoise": "noise variance",
    "brighten": "curve amount",
    "darken": "curve amount",
    "meanshiftneg": "shift",
    "meanshiftpos": "shift",
    "jitter": "displacement std (px)",
    "noneccpatch": "number of patches",
    "pixelate": "strength",
    "quantization": "number of levels",
    "colorblock": "number of blocks",
    "highsharpen": "unsharp amount",
    "lincontrchangeneg": "curve amount",
    "lincontrchangepos": "curve amount",
    "nonlincontrchange": "output half-range",
}


class UnknownDistortionError(ConfigError, KeyError):
    """A distortion type name that is not in the registry."""

    def __init__(self, name: str) -> None:
        close = difflib.get_close_matches(name, DISTORTION_NAMES, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known types: {', '.join(DISTORTION_NAMES)}"
        self.name = name
        super().__init__(f"unknown distortion type {name!r}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class DistortionSpec:
    """One distortion type.

    Attributes:
        name: type name (spec table spelling).
        group: one of the 7 groups.
        levels: the 5 level-table parameter values (increasing severity).
        integer: whether the parameter is integer-valued (``extended_int_distortions=True``).
        fn: the batched function ``fn(x (B,3,H,W), values (B,), seeds (B,) | None) -> (B,3,H,W)``.
        stochastic: whether the output depends on random draws.
        parameter: what the parameter means.
    """

    name: str
    group: str
    levels: tuple[float, float, float, float, float]
    integer: bool
    fn: DistortionFn
    stochastic: bool
    parameter: str


DISTORTIONS: dict[str, DistortionSpec] = {
    name: DistortionSpec(
        name=name,
        group=GROUP_OF[name],
        levels=tuple(float(t) for t in LEVELS[name]),  # type: ignore[arg-type]
        integer=name in INT_TYPES_EXTENDED,
        fn=getattr(Fn, name),
        stochastic=name in STOCHASTIC,
        parameter=PARAMETER[name],
    )
    for name in DISTORTION_NAMES
}

assert tuple(DISTORTIONS) == DISTORTION_NAMES and len(GROUPS) == 7


#: On the CPU a batch is processed in chunks of this many images, so that the temporaries of one
#: function stay in the cache (every sample's result is independent of its batch, so this changes nothing).
CHUNK_SIZE = int(os.environ.get("SHAMISA_DISTORT_CHUNK", "8"))


def get_spec(name: str) -> DistortionSpec:
    """The spec of ``name``; raises :class:`UnknownDistortionError` (a ``ConfigError``) with close names."""
    try:
        return DISTORTIONS[name]
    except KeyError:
        raise UnknownDistortionError(name) from None


def draw_seeds(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` per-sample seeds (int64, CPU) drawn from a CPU generator (or the global CPU RNG)."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("distortion randomness is drawn on the CPU: pass a CPU torch.Generator")
    return torch.randint(0, 2**62, (n,), generator=generator, dtype=torch.int64)


def apply_distortion(
    x: torch.Tensor,
    name: str,
    values: torch.Tensor | float,
    generator: torch.Generator | None = None,
    *,
    seeds: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL,
) -> torch.Tensor:
    """Apply one distortion type to a batch, one parameter value per sample.

    Args:
        x: (B, 3, H, W) float images in [0, 1] (any float dtype, any device).
        name: type name (see :data:`DISTORTION_NAMES`).
        values: (B,) parameter values (or one number for the whole batch).
        generator: CPU generator for the random draws. Every call consumes exactly ``B`` seeds from it
            (``torch.randint(0, 2**62, (B,))``), whether or not the type is stochastic; sample ``i`` then
            draws everything from a generator seeded with ``seeds[i]``. So one sample's result does not
            depend on the rest of the batch, nor on the device.
        seeds: (B,) int64 seeds to use instead of drawing them from ``generator``.
        out: (B, 3, H, W) tensor (any strides, ``x``'s dtype and device) to write the result into, e.g. a
            slice of a larger batch; returned.
        jpeg2000_impl: how the ``jpeg2000`` type is computed: ``"openjpeg"`` (default, the real codec) or
            ``"approx"`` (the labelled wavelet approximation); other types ignore it.

    Returns:
        (B, 3, H, W) clamped to [0, 1], same dtype and device as ``x``.

    Raises:
        UnknownDistortionError: unknown type name.
        ValueError: bad shapes, or an unknown ``jpeg2000_impl``.
    """
    spec = get_spec(name)
    fn = type_function(spec, jpeg2000_impl)
    b = _check_images(x)
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.ndim == 0:
        v = v.expand(b)
    v = v.detach().cpu().double().reshape(-1)
    if v.numel() != b:
        raise ValueError(f"expected {b} parameter values, got {v.numel()}")
    seeds = _seeds_for(b, generator, seeds)
    _check_out(out, x.shape, x)
    if b == 0:
        return x.clone() if out is None else out
    xf, chunk = _working_copy(x)
    if b <= chunk and out is None:
        y = fn(xf, v, seeds)
        return y.clamp_(0.0, 1.0).to(x.dtype) if y is not xf else y.clamp(0.0, 1.0).to(x.dtype)
    if out is None:
        out = torch.empty_like(x)
    for i in range(0, b, chunk):
        _clamp_into(fn(xf[i : i + chunk], v[i : i + chunk], seeds[i : i + chunk]), out[i : i + chunk])
    return out


def type_function(spec: DistortionSpec, jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL) -> DistortionFn:
    """The batched function that computes ``spec``'s type: ``spec.fn``, except for ``jpeg2000``, whose function
    is the one of ``jpeg2000_impl`` (:data:`shamisa.distortions.functional.JPEG2000_TYPES`)."""
    check_jpeg2000_impl(jpeg2000_impl)
    if spec.name == "jpeg2000" and jpeg2000_impl != DEFAULT_JPEG2000_IMPL:
        return Fn.JPEG2000_TYPES[jpeg2000_impl][0]
    return spec.fn


def shared_stages(name: str, jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL) -> tuple[Callable, Callable] | None:
    """``(prepare, finish)`` of type ``name`` (:data:`shamisa.distortions.functional.SHARED_STAGES`; for
    ``jpeg2000``, those of ``jpeg2000_impl``), or None when it has no image-only stage to share."""
    check_jpeg2000_impl(jpeg2000_impl)
    if name == "jpeg2000":
        return Fn.JPEG2000_TYPES[jpeg2000_impl][1]
    return Fn.SHARED_STAGES.get(name)


def _check_images(x: torch.Tensor) -> int:
    """The batch size of (B, 3, H, W) images; ValueError for any other shape."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
    return x.shape[0]


def _seeds_for(n: int, generator: torch.Generator | None, seeds: torch.Tensor | None) -> torch.Tensor:
    """``n`` per-sample seeds: drawn from ``generator``, or ``seeds`` checked (int64, CPU, flat)."""
    if seeds is None:
        return draw_seeds(n, generator)
    seeds = torch.as_tensor(seeds, dtype=torch.int64).cpu().reshape(-1)
    if seeds.numel() != n:
        raise ValueError(f"expected {n} seeds, got {seeds.numel()}")
    return seeds


def _check_out(out: torch.Tensor | None, shape: tuple[int, ...], x: torch.Tensor) -> None:
    """ValueError unless ``out`` is None or a tensor of ``shape`` with ``x``'s dtype and device."""
    if out is not None and (tuple(out.shape) != tuple(shape) or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(
            f"out must be {tuple(shape)} {x.dtype} on {x.device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
        )


def _working_copy(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` in a float dtype the functions accept, and the chunk size to process it in (CPU: CHUNK_SIZE)."""
    xf = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return xf, CHUNK_SIZE if xf.device.type == "cpu" else x.shape[0]


def _clamp_into(y: torch.Tensor, dst: torch.Tensor) -> None:
    """``dst[:] = clamp(y, 0, 1)`` (cast to dst's dtype)."""
    if y.dtype == dst.dtype:
        torch.clamp(y, 0.0, 1.0, out=dst)
    else:
        dst.copy_(y.clamp(0.0, 1.0))


def level_sources(name: str, values: torch.Tensor) -> list[int]:
    """For each level, the first level whose output it equals: ``values`` (L,) of type ``name`` applied to the same
    images. A deterministic type at a value repeated across levels (integer parameters rounded, severities clipped
    at the top of the table) gives the same output, so only the first such level needs computing; levels of a
    stochastic type (fresh draws per level) are their own source.
    """
    vals = torch.as_tensor(values, dtype=torch.float64).reshape(-1).tolist()
    if get_spec(name).stochastic:
        return list(range(len(vals)))
    first: dict[float, int] = {}
    return [first.setdefault(v, lev) for lev, v in enumerate(vals)]


def apply_levels(
    x: torch.Tensor,
    name: str,
    values: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    seeds: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL,
) -> torch.Tensor:
    """Apply one type to the same images at several values: the varying slot of a structured batch.

    Equal to ``apply_distortion(x.repeat(L, 1, 1, 1), name, values.repeat_interleave(B), generator)`` (the
    same ``L * B`` seeds are drawn, level-major), but for the types in
    :func:`shared_stages` the part of the work that depends on the image only
    (the Lab conversion of the Lab-based types, colorshift's edge map, the JPEG2000 approximation's wavelet
    analysis) is done once per image instead of once per level; the other types are applied level by level.
    A deterministic type's level that repeats an earlier level's value is copied from it
    (:func:`level_sources`).

    Args:
        x: (B, 3, H, W) float images in [0, 1].
        name: type name.
        values: (L,) parameter values, one per level.
        generator: CPU generator for the per-sample seeds.
        seeds: (L * B,) seeds to use instead (level-major).
        out: (L, B, 3, H, W) tensor (any strides, ``x``'s dtype and device) to write the result into; returned
            in that shape.
        jpeg2000_impl: as for :func:`apply_distortion`.

    Returns:
        (L * B, 3, H, W), level-major (row ``l * B + i`` is image ``i`` at ``values[l]``), clamped to [0, 1];
        ``out`` when given.
    """
    spec = get_spec(name)
    b = _check_images(x)
    vals = torch.as_tensor(values, dtype=torch.float64).detach().cpu().double().reshape(-1)
    n_l = vals.numel()
    seeds = _seeds_for(n_l * b, generator, seeds)
    _check_out(out, (n_l, *x.shape), x)
    dst = torch.empty((n_l, *x.shape), dtype=x.dtype, device=x.device) if out is None else out
    result = dst.view(n_l * b, *x.shape[1:]) if out is None else out
    source = level_sources(name, vals)
    stages = shared_stages(spec.name, jpeg2000_impl)
    if stages is None or b == 0 or n_l == 0:  # level by level: one value per call, no repeated copy of x
        for lev, src in enumerate(source):
            if src != lev:
                dst[lev].copy_(dst[src])
                continue
            apply_distortion(
                x, name, vals[lev].expand(b), seeds=seeds[lev * b : (lev + 1) * b], out=dst[lev], jpeg2000_impl=jpeg2000_impl
            )
        return result
    prepare, finish = stages
    seeds = seeds.view(n_l, b)
    xf, chunk = _working_copy(x)
    for i in range(0, b, chunk):
        xc = xf[i : i + chunk]
        n = xc.shape[0]
        state = prepare(xc)
        for lev, src in enumerate(source):
            if src != lev:
                dst[lev, i : i + n].copy_(dst[src, i : i + n])
                continue
            _clamp_into(finish(state, xc, vals[lev].expand(n), seeds[lev, i : i + n]), dst[lev, i : i + n])
    return result
