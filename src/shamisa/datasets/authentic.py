"""Loaders of authentically distorted datasets with a CSV/XLSX label table: KonIQ-10k, SPAQ, FLIVE.

(CLIVE, whose labels are MATLAB files, lives in :mod:`shamisa.datasets.clive`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shamisa.datasets.base import (
    IQADataset,
    check_files_exist,
    find_column,
    first_existing,
    parse_float,
    read_csv_rows,
    require_dir,
    require_file,
)
from shamisa.errors import DatasetError

# --------------------------------------------------------------------------------------- helpers


def _numbers(rows: list[tuple[int, dict[str, str]]], column: str, path: Path) -> np.ndarray:
    """Column ``column`` as float64; a DatasetError lists the first rows that are not numbers."""
    values = [parse_float(r[column]) for _, r in rows]
    bad = [(line, r[column]) for (line, r), v in zip(rows, values, strict=True) if v is None]
    if bad:
        shown = "; ".join(f"line {line}: {v!r}" for line, v in bad[:5])
        raise DatasetError(f"{path}: {len(bad)} row(s) with a missing or non-numeric {column!r}: {shown}")
    return np.asarray(values, dtype=np.float64)


def _names(rows: list[tuple[int, dict[str, str]]], column: str, path: Path) -> list[str]:
    names = [r[column] for _, r in rows]
    bad = [line for (line, _), n in zip(rows, names, strict=True) if not n]
    if bad:
        raise DatasetError(f"{path}: {len(bad)} row(s) without an image name (lines {bad[:5]})")
    return names


# --------------------------------------------------------------------------------------- KonIQ-10k

KONIQ_RESOLUTIONS = ("1024x768", "512x384")


def load_koniq10k(
    root: str | Path, *, resolution: str | None = None, score: str = "MOS", check_files: bool = True
) -> IQADataset:
    """Load KonIQ-10k from its release folder.

    Layout: ``koniq10k_scores_and_distributions.csv`` (columns ``image_name``, ``MOS`` in [1, 5],
    ``SD``, ``MOS_zscore``, ...) and the images in ``1024x768/`` (or ``512x384/``).

    Args:
        root: the KonIQ-10k folder.
        resolution: ``"1024x768"`` or ``"512x384"``; default: the first of the two that exists.
        score: ``"MOS"`` (range 1-5, default) or ``"MOS_zscore"`` (range 0-100).
        check_files: verify that every image exists.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the KonIQ-10k folder")
    label = require_file(
        root / "koniq10k_scores_and_distributions.csv", "the KonIQ-10k label file (image_name, MOS, ...)"
    )
    if resolution is None:
        images = first_existing(root, KONIQ_RESOLUTIONS, "the KonIQ-10k image folder 1024x768/ or 512x384/")
    else:
        if resolution not in KONIQ_RESOLUTIONS:
            raise DatasetError(f"koniq10k: resolution must be one of {KONIQ_RESOLUTIONS}, not {resolution!r}")
        images = require_dir(root / resolution, f"the KonIQ-10k images at {resolution}")
    header, rows = read_csv_rows(label)
    name_col = find_column(header, ["image_name"], label, "image name")
    score_col = find_column(header, [score], label, f"score ({score})")
    score_range = (0.0, 100.0) if score_col.lower() == "mos_zscore" else (1.0, 5.0)
    names = _names(rows, name_col, label)
    paths = tuple(images / n for n in names)
    if check_files:
        check_files_exist(paths, "koniq10k")
    std = None
    if "SD" in header and score_col == "MOS":
        std = _numbers(rows, "SD", label)
    return IQADataset(
        name="koniq10k",
        root=root,
        paths=paths,
        scores=_numbers(rows, score_col, label),
        mos_type="mos",
        score_range=score_range,
        synthetic=False,
        std=std,
    )


# --------------------------------------------------------------------------------------- SPAQ

SPAQ_LABEL = "MOS and Image attribute scores"


