"""The pretraining data: folders of pristine images -> structured SHAMISA items -> batches.

Item ``i`` of epoch ``e`` (spec §1.2):

1. a generator seeded from ``(seed, e, i)``, so the same item can be rebuilt bit for bit (resume,
   DataLoader workers, DDP ranks all produce identical items);
2. ``n_comps`` distortion compositions, shared by all references of the item;
3. ``n_refs`` references: image ``i`` (the anchor) and ``n_refs - 1`` others drawn uniformly from the
   rest of the set;
4. per reference a full-scale and an independent half-scale crop (``builder.sample_views``);
5. every composition at every level applied to every crop (``builder.build_structured_batch``).

Keys: ``dataset[(epoch, index)]`` (or ``dataset[index]`` for epoch 0). :class:`ItemSampler` yields the
keys of one rank's share of an epoch in a seeded order, starting at any step (for resume).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shamisa.distortions import builder, sample_compositions
from shamisa.distortions.codecs import DEFAULT_JPEG2000_IMPL, check_jpeg2000_impl
from shamisa.errors import DatasetError, ImageLoadError
from shamisa.images import IMAGE_EXTENSIONS, load_image

__all__ = ["ItemSampler", "PristineDataset", "epoch_order", "find_images", "item_seed", "make_loader"]

log = logging.getLogger(__name__)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed mixed from (seed, epoch, index) by numpy's SeedSequence (well spread, stable)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFF_FFFF_FFFF_FFFF


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of item indices for ``epoch`` (same on every rank)."""
    g = torch.Generator().manual_seed(item_seed(seed, epoch, 0xFFFFFFFF))
    return torch.randperm(n, generator=g).tolist()


def _is_excluded(path: Path, root: Path, exclude: Sequence[str]) -> bool:
    rel_parts = path.relative_to(root).parts[:-1]
    for ex in exclude:
        ex_path = Path(ex)
        if ex_path.is_absolute():
            if path.is_relative_to(ex_path):
                return True
        elif len(ex_path.parts) == 1:
            if ex in rel_parts:
                return True
        elif path.relative_to(root).as_posix().startswith(ex_path.as_posix().rstrip("/") + "/"):
            return True
    return False


def find_images(dirs: Sequence[str | os.PathLike[str]], exclude: Sequence[str] = ()) -> list[Path]:
    """All image files under ``dirs`` (recursive, sorted, by extension), minus excluded sub-folders.

    ``exclude`` entries are folder names (``kodak24``: any sub-folder of that name), relative paths
    (``bsds500/test``) or absolute paths.

    Raises:
        DatasetError: a folder is missing.
    """
    found: list[Path] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder of images")
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if p.suffix.lower() in IMAGE_EXTENSIONS and not name.startswith(".") and not _is_excluded(p, root, exclude):
                    found.append(p)
    return sorted(set(found))


