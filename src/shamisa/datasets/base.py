"""The in-memory form of an IQA dataset and the small helpers every loader shares.

An :class:`IQADataset` is a frozen list of absolute image paths with their published scores (MOS or
DMOS, untouched), the score convention (``mos_type`` and ``score_range``) and, where the release has
them, the reference id, distortion type and opinion-score standard deviation of each image.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shamisa.errors import DatasetError

MOS_TYPES = ("mos", "dmos")


@dataclass(frozen=True)
class SkippedRow:
    """A label-file row that was left out because it was malformed (``skip_bad=True``).

    Attributes:
        line: 1-based line number in the label file (the header is line 1).
        reason: why the row was skipped, e.g. ``"score 'abc' is not a number"``.
        path: the image path as written in the row ("" if missing).
    """

    line: int
    reason: str
    path: str = ""


@dataclass(frozen=True, eq=False)
class IQADataset:
    """An image quality dataset: N images with their published scores.

    Attributes:
        name: dataset key (``"clive"``, ``"live"``, ... or ``"csv"``).
        root: the dataset folder (for ``"csv"``: the CSV file's folder).
        paths: absolute image paths, length N.
        scores: float64 array (N,), the scores as published (MOS or DMOS, never rescaled).
        mos_type: ``"mos"`` (higher is better) or ``"dmos"`` (lower is better).
        score_range: the published score range ``(lo, hi)``.
        synthetic: True for datasets with reference images (distorted copies of pristine images).
        refs: reference id of each image (synthetic sets), else None.
        dist_types: distortion type of each image where the release gives it, else None.
        std: float64 array (N,) of opinion-score standard deviations where published, else None.
        official_split: ``"train"``/``"val"``/``"test"`` per image when the release defines one
            official split (FLIVE), else None.
        skipped: malformed label rows left out by ``skip_bad=True`` (generic CSV), else empty.
    """

    name: str
    root: Path
    paths: tuple[Path, ...]
    scores: np.ndarray
    mos_type: str
    score_range: tuple[float, float]
    synthetic: bool
    refs: tuple[str, ...] | None = None
    dist_types: tuple[str, ...] | None = None
    std: np.ndarray | None = None
    official_split: tuple[str, ...] | None = None
    skipped: tuple[SkippedRow, ...] = field(default=())

    def __post_init__(self) -> None:
        n = len(self.paths)
        scores = np.array(self.scores, dtype=np.float64).reshape(-1)
        if scores.shape != (n,):
            raise DatasetError(f"{self.name}: {n} images but {scores.size} scores")
        if self.mos_type not in MOS_TYPES:
            raise DatasetError(f"{self.name}: mos_type must be one of {MOS_TYPES}, not {self.mos_type!r}")
        lo, hi = (float(v) for v in self.score_range)
        if not lo < hi:
            raise DatasetError(f"{self.name}: score_range must have lo < hi, got ({lo}, {hi})")
        for attr in ("refs", "dist_types", "official_split"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise DatasetError(f"{self.name}: {attr} has {len(value)} entries for {n} images")
        std = None
        if self.std is not None:
            std = np.array(self.std, dtype=np.float64).reshape(-1)
            if std.shape != (n,):
                raise DatasetError(f"{self.name}: std has {std.size} entries for {n} images")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "score_range", (lo, hi))
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        scores.setflags(write=False)
        if std is not None:
            std.setflags(write=False)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        kind = "synthetic" if self.synthetic else "authentic"
        return (
            f"IQADataset(name={self.name!r}, n={len(self)}, {kind}, {self.mos_type} in "
            f"{self.score_range}, root={str(self.root)!r})"
        )

    def higher_is_better(self) -> bool:
        """True for MOS (higher = better quality), False for DMOS."""
        return self.mos_type == "mos"

    def subset(self, idx: np.ndarray | Sequence[int]) -> IQADataset:
        """The images at integer positions ``idx`` (in that order), with every per-image field."""
        index = np.asarray(idx, dtype=np.int64).reshape(-1)
        n = len(self)
        if index.size and (index.min() < -n or index.max() >= n):
            raise IndexError(f"{self.name}: subset index out of range for {n} images")

        def pick(seq: tuple | None) -> tuple | None:
            return None if seq is None else tuple(seq[i] for i in index)

        return IQADataset(
            name=self.name,
            root=self.root,
            paths=tuple(self.paths[i] for i in index),
            scores=self.scores[index],
            mos_type=self.mos_type,
            score_range=self.score_range,
            synthetic=self.synthetic,
            refs=pick(self.refs),
            dist_types=pick(self.dist_types),
            std=None if self.std is None else self.std[index],
            official_split=pick(self.official_split),
            skipped=self.skipped,
        )

    def relative_names(self) -> tuple[str, ...]:
        """Image paths relative to ``root`` in POSIX form (the file name when outside ``root``)."""
        return tuple(relative_name(p, self.root) for p in self.paths)


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as a POSIX string, or just its file name if not under root."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


# --------------------------------------------------------------------------- shared loader helpers


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise a DatasetError saying what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found (expected {what})")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise a DatasetError saying what was expected there."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected {what})")
    return path


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``root / c`` that exists, else a DatasetError listing every candidate."""
    for c in candidates:
        p = root / c
        if p.exists():
            return p
    listed = ", ".join(candidates)
    raise DatasetError(f"{root}: none of [{listed}] found (expected {what})")


def check_files_exist(paths: Sequence[Path], dataset: str, max_listed: int = 5) -> None:
    """Raise a DatasetError naming the first few missing image files, if any."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:max_listed])
        more = f" (and {len(missing) - max_listed} more)" if len(missing) > max_listed else ""
        raise DatasetError(
            f"{dataset}: {len(missing)} image file(s) listed in the labels are missing: {shown}{more}"
        )


def read_csv_rows(
    path: Path, delimiter: str | None = None
) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Read a delimited text file with a header row.

    Returns:
        (header, rows) where each row is ``(line_number, {column: value})``; line numbers are 1-based
        with the header on line 1. Whitespace around names and values is stripped; a UTF-8 BOM is
        ignored. Blank lines are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read label file ({e.strerror or e})") from e
    lines = text.splitlines()
    if not lines:
        raise DatasetError(f"{path}: label file is empty (expected a header row)")
    if delimiter is None:
        head = lines[0]
        delimiter = "\t" if head.count("\t") > head.count(",") else ","
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for lineno, record in enumerate(reader, start=1):
        if header is None:
            header = [h.strip() for h in record]
            continue
        if not any(v.strip() for v in record):
            continue
        values = [v.strip() for v in record] + [""] * max(0, len(header) - len(record))
        rows.append((lineno, dict(zip(header, values, strict=False))))
    assert header is not None
    return header, rows


def find_column(header: Sequence[str], candidates: Sequence[str], path: Path, what: str) -> str:
    """The first header column matching one of ``candidates`` (case-insensitive)."""
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    raise DatasetError(
        f"{path}: no {what} column (expected one of {', '.join(candidates)}; found {', '.join(header)})"
    )


def parse_float(value: str) -> float | None:
    """A finite float, or None for empty / non-numeric / NaN / infinite text."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None
