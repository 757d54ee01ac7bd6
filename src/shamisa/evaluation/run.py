"""One evaluation run, end to end: load a dataset, make or read its splits, build the encoder (or the
BRISQUE features), extract and cache the probe features, run the split protocol, write the result files,
and optionally test the same regressors on a second dataset. ``shamisa evaluate`` parses its options
into an :class:`EvaluationRequest` and calls :func:`run_evaluation`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shamisa.datasets import load_arniqa_splits, load_dataset, load_splits, make_splits
from shamisa.datasets.generic import describe_skipped, load_csv
from shamisa.device import resolve_device
from shamisa.errors import ConfigError
from shamisa.evaluation.brisque import brisque_features_from_paths
from shamisa.evaluation.features import extract_features
from shamisa.evaluation.protocol import (
    EvalConfig,
    EvalResult,
    evaluate_cross_dataset,
    evaluate_linear_probe,
    write_results,
)
from shamisa.models import build_encoder, encoder_from_weights, with_content, with_readout
from shamisa.models.readout import check_readout

__all__ = ["EvaluationRequest", "EvaluationOutcome", "parse_ratios", "run_evaluation"]

LABEL_SUFFIXES = {".csv", ".tsv", ".txt"}


@dataclass(frozen=True)
class EvaluationRequest:
    """What to evaluate and how (the options of ``shamisa evaluate``)."""

    dataset: str
    root: Path | None = None
    encoder: str = "efficientnet_lite0"
    weights: Path | None = None
    with_content: bool = False
    readout: str = "head"
    method: str = "probe"
    regressor: str | None = None
    splits_file: Path | None = None
    arniqa_splits: Path | None = None
    n_splits: int = 10
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    seed: int = 27
    alpha_grid: str = "protocol"
    cross_dataset: str | None = None
    cross_root: Path | None = None
    out: Path | None = None
    cache: Path | None = None
    crop: int = 224
    batch_size: int = 8
    device: str = "cpu"
    workers: int = 2
    amp: bool = False
    limit: int | None = None
    skip_bad_rows: bool = False
    progress: bool = True


@dataclass(frozen=True)
class EvaluationOutcome:
    """The within-dataset result, the files written, and the cross-dataset result if asked for."""

    result: EvalResult
    paths: dict[str, Path]
    cross: EvalResult | None = None
    cross_paths: dict[str, Path] | None = None
    seconds: float = 0.0


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> (0.7, 0.1, 0.2); ConfigError unless three non-negative numbers summing to 1."""
    try:
        parts = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--ratios must be three numbers like 0.7,0.1,0.2, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"--ratios must be three non-negative numbers summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def _dataset(name_or_csv: str, root: Path | None, limit: int | None, skip_bad_rows: bool, log: Callable[[str], None]) -> Any:
    p = Path(name_or_csv)
    if p.suffix.lower() in LABEL_SUFFIXES or p.is_file():
        ds = load_csv(p, name=p.stem, skip_bad=skip_bad_rows)
        for line in describe_skipped(ds.skipped, p):
            log(line)
    else:
        if root is None:
            raise ConfigError(f"--root is required for the dataset {name_or_csv!r} (the folder of its release)")
        ds = load_dataset(name_or_csv, root)
    if limit is not None and limit < len(ds):
        ds = ds.subset(list(range(limit)))
    return ds


def _splits(ds: Any, req: EvaluationRequest) -> Any:
    if req.splits_file is not None and req.arniqa_splits is not None:
        raise ConfigError("give either --splits or --arniqa-splits, not both")
    if req.splits_file is not None:
        return load_splits(req.splits_file, ds)
    if req.arniqa_splits is not None:
        return load_arniqa_splits(req.arniqa_splits, ds)
    return make_splits(ds, n_splits=req.n_splits, ratios=req.ratios, seed=req.seed)


