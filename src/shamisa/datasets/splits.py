"""Train / validation / test splits of an IQA dataset: made, saved, validated and reused.

Split rules (:func:`make_splits`):

* **reference-disjoint** (datasets with references: LIVE, CSIQ, TID2013, KADID-10k, a CSV with a ref
  column): sort the unique reference ids; for split ``s`` permute them with
  ``np.random.default_rng(seed + s)``; the first ``round(r_train * n_refs)`` references go to train,
  the next ``round(r_val * n_refs)`` to validation, the rest to test. Every image follows its
  reference, so no content is shared between parts.
* **random** (authentic datasets: CLIVE, KonIQ-10k, SPAQ): the same scheme over images.
* **official** (FLIVE): the release's single train/val/test split.
* **arniqa**: split files of the ARNIQA repository (``train.npy`` etc.), see :func:`load_arniqa_splits`.

Index arrays are sorted int64 positions into the dataset. Saved splits are JSON with the image names,
so that a split file made for another version or order of the dataset is detected (:func:`load_splits`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shamisa.datasets.base import IQADataset
from shamisa.errors import ConfigError, DatasetError
from shamisa.fileio import atomic_write_json

log = logging.getLogger(__name__)

SPLIT_KINDS = ("reference-disjoint", "random", "official", "arniqa")
FORMAT = "shamisa-splits"
FORMAT_VERSION = 1
_PARTS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Splits:
    """``n`` splits of a dataset into train / val / test index arrays.

    Attributes:
        train, val, test: tuples of length n of sorted int64 index arrays into the dataset.
        dataset: the dataset name.
        seed: base seed of the generator (split s used ``seed + s``); -1 when not generated here.
        kind: ``"reference-disjoint"``, ``"random"``, ``"official"`` or ``"arniqa"``.
        ratios: the (train, val, test) proportions asked for, when generated here.
        names: image names (relative to the dataset root) in dataset order, when known; used to
            detect a split file that does not belong to a dataset.
    """

    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]
    dataset: str
    seed: int
    kind: str
    ratios: tuple[float, float, float] | None = None
    names: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise DatasetError(f"split kind must be one of {SPLIT_KINDS}, not {self.kind!r}")
        if not len(self.train) == len(self.val) == len(self.test):
            raise DatasetError(
                f"{self.dataset}: {len(self.train)} train, {len(self.val)} val and {len(self.test)} test "
                "index arrays (expected the same number)"
            )
        for part in _PARTS:
            arrays = tuple(_index_array(a) for a in getattr(self, part))
            object.__setattr__(self, part, arrays)

    def __len__(self) -> int:
        return len(self.train)

    def __repr__(self) -> str:
        return f"Splits(dataset={self.dataset!r}, kind={self.kind!r}, n={len(self)}, seed={self.seed})"

    def split(self, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The (train, val, test) index arrays of split ``s``."""
        return self.train[s], self.val[s], self.test[s]

    def max_index(self) -> int:
        """The largest index used by any split (-1 when every array is empty)."""
        values = [int(a.max()) for part in _PARTS for a in getattr(self, part) if a.size]
        return max(values, default=-1)


