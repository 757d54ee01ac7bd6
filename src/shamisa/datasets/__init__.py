"""IQA dataset loaders (official layouts + a generic CSV) and train/val/test splits.

Example::

    from shamisa.datasets import load_dataset, make_splits
    ds = load_dataset("clive", os.environ["CLIVE_ROOT"])  # the ChallengeDB_release folder
    splits = make_splits(ds)            # 10 random 70/10/20 splits, seed 27
    train = ds.subset(splits.train[0])
"""

from __future__ import annotations

from shamisa.datasets.base import IQADataset, SkippedRow
from shamisa.datasets.registry import DATASETS, DatasetInfo, dataset_info, load_dataset
from shamisa.datasets.splits import (
    Splits,
    get_or_create_splits,
    load_arniqa_splits,
    load_splits,
    make_splits,
    save_splits,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "IQADataset",
    "SkippedRow",
    "Splits",
    "dataset_info",
    "get_or_create_splits",
    "load_arniqa_splits",
    "load_dataset",
    "load_splits",
    "make_splits",
    "save_splits",
]
