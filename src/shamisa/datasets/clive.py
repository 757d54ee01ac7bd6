"""CLIVE: the LIVE In the Wild Image Quality Challenge Database (``ChallengeDB_release``).

Layout::

    ChallengeDB_release/
        Images/                      1,162 test images (*.bmp, *.JPG), plus trainingImages/t1..t7.bmp
        Data/AllImages_release.mat   AllImages_release: (1169, 1) cell of file names
        Data/AllMOS_release.mat      AllMOS_release:    (1, 1169) MOS in [0, 100], higher is better
        Data/AllStdDev_release.mat   AllStdDev_release: (1, 1169) std of the opinion scores

The first 7 entries are the subject-training images t1..t7 (stored in ``Images/trainingImages``); the
standard protocol drops them, leaving 1,162 images.
"""

from __future__ import annotations

from pathlib import Path

from shamisa.datasets.base import IQADataset, check_files_exist, require_dir
from shamisa.datasets.matfiles import mat_strings, mat_vector
from shamisa.errors import DatasetError

N_TRAINING_ENTRIES = 7
SCORE_RANGE = (0.0, 100.0)


def load_clive(root: str | Path, *, check_files: bool = True) -> IQADataset:
    """Load CLIVE from its official release folder.

    Args:
        root: the ``ChallengeDB_release`` folder (holding ``Images/`` and ``Data/``).
        check_files: verify that every listed image exists (DatasetError naming the missing ones).

    Returns:
        An authentic MOS dataset (0-100) of the test images, in the order of the .mat files, with
        per-image standard deviations.
    """
    root = Path(root).expanduser().resolve()
    require_dir(root, "the CLIVE ChallengeDB_release folder with Images/ and Data/")
    data = require_dir(root / "Data", "AllImages_release.mat, AllMOS_release.mat, AllStdDev_release.mat")
    images = require_dir(root / "Images", "the CLIVE images")
    names = mat_strings(data / "AllImages_release.mat", "AllImages_release")
    mos = mat_vector(data / "AllMOS_release.mat", "AllMOS_release")
    std_path = data / "AllStdDev_release.mat"
    std = mat_vector(std_path, "AllStdDev_release") if std_path.is_file() else None
    if len(mos) != len(names) or (std is not None and len(std) != len(names)):
        raise DatasetError(
            f"{data}: {len(names)} image names but {len(mos)} MOS values"
            + ("" if std is None else f" and {len(std)} standard deviations")
        )
    if len(names) <= N_TRAINING_ENTRIES:
        raise DatasetError(
            f"{data}: only {len(names)} entries (expected 7 training entries then the test images)"
        )
    keep = slice(N_TRAINING_ENTRIES, None)
    paths = tuple(images / n for n in names[keep])
    if check_files:
        check_files_exist(paths, "clive")
    return IQADataset(
        name="clive",
        root=root,
        paths=paths,
        scores=mos[keep],
        mos_type="mos",
        score_range=SCORE_RANGE,
        synthetic=False,
        std=None if std is None else std[keep],
    )