def build_probe_encoder(
    name: str, weights: Path | None, device: str, *, content: bool = False, readout: str = "head"
) -> tuple[Any, dict[str, Any]]:
    """The frozen encoder of a probe run and its description for the result file.

    ``weights`` None: ImageNet weights of ``name``; a shamisa encoder file; or a foreign state dict of
    architecture ``name``. ``content``: pair it with the frozen ImageNet encoder of its architecture
    (:func:`shamisa.models.with_content`). ``readout``: ``head`` or ``multilevel``
    (:mod:`shamisa.models.readout`).
    """
    meta: dict[str, Any] = {}
    if weights is None:
        enc, source = build_encoder(name, pretrained=True), "imagenet"
    else:
        enc, meta = encoder_from_weights(weights, name)
        source = str(weights)
    if content:
        enc = with_content(enc)
        source = f"imagenet content + {source}"
    enc = with_readout(enc, readout)
    enc = enc.to(device).eval().to(memory_format=torch.channels_last)
    info: dict[str, Any] = {"name": enc.name, "feature_dim": enc.feature_dim, "weights": source, "weights_hash": enc.weights_hash()}
    if content:
        info["shared_stages"] = enc.shared_stages
    if readout != "head":
        info["readout"] = readout
    if meta:
        info["file_metadata"] = meta
    return enc, info


def _features(req: EvaluationRequest, cfg: EvalConfig, ds: Any, encoder: Any) -> Any:
    if req.method == "brisque":
        return brisque_features_from_paths(
            ds.paths, num_workers=cfg.num_workers, cache_dir=req.cache, dataset_name=ds.name, progress=req.progress
        )
    return extract_features(
        encoder, ds.paths, crop=cfg.crop, batch_size=cfg.batch_size, device=cfg.device,
        num_workers=cfg.num_workers, cache_dir=req.cache, dataset_name=ds.name, amp=cfg.amp, progress=req.progress,
    )


def run_evaluation(req: EvaluationRequest, log: Callable[[str], None] = lambda _: None) -> EvaluationOutcome:
    """Run one evaluation (see the module docstring); ``log`` receives one-line progress messages.

    Raises:
        ShamisaError subclasses: bad options, unreadable dataset or encoder file, too-small splits.
    """
    cfg = EvalConfig(
        method=req.method, regressor=req.regressor, crop=req.crop, n_splits=req.n_splits, seed=req.seed,
        ratios=req.ratios, alpha_grid=req.alpha_grid, batch_size=req.batch_size, device=req.device,
        num_workers=max(0, req.workers), amp=req.amp, limit=req.limit,
    )
    if req.method == "brisque" and (req.weights is not None or req.with_content or req.readout != "head"):
        raise ConfigError("--weights, --with-content and --readout have no meaning with --method brisque")
    check_readout(req.readout)
    resolve_device(cfg.device)  # fails early on a device this machine does not have
    if req.cross_root is not None and req.cross_dataset is None:
        raise ConfigError("--cross-root is given without --cross-dataset")
    t_start = time.perf_counter()
    ds = _dataset(req.dataset, req.root, cfg.limit, req.skip_bad_rows, log)
    splits = _splits(ds, req)
    if req.method == "brisque":
        enc, model_info = None, {"name": "brisque", "features": 36}
    else:
        enc, model_info = build_probe_encoder(
            req.encoder, req.weights, cfg.device, content=req.with_content, readout=req.readout
        )
    model_name = model_info["name"]
    out = req.out or Path("runs") / "eval" / f"{ds.name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    resolved: dict[str, Any] = {
        "dataset": ds.name, "root": str(ds.root), "n_images": len(ds),
        "splits": {"kind": splits.kind, "n": len(splits), "seed": splits.seed}, "model": model_info,
        "config": cfg.to_dict(), "cache": None if req.cache is None else str(req.cache), "out": str(out),
        "torch_threads": torch.get_num_threads(),
    }
    if req.cross_dataset:
        resolved["cross_dataset"] = {"dataset": req.cross_dataset, "root": None if req.cross_root is None else str(req.cross_root)}
    log("shamisa evaluate: " + json.dumps(resolved, default=str))

    t0 = time.perf_counter()
    feats = _features(req, cfg, ds, enc)
    result = evaluate_linear_probe(
        feats, ds, splits, cfg, model_info=model_info, timing={"features": round(time.perf_counter() - t0, 3)}
    )
    paths = write_results(result, out)
    cross = cross_paths = None
    if req.cross_dataset:
        target = _dataset(req.cross_dataset, req.cross_root, None, False, log)
        t1 = time.perf_counter()
        tfeats = _features(req, cfg, target, enc)
        cross = evaluate_cross_dataset(
            feats, ds, splits, tfeats, target, cfg, model_info=model_info,
            timing={"features": round(time.perf_counter() - t1, 3)},
        )
        cross_paths = write_results(cross, Path(out) / f"cross-{target.name}")
    return EvaluationOutcome(result, paths, cross, cross_paths, round(time.perf_counter() - t_start, 1))
