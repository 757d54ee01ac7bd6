"""Fitting a quality head on labelled images: the linear-probe protocol on precomputed features
(:func:`fit_head`), and :func:`fit`, which turns a label file or a rated dataset into a complete model
file (dataset, encoder, protocol features, ridge head, model card): what ``shamisa fit`` runs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shamisa.datasets import IQADataset, load_dataset, make_splits
from shamisa.datasets.generic import describe_skipped, load_csv
from shamisa.device import resolve_device
from shamisa.errors import ConfigError, DatasetError, ModelFileError
from shamisa.evaluation.features import extract_features
from shamisa.evaluation.metrics import plcc, srcc
from shamisa.evaluation.ridge import alpha_grid, fit_ridge, select_alpha
from shamisa.fileio import cache_dir
from shamisa.inference.card import ModelCard
from shamisa.inference.model_file import encoder_card_fields, read_model_file, save_model
from shamisa.inference.quality_model import load
from shamisa.models import Encoder, PairedEncoder, build_encoder, encoder_from_weights
from shamisa.models import readout_of, with_readout
from shamisa.models import with_content as with_content_encoder

__all__ = ["FitReport", "HeadFit", "MIN_IMAGES", "fit", "fit_head", "resolve_encoder"]

PROTOCOL_DESC = "5 crops x 2 scales (full + half), mean of crop predictions"
MIN_IMAGES = 30
"""Fewest labelled images :func:`fit` accepts (3 per validation split of 10)."""


@dataclass(frozen=True)
class HeadFit:
    """A ridge head fitted with the protocol, and its cross-validated agreement.

    Attributes:
        head: the final head, fitted on ALL images with the selected alpha.
        alpha: the penalty chosen by median validation SRCC over the splits.
        srcc, plcc: (S,) test-split SRCC / PLCC of heads fitted on each split's training images.
        n_images: number of images used.
    """

    head: Any
    alpha: float
    srcc: np.ndarray
    plcc: np.ndarray
    n_images: int
    grid: str = "protocol"

    @property
    def srcc_median(self) -> float:
        return float(np.median(self.srcc))

    @property
    def plcc_median(self) -> float:
        return float(np.median(self.plcc))

    def metrics(self) -> dict[str, Any]:
        """The card's ``metrics`` entry."""
        return {
            "srcc_median": round(self.srcc_median, 4),
            "plcc_median": round(self.plcc_median, 4),
            "splits": int(self.srcc.size),
            "alpha": self.alpha,
            "alpha_grid": self.grid,
            "n_images": self.n_images,
            "srcc_per_split": [round(float(v), 4) for v in self.srcc],
            "plcc_per_split": [round(float(v), 4) for v in self.plcc],
        }


def fit_head(features: np.ndarray, scores: np.ndarray, splits: Any, *, grid: str = "protocol") -> HeadFit:
    """The linear-probe protocol on precomputed features, then a final head on every image.

    Args:
        features: (N, 5, 2D) protocol features (``shamisa.evaluation.features.extract_features``).
        scores: (N,) human scores.
        splits: ``shamisa.datasets.Splits`` (train / val / test index arrays per split).
        grid: alpha grid name (``"protocol"``: 100 values in [1e-3, 1e3]; ``"budget"``: 24).

    Returns:
        :class:`HeadFit`: alpha chosen by the median validation SRCC over splits; per split a head on
        the training images with that alpha, scored on the test images (mean of 5 crop predictions);
        the final head fitted on all N images.
    """
    y = np.asarray(scores, dtype=np.float64)
    alpha, _ = select_alpha(features, y, splits.train, splits.val, alpha_grid(grid))
    s_list, p_list = [], []
    for tr, te in zip(splits.train, splits.test, strict=True):
        h = fit_ridge(features[tr], y[tr], alpha)
        pred = h.predict_images(features[te])
        s_list.append(srcc(pred, y[te]))
        p_list.append(plcc(pred, y[te]))
    head = fit_ridge(features, y, alpha)
    return HeadFit(head, float(alpha), np.asarray(s_list), np.asarray(p_list), int(y.size), grid)


