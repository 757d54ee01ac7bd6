"""Loaders of synthetically distorted datasets (with reference images): LIVE, CSIQ, TID2013, KADID-10k.

Every image carries its reference id (``IQADataset.refs``), used for reference-disjoint splits, and
its distortion type (``IQADataset.dist_types``). Reference images themselves are never in the dataset.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np

from shamisa.datasets.base import (
    IQADataset,
    check_files_exist,
    find_column,
    parse_float,
    read_csv_rows,
    require_dir,
    require_file,
)
from shamisa.datasets.matfiles import mat_strings, mat_vector
from shamisa.errors import DatasetError

# --------------------------------------------------------------------------------------- shared


def _resolve_listed(root: Path, listed: str) -> Path:
    """Resolve a label-file path: relative to ``root``, else with its first component (the dataset
    folder name, as in ``CSIQ/dst_imgs/...``) dropped."""
    rel = PurePosixPath(listed.replace("\\", "/"))
    direct = root / rel
    if direct.exists() or len(rel.parts) < 2:
        return direct
    stripped = root / PurePosixPath(*rel.parts[1:])
    return stripped if stripped.exists() else direct


def _load_pair_csv(
    root: Path, label: Path, name: str, mos_type: str, score_range: tuple[float, float], check_files: bool
) -> IQADataset:
    """A ``dis_img_path,dis_type,ref_img_path,score`` table (the layout of the ``iqadataset``
    package's CSV files and of the LIVE.txt / CSIQ.txt files ARNIQA uses)."""
    header, rows = read_csv_rows(label)
    dis_col = find_column(header, ["dis_img_path"], label, "distorted image path")
    ref_col = find_column(header, ["ref_img_path"], label, "reference image path")
    score_col = find_column(header, ["score"], label, "score")
    type_col = next((h for h in header if h.lower() == "dis_type"), None)
    bad = []
    for line, r in rows:
        if not r[dis_col] or not r[ref_col]:
            bad.append(f"line {line}: missing image path")
        elif parse_float(r[score_col]) is None:
            bad.append(f"line {line}: score {r[score_col]!r} is not a number")
    if bad:
        raise DatasetError(f"{label}: {len(bad)} malformed row(s): " + "; ".join(bad[:5]))
    paths = tuple(_resolve_listed(root, r[dis_col]) for _, r in rows)
    if check_files:
        check_files_exist(paths, name)
    return IQADataset(
        name=name,
        root=root,
        paths=paths,
        scores=np.array([float(r[score_col]) for _, r in rows]),
        mos_type=mos_type,
        score_range=score_range,
        synthetic=True,
        refs=tuple(PurePosixPath(r[ref_col].replace("\\", "/")).stem for _, r in rows),
        dist_types=None if type_col is None else tuple(r[type_col] for _, r in rows),
    )


# --------------------------------------------------------------------------------------- LIVE

LIVE_FOLDERS = ("jp2k", "jpeg", "wn", "gblur", "fastfading")
LIVE_RANGE = (1.0, 100.0)


def _live_folder_count(folder: Path) -> int:
    """Number of distorted images in a LIVE folder: the lines of its info.txt, else its imgN.bmp files."""
    info = folder / "info.txt"
    if info.is_file():
        return sum(1 for line in info.read_text(encoding="latin-1").splitlines() if line.strip())
    return sum(1 for p in folder.glob("img*.bmp") if re.fullmatch(r"img\d+\.bmp", p.name))


def load_live(
    root: str | Path, *, realigned: bool = True, labels: str = "auto", check_files: bool = True
) -> IQADataset:
    """Load LIVE Image Quality Assessment Database Release 2 (779 distorted images, 29 references).

    Layout (official release): ``refnames_all.mat`` (``refnames_all``: reference name of each of the
    982 entries), ``dmos_realigned.mat`` (``dmos_new``, ``orgs``, ``dmos_std``) and/or ``dmos.mat``
    (``dmos``, ``orgs``), and the folders ``jp2k/ jpeg/ wn/ gblur/ fastfading/`` holding
    ``img1.bmp ... imgN.bmp`` and an ``info.txt`` (one line per image). Entries are ordered folder by
    folder, image number by image number; entries with ``orgs == 1`` are the reference images and are
    dropped. Alternatively a ``LIVE.txt`` table (``dis_img_path,dis_type,ref_img_path,score``).

    Args:
        root: the ``databaserelease2`` folder.
        realigned: use ``dmos_realigned.mat`` (the realigned DMOS) when it exists; else ``dmos.mat``.
        labels: ``"auto"`` (LIVE.txt when present, else the .mat files), ``"mat"`` or ``"csv"``.
        check_files: verify that every image exists.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the LIVE Release 2 folder")
    if labels not in ("auto", "mat", "csv"):
        raise DatasetError(f"live: labels must be 'auto', 'mat' or 'csv', not {labels!r}")
    table = root / "LIVE.txt"
    if labels == "csv" or (labels == "auto" and table.is_file()):
        require_file(table, "LIVE.txt (dis_img_path,dis_type,ref_img_path,score)")
        return _load_pair_csv(root, table, "live", "dmos", LIVE_RANGE, check_files)

    refnames = mat_strings(require_file(root / "refnames_all.mat", "refnames_all.mat"), "refnames_all")
    realigned_path = root / "dmos_realigned.mat"
    std = None
    if realigned and realigned_path.is_file():
        dmos = mat_vector(realigned_path, "dmos_new")
        orgs = mat_vector(realigned_path, "orgs")
        try:
            std = mat_vector(realigned_path, "dmos_std")
        except DatasetError:
            std = None
    else:
        plain = require_file(root / "dmos.mat", "dmos.mat (or dmos_realigned.mat) with the DMOS")
        dmos = mat_vector(plain, "dmos")
        orgs = mat_vector(plain, "orgs")
    paths: list[Path] = []
    types: list[str] = []
    for folder_name in LIVE_FOLDERS:
        folder = require_dir(root / folder_name, f"the LIVE '{folder_name}' images and info.txt")
        count = _live_folder_count(folder)
        paths.extend(folder / f"img{k}.bmp" for k in range(1, count + 1))
        types.extend([folder_name] * count)
    n = len(dmos)
    if not (len(orgs) == len(refnames) == len(paths) == n) or (std is not None and len(std) != n):
        raise DatasetError(
            f"{root}: inconsistent LIVE labels: {n} DMOS, {len(orgs)} orgs flags, {len(refnames)} reference "
            f"names, {len(paths)} images in {'/ '.join(LIVE_FOLDERS)}/ (from info.txt)"
        )
    keep = np.flatnonzero(orgs == 0)
    kept_paths = tuple(paths[i] for i in keep)
    if check_files:
        check_files_exist(kept_paths, "live")
    return IQADataset(
        name="live",
        root=root,
        paths=kept_paths,
        scores=dmos[keep],
        mos_type="dmos",
        score_range=LIVE_RANGE,
        synthetic=True,
        refs=tuple(Path(refnames[i]).stem for i in keep),
        dist_types=tuple(types[i] for i in keep),
        std=None if std is None else std[keep],
    )


# --------------------------------------------------------------------------------------- CSIQ


def load_csiq(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load CSIQ (866 distorted images, 30 references, DMOS in [0, 1]).

    Layout: ``dst_imgs/<type>/<ref>.<TYPE>.<level>.png``, ``src_imgs/<ref>.png`` and the label table
    ``CSIQ.txt`` with columns ``dis_img_path,dis_type,ref_img_path,score`` (paths may start with the
    dataset folder name, e.g. ``CSIQ/dst_imgs/awgn/1600.AWGN.1.png``).
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the CSIQ folder with dst_imgs/ and CSIQ.txt")
    require_dir(root / "dst_imgs", "the CSIQ distorted images dst_imgs/<type>/")
    label = require_file(root / "CSIQ.txt", "the CSIQ label table (dis_img_path,dis_type,ref_img_path,score)")
    return _load_pair_csv(root, label, "csiq", "dmos", (0.0, 1.0), check_files)


# --------------------------------------------------------------------------------------- TID2013

TID2013_TYPES = (
    "additive_gaussian_noise",
    "additive_noise_in_color_components",
    "spatially_correlated_noise",
    "masked_noise",
    "high_frequency_noise",
    "impulse_noise",
    "quantization_noise",
    "gaussian_blur",
    "image_denoising",
    "jpeg_compression",
    "jpeg2000_compression",
    "jpeg_transmission_errors",
    "jpeg2000_transmission_errors",
    "non_eccentricity_pattern_noise",
    "local_blockwise_distortions",
    "mean_shift",
    "contrast_change",
    "change_of_color_saturation",
    "multiplicative_gaussian_noise",
    "comfort_noise",
    "lossy_compression_of_noisy_images",
    "color_quantization_with_dither",
    "chromatic_aberrations",
    "sparse_sampling_and_reconstruction",
)
_TID_NAME = re.compile(r"^i(\d+)_(\d+)_(\d+)\.bmp$", re.IGNORECASE)


def _case_insensitive_lookup(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir()} if folder.is_dir() else {}


def load_tid2013(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load TID2013 (3,000 distorted images, 25 references, MOS in [0, 9]).

    Layout: ``mos_with_names.txt`` (lines ``<mos> <name>``, e.g. ``5.51429 i01_01_1.bmp``),
    ``distorted_images/iXX_YY_Z.bmp`` (reference XX, distortion type YY of 24, level Z of 5) and
    ``reference_images/``. The reference id is the name prefix (``I01``); file names are matched
    without regard to case (the release mixes ``i``/``I`` and ``.bmp``/``.BMP``).
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the TID2013 folder")
    label = require_file(root / "mos_with_names.txt", "the TID2013 label file (lines '<mos> <name>')")
    images = require_dir(root / "distorted_images", "the TID2013 distorted images iXX_YY_Z.bmp")
    lookup = _case_insensitive_lookup(images)
    scores: list[float] = []
    paths: list[Path] = []
    refs: list[str] = []
    types: list[str] = []
    bad: list[str] = []
    for lineno, line in enumerate(label.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        value = parse_float(parts[0]) if parts else None
        match = _TID_NAME.match(parts[1]) if len(parts) == 2 else None
        if value is None or match is None:
            bad.append(f"line {lineno}: {line.strip()!r}")
            continue
        name = parts[1]
        scores.append(value)
        paths.append(lookup.get(name.lower(), images / name))
        refs.append(f"I{int(match.group(1)):02d}")
        t = int(match.group(2))
        types.append(TID2013_TYPES[t - 1] if 1 <= t <= len(TID2013_TYPES) else f"type_{t:02d}")
    if bad:
        raise DatasetError(
            f"{label}: {len(bad)} malformed line(s) (expected '<mos> iXX_YY_Z.bmp'): " + "; ".join(bad[:5])
        )
    if check_files:
        check_files_exist(paths, "tid2013")
    return IQADataset(
        name="tid2013",
        root=root,
        paths=tuple(paths),
        scores=np.array(scores),
        mos_type="mos",
        score_range=(0.0, 9.0),
        synthetic=True,
        refs=tuple(refs),
        dist_types=tuple(types),
    )


# --------------------------------------------------------------------------------------- KADID-10k

KADID_TYPES = (
    "gaussian_blur",
    "lens_blur",
    "motion_blur",
    "color_diffusion",
    "color_shift",
    "color_quantization",
    "color_saturation_1",
    "color_saturation_2",
    "jpeg2000",
    "jpeg",
    "white_noise",
    "white_noise_color_component",
    "impulse_noise",
    "multiplicative_noise",
    "denoise",
    "brighten",
    "darken",
    "mean_shift",
    "jitter",
    "non_eccentricity_patch",
    "pixelate",
    "quantization",
    "color_block",
    "high_sharpen",
    "contrast_change",
)
_KADID_NAME = re.compile(r"^I\d+_(\d+)_(\d+)\.png$", re.IGNORECASE)


def load_kadid10k(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load KADID-10k (10,125 distorted images, 81 references, 25 types x 5 levels).

    Layout: ``dmos.csv`` (columns ``dist_img,ref_img,dmos,var``) and ``images/`` holding both the
    distorted ``Ixx_yy_zz.png`` and reference ``Ixx.png`` images. Despite its column name the
    ``dmos`` value is a MOS in [1, 5], higher is better; ``std`` is ``sqrt(var)``.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the KADID-10k folder with dmos.csv and images/")
    label = require_file(root / "dmos.csv", "the KADID-10k label file (dist_img,ref_img,dmos,var)")
    images = require_dir(root / "images", "the KADID-10k images")
    header, rows = read_csv_rows(label)
    dist_col = find_column(header, ["dist_img"], label, "distorted image")
    ref_col = find_column(header, ["ref_img"], label, "reference image")
    score_col = find_column(header, ["dmos"], label, "score (dmos)")
    var_col = next((h for h in header if h.lower() == "var"), None)
    bad = []
    for line, r in rows:
        if not r[dist_col] or not r[ref_col]:
            bad.append(f"line {line}: missing image name")
        elif parse_float(r[score_col]) is None:
            bad.append(f"line {line}: dmos {r[score_col]!r} is not a number")
    if bad:
        raise DatasetError(f"{label}: {len(bad)} malformed row(s): " + "; ".join(bad[:5]))
    paths = tuple(images / r[dist_col] for _, r in rows)
    if check_files:
        check_files_exist(paths, "kadid10k")
    types = []
    for _, r in rows:
        m = _KADID_NAME.match(r[dist_col])
        t = int(m.group(1)) if m else 0
        types.append(KADID_TYPES[t - 1] if 1 <= t <= len(KADID_TYPES) else "unknown")
    std = None
    if var_col is not None:
        var = [parse_float(r[var_col]) for _, r in rows]
        if all(v is not None and v >= 0 for v in var):
            std = np.sqrt(np.array(var, dtype=np.float64))
    return IQADataset(
        name="kadid10k",
        root=root,
        paths=paths,
        scores=np.array([float(r[score_col]) for _, r in rows]),
        mos_type="mos",
        score_range=(1.0, 5.0),
        synthetic=True,
        refs=tuple(Path(r[ref_col]).stem for _, r in rows),
        dist_types=tuple(types),
        std=std,
    )
