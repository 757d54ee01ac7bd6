"""The structured pretraining batch: refs x compositions x levels x two scales.

Layout of one item (``R`` references, ``F`` compositions, ``L`` levels, ``S`` slots, patch ``P``):

* ``refs``: (2R, 3, P, P) pristine views; view ``v < R`` is the full-scale crop of reference ``v``, view
  ``R + r`` the half-scale crop of reference ``r``.
* ``dist``: (2R, F, L, 3, P, P); ``dist[v, f, l]`` is view ``v`` through composition ``f`` at level ``l``.
* metadata copied from :class:`~shamisa.distortions.sampler.Compositions`: ``type_ids`` (F, S),
  ``indices`` / ``values`` (F, L, S), ``n_dist`` (F,), ``var_slot`` (F,).

After :func:`collate_structured` every field gets a leading item dimension ``B``; objectives flatten
``dist`` row-major over ``(b, v, f, l)``, i.e. ``dist.reshape(-1, 3, P, P)`` with index
``((b * 2R + v) * F + f) * L + l``.

Construction: the compositions are shared by all references and both scales. For each composition the
unchanged prefix of the chain (slots before the varying slot) is applied once to all 2R views as one
batch; the varying slot is applied to it at the L levels (:func:`~shamisa.distortions.apply_levels`: a type's
image-only work once), and the suffix runs level by level on each level's 2R views, the chain's last slot
writing straight into ``dist``; a level that repeats an earlier level's value of a deterministic varying slot is
copied from it (:func:`~shamisa.distortions.registry.level_sources`), and so is its whole result when the suffix is
deterministic too. This equals applying the full chain per level (exactly for deterministic types;
stochastic types draw fresh randomness per image either way), and drawing the seeds as one call per slot on the
(L * 2R)-image batch would.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from shamisa.distortions.codecs import DEFAULT_JPEG2000_IMPL
from shamisa.distortions.levels import DISTORTION_NAMES
from shamisa.distortions.memory import keep_heap
from shamisa.distortions.registry import apply_distortion, apply_levels, draw_seeds, get_spec, level_sources
from shamisa.distortions.sampler import Compositions
from shamisa.images import half_scale


@dataclass(frozen=True)
class StructuredBatch:
    """One structured item (or a collated batch of items, with a leading ``B`` on every field).

    Attributes:
        dist: (2R, F, L, 3, P, P) distorted views (collated: (B, 2R, F, L, 3, P, P)).
        refs: (2R, 3, P, P) pristine views, full scale then half scale (collated: (B, 2R, 3, P, P)).
        indices: (F, L, S) severity indices, -1 for empty slots.
        values: (F, L, S) parameter values, -1 for empty slots.
        n_dist: (F,) active slots per composition.
        var_slot: (F,) the varying slot per composition.
        type_ids: (F, S) type indices into ``DISTORTION_NAMES``, -1 for empty slots.
    """

    dist: torch.Tensor
    refs: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n_dist: torch.Tensor
    var_slot: torch.Tensor
    type_ids: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StructuredBatch:
        """Every tensor moved to ``device`` (metadata included)."""
        return StructuredBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> StructuredBatch:
        """Page-locked copy (called by ``DataLoader(pin_memory=True)``)."""
        return StructuredBatch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    @property
    def var_indices(self) -> torch.Tensor:
        """(..., F, L) severity index of the varying slot (what the metadata graphs use)."""
        slot = self.var_slot[..., None, None].expand(*self.indices.shape[:-1], 1)
        return torch.gather(self.indices, -1, slot)[..., 0]


def _crop(x: torch.Tensor, patch: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``patch`` x ``patch`` crop of (3, H, W); zero-padded (bottom/right) where smaller."""
    _, h, w = x.shape
    top = int(torch.randint(0, max(h - patch, 0) + 1, (1,), generator=generator))
    left = int(torch.randint(0, max(w - patch, 0) + 1, (1,), generator=generator))
    out = x[:, top : top + patch, left : left + patch]
    ph, pw = patch - out.shape[1], patch - out.shape[2]
    if ph or pw:
        out = F.pad(out, (0, pw, 0, ph))
    return out


