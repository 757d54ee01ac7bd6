"""The table of supported IQA datasets and the :func:`load_dataset` dispatcher."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shamisa.datasets.base import IQADataset
from shamisa.errors import DatasetError


@dataclass(frozen=True)
class DatasetInfo:
    """What the project knows about a dataset before loading it.

    Attributes:
        name: the key passed to :func:`load_dataset`.
        title: the dataset's full name.
        synthetic: True when images are distorted copies of reference images.
        mos_type: ``"mos"`` (higher = better) or ``"dmos"`` (lower = better).
        score_range: the published range of the scores.
        layout: the files the loader expects under the root folder.
        split_kind: how :func:`~shamisa.datasets.splits.make_splits` splits it.
        loader: ``"module:function"`` of the loader.
    """

    name: str
    title: str
    synthetic: bool
    mos_type: str
    score_range: tuple[float, float]
    layout: str
    split_kind: str
    loader: str


_INFOS = (
    DatasetInfo(
        "live",
        "LIVE Image Quality Assessment Database, Release 2",
        True,
        "dmos",
        (1.0, 100.0),
        "refnames_all.mat, dmos.mat or dmos_realigned.mat, jp2k/ jpeg/ wn/ gblur/ fastfading/ + info.txt",
        "reference-disjoint",
        "shamisa.datasets.synthetic:load_live",
    ),
    DatasetInfo(
        "csiq",
        "CSIQ (Categorical Subjective Image Quality)",
        True,
        "dmos",
        (0.0, 1.0),
        "dst_imgs/<type>/*.png, src_imgs/*.png and CSIQ.txt (dis_img_path,dis_type,ref_img_path,score)",
        "reference-disjoint",
        "shamisa.datasets.synthetic:load_csiq",
    ),
    DatasetInfo(
        "tid2013",
        "TID2013 (Tampere Image Database 2013)",
        True,
        "mos",
        (0.0, 9.0),
        "mos_with_names.txt, distorted_images/iXX_YY_Z.bmp, reference_images/",
        "reference-disjoint",
        "shamisa.datasets.synthetic:load_tid2013",
    ),
    DatasetInfo(
        "kadid10k",
        "KADID-10k (Konstanz Artificially Distorted Image quality Database)",
        True,
        "mos",
        (1.0, 5.0),
        "dmos.csv (dist_img,ref_img,dmos,var), images/",
        "reference-disjoint",
        "shamisa.datasets.synthetic:load_kadid10k",
    ),
    DatasetInfo(
        "clive",
        "LIVE In the Wild Image Quality Challenge Database",
        False,
        "mos",
        (0.0, 100.0),
        "Images/, Data/AllImages_release.mat, Data/AllMOS_release.mat, Data/AllStdDev_release.mat",
        "random",
        "shamisa.datasets.clive:load_clive",
    ),
    DatasetInfo(
        "koniq10k",
        "KonIQ-10k",
        False,
        "mos",
        (1.0, 5.0),
        "koniq10k_scores_and_distributions.csv (image_name, MOS), 1024x768/ or 512x384/",
        "random",
        "shamisa.datasets.authentic:load_koniq10k",
    ),
    DatasetInfo(
        "spaq",
        "SPAQ (Smartphone Photography Attribute and Quality)",
        False,
        "mos",
        (0.0, 100.0),
        "Annotations/MOS and Image attribute scores.xlsx (or .csv), TestImage/",
        "random",
        "shamisa.datasets.authentic:load_spaq",
    ),
    DatasetInfo(
        "flive",
        "FLIVE (LIVE-FB Large-Scale Social Video/Image Quality, PaQ-2-PiQ)",
        False,
        "mos",
        (1.0, 100.0),
        "labels_image.csv (name, mos, is_valid / split column), images under the root",
        "official",
        "shamisa.datasets.authentic:load_flive",
    ),
)

DATASETS: tuple[str, ...] = tuple(i.name for i in _INFOS)
"""The dataset keys :func:`load_dataset` accepts (besides ``"csv"``)."""

_BY_NAME = {i.name: i for i in _INFOS}
ALIASES = {
    "livec": "clive",
    "live_challenge": "clive",
    "challengedb": "clive",
    "koniq": "koniq10k",
    "koniq-10k": "koniq10k",
    "kadid": "kadid10k",
    "kadid-10k": "kadid10k",
    "tid": "tid2013",
    "live2": "live",
    "paq2piq": "flive",
}


def canonical_name(name: str) -> str:
    """The dataset key for ``name`` (case-insensitive, aliases such as ``livec`` or ``koniq``)."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _BY_NAME and key != "csv":
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)}, csv)")
    return key


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset key or alias."""
    key = canonical_name(name)
    if key == "csv":
        return DatasetInfo(
            "csv",
            "generic CSV label file",
            False,
            "mos",
            (0.0, 1.0),
            "a CSV with columns path (or image/filename), score (or mos/dmos), optional ref",
            "reference-disjoint if refs given, else random",
            "shamisa.datasets.generic:load_csv",
        )
    return _BY_NAME[key]


def load_dataset(name: str, root: str | Path, **kw: Any) -> IQADataset:
    """Load a dataset from its official folder layout.

    Args:
        name: a key of :data:`DATASETS` (or an alias) or ``"csv"``.
        root: the dataset folder; for ``"csv"`` the path of the CSV file.
        **kw: loader options (e.g. ``check_files=False``; for ``"csv"``: ``mos_type``,
            ``score_range``, ``skip_bad``).

    Raises:
        DatasetError: unknown name, missing folder/label file, malformed labels, missing images.
    """
    info = dataset_info(name)
    module_name, func_name = info.loader.split(":")
    loader = getattr(importlib.import_module(module_name), func_name)
    try:
        return loader(root, **kw)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise DatasetError(f"{info.name}: {e}") from e
        raise
