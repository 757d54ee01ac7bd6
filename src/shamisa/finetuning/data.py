"""The data side of LML-IQA fine-tuning: the split a run trains on, scores normalised to [0, 1]
(higher is better), the random salient-crop sampling of a training image and the fixed views an image
is scored on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from shamisa.datasets import make_splits
from shamisa.errors import ConfigError, DatasetError
from shamisa.finetuning.saliency import box_means, extract_crops, sample_crop_boxes, spectral_residual_saliency
from shamisa.images import center_corners_crops, ensure_min_side, two_scale_crops

__all__ = ["EvalMode", "eval_views", "normalise_scores", "sample_training_crops", "split_indices"]

EvalMode = Literal["five_two_scale", "center"]


def normalise_scores(scores: np.ndarray, score_range: Sequence[float], mos_type: str) -> np.ndarray:
    """Map raw scores to [0, 1] with higher = better (DMOS is flipped)."""
    lo, hi = float(score_range[0]), float(score_range[1])
    if hi <= lo:
        raise DatasetError(f"invalid score range {tuple(score_range)}")
    y = (np.asarray(scores, dtype=np.float64) - lo) / (hi - lo)
    return 1.0 - y if str(mos_type).lower() == "dmos" else y


def sample_training_crops(
    image: torch.Tensor, crop: int, n_crops: int, scales: Sequence[float], generator: torch.Generator, *, saliency: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Crops of one training image and their spectral-residual saliency.

    Returns:
        ``(crops (M, 3, crop, crop), boxes (M, 4), saliency (M,) or None)``.
    """
    x = ensure_min_side(image, crop)
    boxes = sample_crop_boxes(x.shape[-2], x.shape[-1], crop, n_crops, scales, generator=generator)
    crops = extract_crops(x, boxes, crop)
    sal = box_means(spectral_residual_saliency(x), boxes) if saliency else None
    return crops, boxes, sal


def eval_views(image: torch.Tensor, crop: int, mode: EvalMode) -> torch.Tensor:
    """The crops an image is scored on: (10, 3, crop, crop) for five_two_scale, (1, ...) for center."""
    if mode == "center":
        return center_corners_crops(ensure_min_side(image, crop), crop)[:1]
    full, half = two_scale_crops(image, crop)
    return torch.cat([full, half])


def split_indices(
    ds: Any, *, split: int, n_splits: int, seed: int, limit: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train / val / test image indices of random split ``split`` (of ``n_splits``, seed ``seed``),
    each cut to ``limit`` images when given.

    Raises:
        ConfigError: ``split`` out of range.
        DatasetError: a part with fewer than 2 images.
    """
    splits = make_splits(ds, n_splits=n_splits, seed=seed)
    n = len(splits.train)
    if not 0 <= split < n:
        raise ConfigError(f"split {split} out of range: the dataset has {n} splits")
    parts = [np.asarray(s[split], dtype=np.int64) for s in (splits.train, splits.val, splits.test)]
    parts = [p[p >= 0] for p in parts]
    if limit is not None:
        parts = [p[: limit] for p in parts]
    train, val, test = parts
    if len(train) < 2 or len(val) < 2 or len(test) < 2:
        raise DatasetError(
            f"split {split} has too few images (train {len(train)}, val {len(val)}, test {len(test)}; need >= 2 each)"
        )
    return train, val, test