def resolve_encoder(encoder: str | None, weights: str | Path | None, model: str | None) -> tuple[Encoder, str]:
    """The encoder to fit a head on, and a one-line description of where its weights come from.

    Exactly one of: ``encoder`` (ImageNet weights), ``weights`` (an encoder file, or a foreign state
    dict with ``encoder`` naming the architecture), ``model`` (the encoder of a model file / bundled
    model). Nothing given: the bundled default model's encoder.

    Raises:
        ConfigError: a contradictory combination, or a file given in the wrong role.
    """
    if model is not None and (encoder is not None or weights is not None):
        raise ConfigError("give --model, or --encoder/--weights, not both")
    if weights is not None:
        try:
            enc, _ = encoder_from_weights(weights, encoder)
        except (ConfigError, ModelFileError):
            with contextlib.suppress(ModelFileError):
                if read_model_file(weights, verify=False)[0]:
                    raise ConfigError(f"{weights} is a shamisa model file: pass it with --model, not --weights") from None
            raise
        return enc.eval(), f"{enc.name} encoder from {Path(weights).name} (weights sha256 {enc.weights_hash()[:12]})"
    if encoder is not None:
        enc = build_encoder(encoder, pretrained=True)
        return enc.eval(), f"{enc.name} encoder with ImageNet weights"
    m = load(model or "default", device="cpu")
    return m.encoder, f"{m.encoder.name} encoder of model {model or 'default'!r}"


def _labels(
    labels: str, root: Path | None, mos_type: str | None, score_range: tuple[float, float] | None
) -> tuple[IQADataset, str]:
    """A CSV label file (malformed rows left out) or a dataset name with its folder; and a description."""
    if mos_type is not None and mos_type not in ("mos", "dmos"):
        raise ConfigError(f"--mos-type must be mos or dmos, not {mos_type!r}")
    label_path = Path(labels)
    if label_path.is_file():
        kw: dict[str, Any] = {"skip_bad": True, "name": label_path.stem}
        if mos_type:
            kw["mos_type"] = mos_type
        if score_range:
            kw["score_range"] = score_range
        if root is not None:
            kw["image_root"] = root
        return load_csv(label_path, **kw), f"CSV {label_path.name}"
    if label_path.suffix.lower() in {".csv", ".tsv", ".txt"} or label_path.exists():
        raise DatasetError(f"{labels}: label file not found")
    if root is None:
        raise ConfigError(f"{labels!r} is not a file; for a dataset name give its folder with --root")
    if mos_type or score_range:
        raise ConfigError("--mos-type/--score-range apply to CSV labels only (datasets know their scale)")
    ds = load_dataset(labels, root)
    return ds, ds.name


@dataclass(frozen=True)
class FitReport:
    """What :func:`fit` wrote: the model file, its card and the cross-validated head fit."""

    path: Path
    card: ModelCard
    head_fit: HeadFit
    n_splits: int