def _header_ok(path: Path, min_side: int) -> str | None:
    """None when the file's header looks like a usable image, else the reason (no full decode)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
        if min(w, h) < min_side:
            return f"image is {w}x{h}, smaller than {min_side} px"
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "skip this file"
        return f"{type(e).__name__}: {e}"


class PristineDataset(torch.utils.data.Dataset):
    """Structured SHAMISA items built on the fly from folders of pristine images.

    Args:
        dirs: image folders (searched recursively).
        exclude: sub-folder names / paths to leave out (held-out test images).
        patch_size: crop side in px.
        n_refs, n_comps, n_levels, max_distortions, severity_dist: item structure (spec §1.2, §1.4).
        seed: base seed; item (epoch, i) uses :func:`item_seed`.
        device: where distortions are synthesised. ``"cpu"`` (default, also inside DataLoader workers)
            or an accelerator, in which case crops are moved there before distortion (main process only).
        jpeg2000_impl: how the ``jpeg2000`` type is computed: ``"openjpeg"`` (default, the real codec) or
            ``"approx"`` (the labelled wavelet approximation). An attribute of the dataset, so DataLoader
            workers get it with the dataset (no process-wide setting).

    Attributes:
        paths: usable image files. ``skipped``: ``(path, reason)`` of files left out.
    """

    def __init__(
        self,
        dirs: Sequence[str | os.PathLike[str]],
        *,
        exclude: Sequence[str] = (),
        patch_size: int = 224,
        n_refs: int = 3,
        n_comps: int = 4,
        n_levels: int = 5,
        max_distortions: int = 7,
        severity_dist: str = "gaussian",
        seed: int = 0,
        device: str | torch.device = "cpu",
        jpeg2000_impl: str = DEFAULT_JPEG2000_IMPL,
    ) -> None:
        check_jpeg2000_impl(jpeg2000_impl)
        if not dirs:
            raise DatasetError("no image folders given (set data_dirs / --data)")
        candidates = find_images(dirs, exclude)
        self.skipped: list[tuple[str, str]] = []
        self.paths: list[Path] = []
        for p in candidates:
            reason = _header_ok(p, min_side=8)
            if reason is None:
                self.paths.append(p)
            else:
                self.skipped.append((str(p), reason))
                log.warning("skipping %s: %s", p, reason)
        if not self.paths:
            raise DatasetError(
                f"no usable images under {', '.join(map(str, dirs))}"
                + (f" (excluding {', '.join(exclude)})" if exclude else "")
                + (f"; {len(self.skipped)} file(s) could not be read" if self.skipped else "")
            )
        self.patch_size = patch_size
        self.n_refs = n_refs
        self.n_comps = n_comps
        self.n_levels = n_levels
        self.max_distortions = max_distortions
        self.severity_dist = severity_dist
        self.seed = seed
        self.device = torch.device(device)
        self.jpeg2000_impl = jpeg2000_impl

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int, g: torch.Generator) -> torch.Tensor:
        """Load image ``index``; an unreadable file is recorded and replaced by a random other image."""
        tried = 0
        while True:
            path = self.paths[index]
            try:
                return load_image(path)
            except ImageLoadError as e:
                self.skipped.append((str(path), e.reason))
                log.warning("skipping unreadable image %s", e)
                tried += 1
                if tried >= len(self.paths):
                    raise DatasetError("none of the pretraining images could be decoded") from None
                index = int(torch.randint(len(self.paths), (1,), generator=g))

    def ref_indices(self, index: int, g: torch.Generator) -> list[int]:
        """The anchor ``index`` followed by ``n_refs - 1`` uniformly drawn other images (with
        replacement among the others; the anchor itself only when the set has one image)."""
        n = len(self.paths)
        out = [index]
        for _ in range(self.n_refs - 1):
            if n == 1:
                out.append(index)
                continue
            j = int(torch.randint(n - 1, (1,), generator=g))
            out.append(j + 1 if j >= index else j)
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> builder.StructuredBatch:
        epoch, index = (0, key) if isinstance(key, int) else key
        if not 0 <= index < len(self.paths):
            raise IndexError(f"item {index} out of range for {len(self.paths)} images")
        g = torch.Generator().manual_seed(item_seed(self.seed, epoch, index))
        comps = sample_compositions(
            self.n_comps,
            generator=g,
            max_distortions=self.max_distortions,
            n_levels=self.n_levels,
            severity_dist=self.severity_dist,
        )
        fulls, halves = [], []
        for r in self.ref_indices(index, g):
            full, half = builder.sample_views(self._load(r, g), self.patch_size, g)
            fulls.append(full)
            halves.append(half)
        full_t, half_t = torch.stack(fulls), torch.stack(halves)
        if self.device.type != "cpu":  # synthesise on the accelerator; the random draws stay on the CPU
            full_t, half_t = full_t.to(self.device), half_t.to(self.device)
        return builder.build_structured_batch(full_t, half_t, comps, g, jpeg2000_impl=self.jpeg2000_impl)


class ItemSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys of one rank's items for one epoch, from ``start_step`` on.

    Step ``s`` of the epoch uses the global items ``order[s*G:(s+1)*G]`` with ``G = items_per_rank *
    world_size``; rank ``r`` takes the contiguous slice ``[r*items_per_rank, (r+1)*items_per_rank)``
    so that gathering the ranks' embeddings in rank order rebuilds the single-process batch.
    Incomplete last steps are dropped.
    """

    def __init__(
        self, n_items: int, *, items_per_rank: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> None:
        self.n_items = n_items
        self.per = items_per_rank
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world = world_size
        self.start_step = start_step

    @property
    def steps(self) -> int:
        """Micro-steps in a full epoch."""
        return self.n_items // (self.per * self.world)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.per

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = epoch_order(self.n_items, self.seed, self.epoch)
        g = self.per * self.world
        for s in range(self.start_step, self.steps):
            base = s * g + self.rank * self.per
            for i in order[base : base + self.per]:
                yield (self.epoch, i)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    dataset: PristineDataset, *, items_per_step: int, num_workers: int, seed: int, epoch: int,
    rank: int, world_size: int, start_step: int, pin_memory: bool,
) -> Iterator[builder.StructuredBatch]:
    """An iterator over one rank's structured batches of ``epoch``, from micro-step ``start_step`` on."""
    sampler = ItemSampler(
        len(dataset), items_per_rank=items_per_step, seed=seed, epoch=epoch,
        rank=rank, world_size=world_size, start_step=start_step,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=items_per_step, sampler=sampler, collate_fn=builder.collate_structured,
        num_workers=num_workers, worker_init_fn=_worker_init if num_workers else None,
        pin_memory=pin_memory, drop_last=True, prefetch_factor=2 if num_workers else None,
    )
    return iter(loader)
