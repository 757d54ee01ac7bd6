"""A dataset from any CSV label file: ``load_dataset("csv", "labels.csv")``.

Format: a header row, then one row per image. Columns (names are case-insensitive):

* image path: ``path`` (or ``image``, ``filename``, ``file``, ``name``, ``image_name``, ``dis_img_path``)
  — relative to the CSV's folder (or to ``image_root``), or absolute;
* score: ``score`` (or ``mos``, ``dmos``);
* optional reference id: ``ref`` (or ``reference``, ``ref_img_path``) — makes the dataset synthetic,
  so that splits are reference-disjoint;
* optional ``dist_type`` (or ``dis_type``) and ``std``.

Malformed rows (no path, a score that is empty / not a number / NaN, a missing image file) raise a
:class:`~shamisa.errors.DatasetError` listing the first few with their line numbers, unless
``skip_bad=True``: then they are left out and listed in ``IQADataset.skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shamisa.datasets.base import (
    IQADataset,
    SkippedRow,
    find_column,
    parse_float,
    read_csv_rows,
    require_file,
)
from shamisa.errors import DatasetError

PATH_COLUMNS = ("path", "image", "filename", "file", "name", "image_name", "dis_img_path")
SCORE_COLUMNS = ("score", "mos", "dmos")
REF_COLUMNS = ("ref", "reference", "ref_img_path")
TYPE_COLUMNS = ("dist_type", "dis_type")
MAX_LISTED = 5


def _optional(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {h.lower(): h for h in header}
    return next((lower[c] for c in candidates if c in lower), None)


def load_csv(
    path: str | Path,
    *,
    mos_type: str | None = None,
    score_range: tuple[float, float] | None = None,
    skip_bad: bool = False,
    image_root: str | Path | None = None,
    name: str = "csv",
    check_files: bool = True,
) -> IQADataset:
    """Load a dataset from a CSV label file.

    Args:
        path: the CSV file.
        mos_type: ``"mos"`` or ``"dmos"``; default ``"dmos"`` when the score column is named ``dmos``,
            else ``"mos"``.
        score_range: the published (lo, hi) score range; default the observed min and max (widened
            by 1 on each side if all scores are equal).
        skip_bad: leave malformed rows out (listed in ``IQADataset.skipped``) instead of raising.
        image_root: folder that relative paths are relative to (default: the CSV's folder).
        name: the dataset name to record.
        check_files: treat rows whose image file does not exist as malformed.

    Raises:
        DatasetError: missing file or columns, malformed rows (without ``skip_bad``), no valid row.
    """
    csv_path = Path(path).expanduser().resolve()
    require_file(csv_path, "a CSV label file with columns path and score")
    base = csv_path.parent if image_root is None else Path(image_root).expanduser().resolve()
    header, rows = read_csv_rows(csv_path)
    path_col = find_column(header, PATH_COLUMNS, csv_path, "image path")
    score_col = find_column(header, SCORE_COLUMNS, csv_path, "score")
    ref_col = _optional(header, REF_COLUMNS)
    type_col = _optional(header, TYPE_COLUMNS)
    std_col = _optional(header, ("std",))
    if mos_type is None:
        mos_type = "dmos" if score_col.lower() == "dmos" else "mos"

    paths: list[Path] = []
    scores: list[float] = []
    refs: list[str] = []
    types: list[str] = []
    stds: list[float] = []
    skipped: list[SkippedRow] = []
    for line, r in rows:
        raw_path, raw_score = r.get(path_col, ""), r.get(score_col, "")
        reason = None
        value = parse_float(raw_score)
        p = Path(raw_path)
        if not raw_path:
            reason = "missing image path"
        elif value is None:
            reason = "missing score" if not raw_score else f"score {raw_score!r} is not a finite number"
        elif ref_col is not None and not r.get(ref_col, ""):
            reason = "missing reference id"
        else:
            p = p if p.is_absolute() else base / p
            if check_files and not p.is_file():
                reason = f"image file not found: {p}"
        if reason is not None:
            skipped.append(SkippedRow(line=line, reason=reason, path=raw_path))
            continue
        paths.append(p)
        scores.append(float(value))  # type: ignore[arg-type]
        if ref_col is not None:
            refs.append(r[ref_col])
        if type_col is not None:
            types.append(r.get(type_col, ""))
        if std_col is not None:
            s = parse_float(r.get(std_col, ""))
            stds.append(np.nan if s is None else s)

    if skipped and not skip_bad:
        shown = "; ".join(f"line {s.line}: {s.reason}" for s in skipped[:MAX_LISTED])
        more = f" (and {len(skipped) - MAX_LISTED} more)" if len(skipped) > MAX_LISTED else ""
        raise DatasetError(
            f"{csv_path}: {len(skipped)} malformed row(s): {shown}{more} (fix them, or leave them out: --skip-bad-rows on the command line, skip_bad=True in Python)"
        )
    if not paths:
        raise DatasetError(f"{csv_path}: no valid rows (expected a header then one row per image)")
    arr = np.asarray(scores, dtype=np.float64)
    if score_range is None:
        lo, hi = float(arr.min()), float(arr.max())
        score_range = (lo - 1.0, hi + 1.0) if lo == hi else (lo, hi)
    std = np.asarray(stds, dtype=np.float64) if std_col is not None and not np.isnan(stds).any() else None
    return IQADataset(
        name=name,
        root=base,
        paths=tuple(paths),
        scores=arr,
        mos_type=mos_type,
        score_range=score_range,
        synthetic=ref_col is not None,
        refs=tuple(refs) if ref_col is not None else None,
        dist_types=tuple(types) if type_col is not None else None,
        std=std,
        skipped=tuple(skipped),
    )


def describe_skipped(skipped: Sequence[SkippedRow], source: object, *, limit: int = 20) -> list[str]:
    """Lines telling how many malformed label rows of ``source`` were left out, then the first
    ``limit`` with their line numbers and reasons."""
    if not skipped:
        return []
    lines = [f"skipped {len(skipped)} malformed row(s) of {source}:"]
    for row in skipped[:limit]:
        lines.append(f"  line {row.line}: {row.reason}" + (f" ({row.path})" if row.path and row.path not in row.reason else ""))
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return lines