def fit(
    labels: str,
    output: str | Path,
    *,
    root: str | Path | None = None,
    encoder: str | None = None,
    weights: str | Path | None = None,
    model: str | None = None,
    with_content: bool = False,
    readout: str | None = None,
    mos_type: str | None = None,
    score_range: tuple[float, float] | None = None,
    n_splits: int = 10,
    seed: int = 27,
    grid: str = "protocol",
    crop: int = 224,
    batch_size: int = 8,
    workers: int = 2,
    device: str | None = "auto",
    cache: bool = True,
    name: str | None = None,
    fp32: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> FitReport:
    """Fit a ridge head on labelled images and write a complete model file (encoder + head + card).

    Features follow the evaluation protocol (5 crops x 2 scales). The ridge penalty is chosen on the
    validation part of ``n_splits`` random splits (median SRCC); the card's SRCC / PLCC are the medians
    over the splits' test parts; the head in the file is refitted on all labelled images.

    Args:
        labels: a CSV label file (columns path, score; optional ref) or a dataset name (with ``root``).
        output: the model file to write (``.safetensors``).
        root: the dataset folder (dataset name), or the folder a CSV's relative paths start from.
        encoder, weights, model: where the encoder comes from (see :func:`resolve_encoder`).
        with_content: pair that encoder with the frozen ImageNet encoder of its architecture
            (content + quality features, :func:`shamisa.models.with_content`).
        readout: ``head`` or ``multilevel`` (:mod:`shamisa.models.readout`); None keeps the encoder's (a
            model file's encoder keeps the readout it was fitted with).
        mos_type, score_range: the scale of CSV labels (default: from the column name; observed range).
        n_splits, seed, grid: the random 70/10/20 splits (split s uses seed + s) and the alpha grid.
        crop, batch_size, workers, device, cache: feature extraction settings.
        name: the model name in the card (default: the output file's stem).
        fp32: store the encoder in fp32 (default fp16, half the size).
        progress: show a progress bar on stderr.
        log: receives one-line messages (skipped label rows, what is being fitted).

    Raises:
        ConfigError, DatasetError, ModelFileError: bad options, labels or files.
    """
    say = log or (lambda _msg: None)
    output = Path(output)
    root = Path(root) if root is not None else None
    ds, dataset_desc = _labels(labels, root, mos_type, score_range)
    for line in describe_skipped(ds.skipped, labels):
        say(line)
    if len(ds) < MIN_IMAGES:
        raise DatasetError(
            f"{labels}: {len(ds)} usable labelled images; at least {MIN_IMAGES} are needed (3 per validation split)"
        )
    dev = resolve_device(device)
    enc, enc_desc = resolve_encoder(encoder, weights, model)
    if with_content:
        if isinstance(enc, PairedEncoder):
            raise ConfigError("the encoder is already a content + quality pair: drop --with-content")
        enc = with_content_encoder(enc)
        enc_desc = f"{enc_desc}, paired with the frozen ImageNet {enc.content.name} (content; {enc.shared_stages} shared stages)"
    if readout is not None and readout != readout_of(enc):
        enc = with_readout(enc, readout)
        enc_desc = f"{enc_desc}, read out at several levels ({readout} readout)"
    enc = enc.to(dev).eval()
    say(f"fitting a head on {len(ds)} images of {dataset_desc} ({ds.mos_type}, range {ds.score_range[0]:g}-"
        f"{ds.score_range[1]:g}) with the {enc_desc}")
    feats = extract_features(
        enc, [str(p) for p in ds.paths], crop=crop, batch_size=batch_size, device=dev, num_workers=workers,
        cache_dir=(cache_dir() / "features") if cache else None, dataset_name=ds.name, progress=progress,
    )
    splits = make_splits(ds, n_splits=n_splits, seed=seed)
    head_fit = fit_head(feats, ds.scores, splits, grid=grid)
    ratios = "/".join(str(round(100 * r)) for r in (splits.ratios or ()))
    split_kind = f"{len(splits)} {splits.kind} {ratios} splits (seed {seed})"
    card = ModelCard(
        name=name or output.stem,
        **encoder_card_fields(enc),
        crop=crop,
        dataset=ds.name,
        mos_type=ds.mos_type,
        score_range=ds.score_range,
        recipe=(f"{enc_desc}; ridge head on {PROTOCOL_DESC}, alpha {head_fit.alpha:.4g} chosen by median validation "
                f"SRCC over {split_kind}, grid {grid}; refitted on all {len(ds)} images of {dataset_desc}"),
        metrics=head_fit.metrics(),
        description=f"{enc.name} + ridge head fitted on {dataset_desc}",
    )
    save_model(output, enc.cpu(), head_fit.head, card, dtype=None if fp32 else torch.float16)
    return FitReport(output, card, head_fit, len(splits))