def sample_views(image: torch.Tensor, patch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of one reference image.

    Args:
        image: (3, H, W) float in [0, 1].
        patch: crop side P.
        generator: CPU generator (crop positions).

    Returns:
        ``(full, half)``, each (3, P, P): a random crop of the image, and an independent random crop of the
        image downscaled to (H // 2, W // 2) with :func:`shamisa.images.half_scale`. Crops are zero-padded
        where the image is smaller than P.
    """
    full = _crop(image, patch, generator)
    half = _crop(half_scale(image), patch, generator)
    return full.contiguous(), half.contiguous()


def _apply_chain(
    x: torch.Tensor, slots: list[tuple[str, torch.Tensor]], generator: torch.Generator, jpeg2000_impl: str
) -> torch.Tensor:
    for name, vals in slots:
        x = apply_distortion(x, name, vals, generator, jpeg2000_impl=jpeg2000_impl)
    return x


def build_structured_batch(
    full: torch.Tensor,
    half: torch.Tensor,
    comps: Compositions,
    generator: torch.Generator,
    *,
    jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL,
) -> StructuredBatch:
    """Apply every composition at every level to every view.

    Args:
        full: (R, 3, P, P) full-scale crops.
        half: (R, 3, P, P) half-scale crops.
        comps: F compositions with L levels (shared by all references and both scales).
        generator: CPU generator for the stochastic distortions.
        jpeg2000_impl: how the ``jpeg2000`` type is computed (``"openjpeg"``, the real codec, or ``"approx"``;
            see :func:`~shamisa.distortions.apply_distortion`).

    Returns:
        :class:`StructuredBatch` with ``dist`` (2R, F, L, 3, P, P) on the device of ``full``.

    On the CPU the first call also applies :func:`shamisa.distortions.memory.keep_heap` to the process (glibc
    allocator thresholds; set ``SHAMISA_KEEP_HEAP=0`` to leave the allocator alone).
    """
    if full.shape != half.shape or full.ndim != 4 or full.shape[1] != 3:
        raise ValueError(f"full and half must both be (R, 3, P, P), got {tuple(full.shape)} and {tuple(half.shape)}")
    if full.device.type == "cpu":
        keep_heap()
    views = torch.cat([full, half], 0)
    v, c, h, w = views.shape
    n_f, n_l = comps.n_comps, comps.n_levels
    dist = torch.empty(v, n_f, n_l, c, h, w, dtype=views.dtype, device=views.device)
    for f in range(n_f):
        n, vs = int(comps.n_dist[f]), int(comps.var_slot[f])
        names = [DISTORTION_NAMES[int(t)] for t in comps.type_ids[f, :n]]
        vals = comps.values[f]  # (L, S)
        prefix = [(names[j], vals[0, j].expand(v)) for j in range(vs)]
        x = _apply_chain(views, prefix, generator, jpeg2000_impl)
        # the last slot of the chain writes straight into the item's output (no copy of the result)
        dst = dist[:, f].transpose(0, 1)  # (L, 2R, 3, P, P) view
        # the varying slot on the shared prefix (its level-independent work once), into the item's output: the
        # result when it is the last slot, else the suffix's input, which the suffix overwrites level by level
        # (no image-sized temporary for all levels)
        apply_levels(x, names[vs], vals[:, vs], generator, out=dst, jpeg2000_impl=jpeg2000_impl)
        if vs == n - 1:
            continue
        # the suffix level by level, so that a level's images stay in the cache through the whole chain; the
        # seeds are drawn up front in the order one call per slot would draw them
        rest = [(names[j], vals[:, j], draw_seeds(n_l * v, generator)) for j in range(vs + 1, n)]
        # a level whose varying slot repeats an earlier level's output, followed by deterministic types only,
        # repeats that level's result
        source = level_sources(names[vs], vals[:, vs])
        if any(get_spec(name).stochastic for name, _, _ in rest):
            source = list(range(n_l))
        for lev in range(n_l):
            if source[lev] != lev:
                dst[lev].copy_(dst[source[lev]])
                continue
            y = dst[lev]
            for j, (name, lv, seeds) in enumerate(rest):
                last = dst[lev] if j == len(rest) - 1 else None
                y = apply_distortion(
                    y, name, lv[lev].expand(v), seeds=seeds[lev * v : (lev + 1) * v], out=last, jpeg2000_impl=jpeg2000_impl
                )
    return StructuredBatch(
        dist=dist,
        refs=views,
        indices=comps.indices.clone(),
        values=comps.values.clone(),
        n_dist=comps.n_dist.clone(),
        var_slot=comps.var_slot.clone(),
        type_ids=comps.type_ids.clone(),
    )


def collate_structured(items: list[StructuredBatch]) -> StructuredBatch:
    """Stack items along a new leading dimension B (every field)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    return StructuredBatch(
        dist=torch.stack([it.dist for it in items]),
        refs=torch.stack([it.refs for it in items]),
        indices=torch.stack([it.indices for it in items]),
        values=torch.stack([it.values for it in items]),
        n_dist=torch.stack([it.n_dist for it in items]),
        var_slot=torch.stack([it.var_slot for it in items]),
        type_ids=torch.stack([it.type_ids for it in items]),
    )