def _index_array(a: np.ndarray | list[int]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.size == 0:
        arr = np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DatasetError(f"split indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    arr.setflags(write=False)
    return arr


def _check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}")
    return r  # type: ignore[return-value]


def _partition(
    n_units: int, ratios: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Permute ``range(n_units)`` and cut it into round(r_train n), round(r_val n), rest."""
    perm = rng.permutation(n_units)
    n_train = min(n_units, round(ratios[0] * n_units))
    n_val = min(n_units - n_train, round(ratios[1] * n_units))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def make_splits(
    ds: IQADataset,
    n_splits: int = 10,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 27,
) -> Splits:
    """Make the dataset's standard splits (reference-disjoint, random, or its official split).

    Args:
        ds: the dataset.
        n_splits: number of splits (ignored for an official split, which is one).
        ratios: (train, val, test) proportions of references (synthetic) or images (authentic).
        seed: split ``s`` uses ``np.random.default_rng(seed + s)``.

    Returns:
        :class:`Splits` whose index arrays are sorted positions into ``ds``.
    """
    names = ds.relative_names()
    if ds.official_split is not None:
        labels = np.asarray(ds.official_split)
        parts = {p: (np.flatnonzero(labels == p),) for p in _PARTS}
        return Splits(**parts, dataset=ds.name, seed=seed, kind="official", names=names)
    if n_splits < 1:
        raise ConfigError(f"n_splits must be at least 1, got {n_splits}")
    r = _check_ratios(ratios)
    if len(ds) == 0:
        raise DatasetError(f"{ds.name}: cannot split an empty dataset")
    out: dict[str, list[np.ndarray]] = {p: [] for p in _PARTS}
    if ds.refs is not None:
        kind = "reference-disjoint"
        unique_refs = np.array(sorted(set(ds.refs)), dtype=object)
        ref_arr = np.asarray(ds.refs, dtype=object)
        for s in range(n_splits):
            groups = _partition(len(unique_refs), r, np.random.default_rng(seed + s))
            for part, g in zip(_PARTS, groups, strict=True):
                out[part].append(np.flatnonzero(np.isin(ref_arr, unique_refs[g])))
    else:
        kind = "random"
        for s in range(n_splits):
            groups = _partition(len(ds), r, np.random.default_rng(seed + s))
            for part, g in zip(_PARTS, groups, strict=True):
                out[part].append(np.sort(g))
    return Splits(
        train=tuple(out["train"]),
        val=tuple(out["val"]),
        test=tuple(out["test"]),
        dataset=ds.name,
        seed=seed,
        kind=kind,
        ratios=r,
        names=names,
    )


def save_splits(splits: Splits, path: str | Path) -> Path:
    """Write ``splits`` as readable JSON (atomically): indices per split plus the image names."""
    path = Path(path)
    obj = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dataset": splits.dataset,
        "kind": splits.kind,
        "seed": splits.seed,
        "ratios": None if splits.ratios is None else list(splits.ratios),
        "n_splits": len(splits),
        "n_images": None if splits.names is None else len(splits.names),
        "images": None if splits.names is None else list(splits.names),
        "splits": [{p: getattr(splits, p)[s].tolist() for p in _PARTS} for s in range(len(splits))],
    }
    atomic_write_json(path, obj, indent=1)
    return path


def load_splits(path: str | Path, ds: IQADataset | None = None) -> Splits:
    """Read a split file written by :func:`save_splits`; with ``ds``, check it belongs to ``ds``.

    When the file's image names are the dataset's names in another order, indices are remapped by name.

    Raises:
        DatasetError: missing / malformed file, or (with ``ds``) a file made for another dataset or
            another version of it (different number of images or names).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: split file not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable split file ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise DatasetError(f'{path}: not a shamisa split file (missing "format": "{FORMAT}")')
    if obj.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: split file version {obj.get('version')} (this version reads {FORMAT_VERSION})"
        )
    try:
        rows = obj["splits"]
        parts = {p: tuple(np.asarray(row[p], dtype=np.int64) for row in rows) for p in _PARTS}
        names = None if obj.get("images") is None else tuple(str(n) for n in obj["images"])
        ratios = None if obj.get("ratios") is None else tuple(float(x) for x in obj["ratios"])
        splits = Splits(
            **parts,
            dataset=str(obj["dataset"]),
            seed=int(obj["seed"]),
            kind=str(obj["kind"]),
            ratios=ratios,  # type: ignore[arg-type]
            names=names,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed split file ({type(e).__name__}: {e})") from e
    n_images = obj.get("n_images")
    if n_images is not None:
        _check_bounds(splits, int(n_images), str(path))
    if ds is not None:
        splits = _validate_against(splits, ds, str(path))
    return splits


def _check_bounds(splits: Splits, n: int, where: str) -> None:
    for s in range(len(splits)):
        tr, va, te = splits.split(s)
        joined = np.concatenate([tr, va, te])
        if joined.size and (joined.min() < 0 or joined.max() >= n):
            raise DatasetError(f"{where}: split {s} has indices outside [0, {n})")
        if np.unique(joined).size != joined.size:
            raise DatasetError(f"{where}: split {s} has an image in more than one part (or twice)")


def _validate_against(splits: Splits, ds: IQADataset, where: str) -> Splits:
    """Check that ``splits`` was made for ``ds``; remap by name when only the order changed."""
    n = len(ds)
    if splits.names is None:
        _check_bounds(splits, n, where)
        return splits
    ds_names = ds.relative_names()
    if len(splits.names) != n:
        raise DatasetError(
            f"{where}: stale split file: made for {len(splits.names)} images, dataset {ds.name!r} has {n}"
        )
    if splits.names == ds_names:
        _check_bounds(splits, n, where)
        return splits
    position = {name: i for i, name in enumerate(ds_names)}
    missing = [name for name in splits.names if name not in position]
    if missing or len(position) != n:
        shown = ", ".join(missing[:3])
        raise DatasetError(
            f"{where}: stale split file: its image names do not match dataset {ds.name!r}"
            + (f" (e.g. {shown} not in the dataset)" if shown else "")
        )
    _check_bounds(splits, len(splits.names), where)
    remap = np.array([position[name] for name in splits.names], dtype=np.int64)
    parts = {p: tuple(np.sort(remap[a]) for a in getattr(splits, p)) for p in _PARTS}
    log.info("%s: split indices remapped to the dataset's image order", where)
    return Splits(
        **parts,
        dataset=splits.dataset,
        seed=splits.seed,
        kind=splits.kind,
        ratios=splits.ratios,
        names=ds_names,
    )


def load_arniqa_splits(folder: str | Path, ds: IQADataset) -> Splits:
    """Read ARNIQA-style split files ``train.npy``, ``val.npy``, ``test.npy`` (in ``folder`` or
    ``folder/splits``): integer arrays of shape (n_splits, max_len) padded with -1 (or 1-D for one
    split). The padding is dropped.

    The indices refer to the dataset order of ARNIQA's loaders, which for CLIVE (the .mat order without
    the 7 training images), KADID-10k (dmos.csv order), KonIQ-10k (csv order), SPAQ and TID2013
    matches this package's loaders.

    Raises:
        DatasetError: missing files, mismatched shapes, or indices outside the dataset.
    """
    folder = Path(folder)
    if not (folder / "train.npy").is_file() and (folder / "splits" / "train.npy").is_file():
        folder = folder / "splits"
    arrays: dict[str, np.ndarray] = {}
    for part in _PARTS:
        f = folder / f"{part}.npy"
        if not f.is_file():
            raise DatasetError(f"{f}: file not found (expected ARNIQA split indices train/val/test.npy)")
        try:
            a = np.load(f, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{f}: not a readable .npy integer array ({e})") from e
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or (a.dtype.kind not in "iuf"):
            raise DatasetError(
                f"{f}: expected a 2-D integer array (n_splits, max_len), got {a.dtype} {a.shape}"
            )
        arrays[part] = a
    n_splits = {a.shape[0] for a in arrays.values()}
    if len(n_splits) != 1:
        raise DatasetError(
            f"{folder}: train/val/test.npy hold different numbers of splits {sorted(n_splits)}"
        )
    parts = {p: tuple(np.sort(row[row >= 0]).astype(np.int64) for row in arrays[p]) for p in _PARTS}
    splits = Splits(**parts, dataset=ds.name, seed=-1, kind="arniqa", names=ds.relative_names())
    _check_bounds(splits, len(ds), str(folder))
    return splits


def get_or_create_splits(
    ds: IQADataset,
    cache_path: str | Path,
    n_splits: int = 10,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 27,
) -> Splits:
    """Reuse the split file at ``cache_path`` if it is valid for ``ds`` and was made with the same
    settings; otherwise make the splits with :func:`make_splits` and save them there."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            cached = load_splits(cache_path, ds)
        except DatasetError as e:
            log.warning("%s; making new splits", e)
        else:
            if cached.kind in ("official", "arniqa") or (
                cached.seed == seed
                and len(cached) == n_splits
                and cached.ratios is not None
                and np.allclose(cached.ratios, _check_ratios(ratios))
            ):
                return cached
            log.info("%s: made with other settings; making new splits", cache_path)
    splits = make_splits(ds, n_splits=n_splits, ratios=ratios, seed=seed)
    save_splits(splits, cache_path)
    return splits