def _read_xlsx(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """First worksheet of an .xlsx file as (header, rows) like :func:`read_csv_rows` (needs openpyxl)."""
    try:
        import openpyxl  # type: ignore[import-not-found]
    except ImportError as e:
        raise DatasetError(
            f"{path}: reading .xlsx label files needs openpyxl (pip install openpyxl), "
            f"or save the sheet as '{path.with_suffix('.csv').name}' next to it"
        ) from e
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many types for corrupt files
        raise DatasetError(f"{path}: not a readable .xlsx file ({e})") from e
    try:
        it = wb.worksheets[0].iter_rows(values_only=True)
        header = [str(h).strip() if h is not None else "" for h in next(it, ())]
        rows = []
        for lineno, record in enumerate(it, start=2):
            values = ["" if v is None else str(v).strip() for v in record]
            if any(values):
                rows.append((lineno, dict(zip(header, values, strict=False))))
    finally:
        wb.close()
    if not header:
        raise DatasetError(f"{path}: the first worksheet is empty (expected a header row)")
    return header, rows


def load_spaq(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load SPAQ from its release folder.

    Layout: ``Annotations/MOS and Image attribute scores.xlsx`` (columns ``Image name``, ``MOS`` in
    [0, 100], attribute scores) — or the same table saved as ``.csv`` — and the images in
    ``TestImage/``. The evaluation protocol resizes SPAQ images so that the shorter side is 512; the
    loader returns the original files.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the SPAQ folder with Annotations/ and TestImage/")
    ann = require_dir(root / "Annotations", f"'{SPAQ_LABEL}.xlsx' (or .csv)")
    images = require_dir(root / "TestImage", "the SPAQ images")
    csv_path, xlsx_path = ann / f"{SPAQ_LABEL}.csv", ann / f"{SPAQ_LABEL}.xlsx"
    if csv_path.is_file():
        label = csv_path
        header, rows = read_csv_rows(csv_path)
    elif xlsx_path.is_file():
        label = xlsx_path
        header, rows = _read_xlsx(xlsx_path)
    else:
        raise DatasetError(f"{ann}: file not found (expected '{SPAQ_LABEL}.xlsx' or '{SPAQ_LABEL}.csv')")
    name_col = find_column(header, ["Image name", "image_name", "name"], label, "image name")
    mos_col = find_column(header, ["MOS", "mos"], label, "MOS")
    names = _names(rows, name_col, label)
    paths = tuple(images / n for n in names)
    if check_files:
        check_files_exist(paths, "spaq")
    return IQADataset(
        name="spaq",
        root=root,
        paths=paths,
        scores=_numbers(rows, mos_col, label),
        mos_type="mos",
        score_range=(0.0, 100.0),
        synthetic=False,
    )


# --------------------------------------------------------------------------------------- FLIVE

FLIVE_VAL_FRACTION = 0.125
_TRUE = {"1", "true", "t", "yes", "y"}
_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _flags(rows: list[tuple[int, dict[str, str]]], column: str) -> np.ndarray:
    return np.array([r[column].strip().lower() in _TRUE for _, r in rows], dtype=bool)


def _flive_split(header: list[str], rows: list[tuple[int, dict[str, str]]], label: Path) -> tuple[str, ...]:
    """The official train/val/test label of each row.

    Rules, in order: a ``split``/``set`` column with train/val/test words; else the boolean columns
    ``is_test`` (test) and ``is_valid`` (val). When the file marks only ``is_valid`` (no test marker),
    those rows are the held-out test set. When no validation is marked, the first 12.5% (rounded) of
    the non-test rows, in file order, form the validation set.
    """
    lower = {h.lower(): h for h in header}
    n = len(rows)
    split_col = lower.get("split") or lower.get("set")
    if split_col is not None:
        words = [r[split_col].strip().lower() for _, r in rows]
        bad = [(line, w) for (line, _), w in zip(rows, words, strict=True) if w not in _SPLIT_WORDS]
        if bad:
            shown = "; ".join(f"line {line}: {w!r}" for line, w in bad[:5])
            raise DatasetError(f"{label}: {split_col!r} must be train/val/test: {shown}")
        labels = np.array([_SPLIT_WORDS[w] for w in words], dtype=object)
    else:
        test_col, valid_col = lower.get("is_test"), lower.get("is_valid")
        if test_col is None and valid_col is None:
            raise DatasetError(
                f"{label}: no official split column (expected 'split', 'is_test' or 'is_valid'); "
                "use shamisa.datasets.load_arniqa_splits with ARNIQA's FLIVE split files instead"
            )
        labels = np.full(n, "train", dtype=object)
        if test_col is not None:
            labels[_flags(rows, test_col)] = "test"
            if valid_col is not None:
                labels[_flags(rows, valid_col) & (labels != "test")] = "val"
        else:
            labels[_flags(rows, valid_col)] = "test"  # type: ignore[arg-type]
    if not np.any(labels == "val"):
        non_test = np.flatnonzero(labels != "test")
        labels[non_test[: round(FLIVE_VAL_FRACTION * non_test.size)]] = "val"
    if not np.any(labels == "test"):
        raise DatasetError(f"{label}: the official split marks no test images")
    return tuple(str(x) for x in labels)


def load_flive(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load FLIVE (the PaQ-2-PiQ image database) with its single official split.

    Layout: ``labels_image.csv`` (columns ``name``, ``mos`` in [1, 100] and the split marker: a
    ``split`` column or ``is_test`` / ``is_valid`` flags); image names are relative to ``database/``
    when that folder exists, else to the root. The split is in ``IQADataset.official_split`` and
    :func:`~shamisa.datasets.splits.make_splits` returns it as the one split of kind ``"official"``.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the FLIVE folder with labels_image.csv")
    label = require_file(root / "labels_image.csv", "the FLIVE label file (name, mos, split columns)")
    header, rows = read_csv_rows(label)
    name_col = find_column(header, ["name", "name_image"], label, "image name")
    mos_col = find_column(header, ["mos", "mos_image"], label, "MOS")
    images = root / "database" if (root / "database").is_dir() else root
    names = _names(rows, name_col, label)
    paths = tuple(images / n for n in names)
    if check_files:
        check_files_exist(paths, "flive")
    return IQADataset(
        name="flive",
        root=root,
        paths=paths,
        scores=_numbers(rows, mos_col, label),
        mos_type="mos",
        score_range=(1.0, 100.0),
        synthetic=False,
        official_split=_flive_split(header, rows, label),
    )
