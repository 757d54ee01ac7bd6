"""The linear-probe evaluation protocol and its cross-dataset variant.

Within a dataset (:func:`evaluate_linear_probe`), with crop features (N, K, F) (K = 5 crops):

1. alpha is chosen once for the dataset: for every alpha of the grid, for every split, a ridge head is
   fitted on the train images' crops and predicts the validation images (mean of the K crop
   predictions); the alpha with the highest median validation SRCC over splits wins
   (:func:`shamisa.evaluation.ridge.select_alpha`).
2. For every split: fit on the train crops with that alpha, predict the test images (mean of K crop
   predictions), compute SRCC, PLCC, KRCC and RMSE against the published scores. (With ridge the
   test predictions of every alpha come out of the selection pass itself, which is exactly the
   refit with the chosen alpha: one eigendecomposition per split in all.)
3. Report median, mean and standard deviation over splits (the paper reports the median).

Cross-dataset (:func:`evaluate_cross_dataset`): alpha is chosen on the training dataset's splits;
each split's regressor predicts every image of the target dataset; predictions are mapped to the
target's score convention (orientation flip ``lo + hi - s`` with the source range when one is MOS and
the other DMOS, then the linear map of the source range onto the target range); metrics per
regressor, median over regressors.

The same functions evaluate BRISQUE (``method="brisque"``): features (N, 36), standardised, with an
RBF support-vector regressor whose C and gamma are chosen on validation the same way
(:mod:`shamisa.evaluation.brisque`), or with a ridge head (``regressor="ridge"``).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shamisa import __version__
from shamisa.errors import ConfigError, DatasetError
from shamisa.fileio import atomic_path, atomic_write_json
from shamisa.evaluation.brisque import fit_svr, select_svr
from shamisa.evaluation.metrics import MetricInputError, correlation_report
from shamisa.evaluation.ridge import alpha_grid, fit_ridge, select_alpha

__all__ = [
    "EvalConfig",
    "EvalResult",
    "CrossResult",
    "evaluate_linear_probe",
    "evaluate_cross_dataset",
    "map_scores",
    "summarize",
    "write_results",
    "scatter_plot",
]

METRICS = ("srcc", "plcc", "krcc", "rmse")
RESULT_FORMAT = "shamisa-eval"
RESULT_VERSION = 1


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run (stored, resolved, in every result file).

    Attributes:
        method: ``"probe"`` (frozen encoder + ridge) or ``"brisque"``.
        regressor: ``"ridge"`` or ``"svr"``; ``None`` = ridge for the probe, SVR for BRISQUE.
        crop: crop side in pixels.
        n_splits: number of random splits made when no split file is given.
        seed: base seed of the splits.
        ratios: train/val/test proportions of generated splits.
        alpha_grid: ``"protocol"`` (100 values in [1e-3, 1e3]) or ``"budget"`` (24 in [1e-2, 1e2]).
        batch_size: images per forward pass in feature extraction (10 crops each).
        device: torch device.
        num_workers: decoding processes.
        amp: bfloat16 autocast in feature extraction (off: fp32, the reference).
        limit: evaluate only the first ``limit`` images (debugging); None = all.
    """

    method: str = "probe"
    regressor: str | None = None
    crop: int = 224
    n_splits: int = 10
    seed: int = 27
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    alpha_grid: str = "protocol"
    batch_size: int = 8
    device: str = "cpu"
    num_workers: int = 2
    amp: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.method not in ("probe", "brisque"):
            raise ConfigError(f"method must be 'probe' or 'brisque', not {self.method!r}")
        if self.regressor not in (None, "ridge", "svr"):
            raise ConfigError(f"regressor must be 'ridge' or 'svr', not {self.regressor!r}")
        if self.alpha_grid not in ("protocol", "budget"):
            raise ConfigError(f"alpha grid must be 'protocol' or 'budget', not {self.alpha_grid!r}")
        if self.crop < 32:
            raise ConfigError(f"crop must be at least 32 px, got {self.crop}")
        if self.n_splits < 1:
            raise ConfigError(f"n_splits must be at least 1, got {self.n_splits}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 4:
            raise ConfigError(f"--limit must be at least 4 images, got {self.limit}")

    @property
    def resolved_regressor(self) -> str:
        return self.regressor or ("svr" if self.method == "brisque" else "ridge")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ratios"] = list(self.ratios)
        d["regressor"] = self.resolved_regressor
        return d


# --------------------------------------------------------------------------------------------------
# results


def summarize(per_split: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median / mean / std (population) / min / max over splits of every metric (NaN-free entries)."""
    out: dict[str, dict[str, float]] = {}
    for m in METRICS:
        v = np.array([s[m] for s in per_split if s.get(m) is not None and np.isfinite(s[m])], dtype=np.float64)
        if v.size == 0:
            out[m] = {"median": math.nan, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "n": 0}
            continue
        out[m] = {
            "median": float(np.median(v)),
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "max": float(v.max()),
            "n": int(v.size),
        }
    return out


@dataclass(frozen=True, eq=False)
class EvalResult:
    """The outcome of one evaluation.

    Attributes:
        dataset: dataset name.
        n_images: images evaluated.
        method: ``"probe"`` or ``"brisque"``.
        model: encoder description (name, weights hash) or the BRISQUE settings.
        config: the resolved :class:`EvalConfig` as a dict.
        selection: the hyper-parameter search (alpha or C/gamma grid and median validation SRCC).
        per_split: one dict per split (``split``, sizes, hyper-parameters, metrics).
        summary: :func:`summarize` of ``per_split``.
        representative_split: the split whose test SRCC is the median one (for the scatter plot).
        predictions: (test indices, predictions, targets) of the representative split.
        timing: seconds spent (features, selection, fits, total).
        splits_info: how the splits were made (kind, seed, file).
        extra: anything else (e.g. cross-dataset details).
    """

    dataset: str
    n_images: int
    method: str
    model: dict[str, Any]
    config: dict[str, Any]
    selection: dict[str, Any]
    per_split: list[dict[str, Any]]
    summary: dict[str, dict[str, float]]
    representative_split: int
    predictions: tuple[np.ndarray, np.ndarray, np.ndarray]
    timing: dict[str, float] = field(default_factory=dict)
    splits_info: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self, metric: str = "srcc") -> float:
        return self.summary[metric]["median"]

    def to_dict(self) -> dict[str, Any]:
        idx, pred, target = self.predictions
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "dataset": self.dataset,
            "n_images": self.n_images,
            "method": self.method,
            "model": self.model,
            "config": self.config,
            "splits": self.splits_info,
            "summary": self.summary,
            "per_split": self.per_split,
            "selection": self.selection,
            "representative_split": self.representative_split,
            "representative_predictions": {
                "index": idx.tolist(),
                "predicted": [float(v) for v in pred],
                "target": [float(v) for v in target],
            },
            "timing_s": self.timing,
            "environment": _environment(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"extra": self.extra} if self.extra else {}),
        }


CrossResult = EvalResult  # same fields; ``extra`` carries the source/target mapping


def _environment() -> dict[str, Any]:
    import os

    import torch

    return {
        "shamisa": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _representative(per_split: Sequence[dict[str, Any]]) -> int:
    """Index of the split whose SRCC is closest to the median (lower one on a tie)."""
    vals = np.array([s["srcc"] if s["srcc"] is not None else np.nan for s in per_split], dtype=np.float64)
    if not np.isfinite(vals).any():
        return 0
    med = np.nanmedian(vals)
    return int(np.nanargmin(np.abs(vals - med)))


def _metrics(pred: np.ndarray, target: np.ndarray, where: str) -> dict[str, Any]:
    try:
        return correlation_report(pred, target)
    except MetricInputError as e:
        raise DatasetError(f"{where}: cannot compute metrics ({e})") from None


# --------------------------------------------------------------------------------------------------
# regressor plumbing: ridge (probe) or SVR (BRISQUE)


def _as_crops(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim == 2:
        f = f[:, None, :]
    if f.ndim != 3:
        raise ConfigError(f"features must be (N, K, F) or (N, F), got shape {f.shape}")
    return f


def _select(
    features: np.ndarray,
    scores: np.ndarray,
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    cfg: EvalConfig,
    predict: Sequence[np.ndarray] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[np.ndarray] | None]:
    """Choose hyper-parameters on validation.

    Returns:
        (params, selection summary, predictions): with a ridge regressor and ``predict`` (per split,
        (M_s, K, F) features), the chosen alpha's predictions of those images (mean over the K crops)
        come out of the same pass as the selection; otherwise None and the caller refits.
    """
    reg = cfg.resolved_regressor
    standardize = cfg.method == "brisque"
    if reg == "ridge":
        images = None if predict is None else [p.mean(axis=1) for p in predict]
        alpha, table = select_alpha(
            features, scores, train, val, alpha_grid(cfg.alpha_grid), standardize=standardize, predict=images
        )
        sel = {"regressor": "ridge", "grid_kind": cfg.alpha_grid, "standardize": standardize, **table.to_dict()}
        preds = None if predict is None else [table.chosen_predictions(s) for s in range(len(train))]
        return {"alpha": alpha}, sel, preds
    params, sel = select_svr(features[:, 0, :], scores, train, val)
    return params, {"regressor": "svr", **sel}, None


def _fit_predict(
    features: np.ndarray, scores: np.ndarray, train: np.ndarray, targets: np.ndarray, params: dict[str, Any], cfg: EvalConfig
) -> np.ndarray:
    """Fit on ``features[train]`` and predict the images of ``targets`` (N_t, K, F) -> (N_t,)."""
    if cfg.resolved_regressor == "ridge":
        head = fit_ridge(features[train], scores[train], params["alpha"], standardize=cfg.method == "brisque")
        return head.predict_images(targets)
    model = fit_svr(features[train][:, 0, :], scores[train], **params)
    return model.predict(targets[:, 0, :])


# --------------------------------------------------------------------------------------------------
# within-dataset protocol


def evaluate_linear_probe(
    features: np.ndarray,
    ds: Any,
    splits: Any,
    cfg: EvalConfig | None = None,
    *,
    model_info: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
) -> EvalResult:
    """Run the split protocol on precomputed features.

    Args:
        features: (N, K, F) crop features (probe: K=5, F=2D) or (N, F) image features (BRISQUE).
        ds: the dataset (``.name``, ``.scores`` (N,), ``len(ds) == N``).
        splits: ``Splits`` (``.train``, ``.val``, ``.test`` sequences of index arrays).
        cfg: settings (regressor, alpha grid).
        model_info: description of the encoder / method for the result file.
        timing: seconds already spent (e.g. feature extraction), merged into the result.

    Returns:
        :class:`EvalResult`.

    Raises:
        DatasetError: features and dataset disagree, or a split is too small for the metrics.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    f = _as_crops(features)
    y = np.asarray(ds.scores, dtype=np.float64)
    if f.shape[0] != y.shape[0]:
        raise DatasetError(f"{ds.name}: {f.shape[0]} feature rows for {y.shape[0]} images")
    n_split = len(splits.train)
    for s in range(n_split):
        for part, arr in (("train", splits.train[s]), ("val", splits.val[s]), ("test", splits.test[s])):
            need = 2
            if len(arr) < need:
                raise DatasetError(
                    f"{ds.name}: split {s} has {len(arr)} {part} image(s); at least {need} are needed "
                    "(use more images or other split ratios)"
                )
            if len(arr) and (int(np.max(arr)) >= len(y) or int(np.min(arr)) < 0):
                raise DatasetError(f"{ds.name}: split {s} {part} indices fall outside the {len(y)} images")
    tests = [f[np.asarray(te, dtype=np.int64)] for te in splits.test]
    params, selection, path_preds = _select(f, y, splits.train, splits.val, cfg, predict=tests)
    t_sel = time.perf_counter() - t0
    per_split: list[dict[str, Any]] = []
    preds: list[np.ndarray] = []
    for s in range(n_split):
        tr, va, te = (np.asarray(a, dtype=np.int64) for a in (splits.train[s], splits.val[s], splits.test[s]))
        pred = path_preds[s] if path_preds is not None else _fit_predict(f, y, tr, tests[s], params, cfg)
        preds.append(pred)
        m = _metrics(pred, y[te], f"{ds.name} split {s}")
        per_split.append({"split": s, "n_train": int(tr.size), "n_val": int(va.size), "n_test": int(te.size), **params, **m})
    rep = _representative(per_split)
    te = np.asarray(splits.test[rep], dtype=np.int64)
    t_total = time.perf_counter() - t0
    return EvalResult(
        dataset=ds.name,
        n_images=int(y.shape[0]),
        method=cfg.method,
        model=model_info or {},
        config=cfg.to_dict(),
        selection=selection,
        per_split=per_split,
        summary=summarize(per_split),
        representative_split=rep,
        predictions=(te, preds[rep], y[te]),
        timing={**(timing or {}), "selection": round(t_sel, 3), "protocol": round(t_total, 3)},
        splits_info=_splits_info(splits, ds),
        extra={"score": {"mos_type": getattr(ds, "mos_type", "mos"), "range": list(getattr(ds, "score_range", (0, 1)))}},
    )


def _splits_info(splits: Any, ds: Any) -> dict[str, Any]:
    return {
        "kind": getattr(splits, "kind", "unknown"),
        "seed": getattr(splits, "seed", None),
        "n_splits": len(splits.train),
        "ratios": None if getattr(splits, "ratios", None) is None else list(splits.ratios),
        "test_indices": [np.asarray(a).tolist() for a in splits.test],
    }


# --------------------------------------------------------------------------------------------------
# cross-dataset protocol


def map_scores(
    pred: np.ndarray,
    source_range: tuple[float, float],
    source_mos_type: str,
    target_range: tuple[float, float],
    target_mos_type: str,
) -> np.ndarray:
    """Map predictions on the source dataset's scale onto the target's.

    If exactly one of the two is DMOS the orientation is flipped first, ``s' = lo + hi - s`` with the
    source range; then the source range is mapped linearly onto the target range.
    """
    lo, hi = (float(v) for v in source_range)
    tlo, thi = (float(v) for v in target_range)
    p = np.asarray(pred, dtype=np.float64)
    if source_mos_type != target_mos_type:
        p = lo + hi - p
    return tlo + (p - lo) * (thi - tlo) / (hi - lo)


def evaluate_cross_dataset(
    train_features: np.ndarray,
    train_ds: Any,
    train_splits: Any,
    test_features: np.ndarray,
    test_ds: Any,
    cfg: EvalConfig | None = None,
    *,
    model_info: dict[str, Any] | None = None,
    timing: dict[str, float] | None = None,
) -> EvalResult:
    """Train on one dataset, test on every image of another.

    Args:
        train_features: (N_s, K, F) features of the training (source) dataset.
        train_ds: the source dataset.
        train_splits: the source's splits (alpha chosen on their validation parts; one regressor per
            split, fitted on its train part).
        test_features: (N_t, K, F) features of the target dataset.
        test_ds: the target dataset.
        cfg: settings.

    Returns:
        :class:`EvalResult` with ``dataset`` = ``"<source>-><target>"``; ``per_split`` has one entry per
        source regressor; the median over regressors is the reported number.
    """
    cfg = cfg or EvalConfig()
    t0 = time.perf_counter()
    fs, ft = _as_crops(train_features), _as_crops(test_features)
    ys = np.asarray(train_ds.scores, dtype=np.float64)
    yt = np.asarray(test_ds.scores, dtype=np.float64)
    if fs.shape[0] != ys.shape[0] or ft.shape[0] != yt.shape[0]:
        raise DatasetError("features and datasets disagree in size")
    if fs.shape[2] != ft.shape[2]:
        raise DatasetError(f"source features have dimension {fs.shape[2]}, target {ft.shape[2]}")
    if yt.shape[0] < 2:
        raise DatasetError(f"{test_ds.name}: need at least 2 target images")
    n_split = len(train_splits.train)
    params, selection, path_preds = _select(fs, ys, train_splits.train, train_splits.val, cfg, predict=[ft] * n_split)
    per_split: list[dict[str, Any]] = []
    preds: list[np.ndarray] = []
    src_range, tgt_range = tuple(train_ds.score_range), tuple(test_ds.score_range)
    for s in range(n_split):
        tr = np.asarray(train_splits.train[s], dtype=np.int64)
        raw = path_preds[s] if path_preds is not None else _fit_predict(fs, ys, tr, ft, params, cfg)
        pred = map_scores(raw, src_range, train_ds.mos_type, tgt_range, test_ds.mos_type)
        preds.append(pred)
        m = _metrics(pred, yt, f"{train_ds.name}->{test_ds.name} regressor {s}")
        per_split.append({"split": s, "n_train": int(tr.size), "n_test": int(yt.size), **params, **m})
    rep = _representative(per_split)
    return EvalResult(
        dataset=f"{train_ds.name}->{test_ds.name}",
        n_images=int(yt.shape[0]),
        method=cfg.method,
        model=model_info or {},
        config=cfg.to_dict(),
        selection=selection,
        per_split=per_split,
        summary=summarize(per_split),
        representative_split=rep,
        predictions=(np.arange(yt.shape[0]), preds[rep], yt),
        timing={**(timing or {}), "protocol": round(time.perf_counter() - t0, 3)},
        splits_info=_splits_info(train_splits, train_ds),
        extra={
            "source": {"dataset": train_ds.name, "n_images": int(ys.size), "mos_type": train_ds.mos_type, "range": list(src_range)},
            "target": {"dataset": test_ds.name, "n_images": int(yt.size), "mos_type": test_ds.mos_type, "range": list(tgt_range)},
            "mapping": "flip lo+hi-s if MOS vs DMOS, then linear source range -> target range",
        },
    )


# --------------------------------------------------------------------------------------------------
# output


def scatter_plot(result: EvalResult, path: str | Path) -> Path:
    """Predicted vs human score of the representative split, SRCC/PLCC in the title (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    _, pred, target = result.predictions
    rep = result.per_split[result.representative_split]
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=120)
    ax.scatter(target, pred, s=10, alpha=0.6, edgecolors="none")
    lo = float(min(np.min(target), np.min(pred)))
    hi = float(max(np.max(target), np.max(pred)))
    ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--")
    ax.set_xlabel(f"human score ({result.extra.get('score', {}).get('mos_type', 'score')})")
    ax.set_ylabel("predicted score")
    name = result.model.get("name", result.method)
    ax.set_title(
        f"{result.dataset} / {name}, split {result.representative_split} (median)\n"
        f"SRCC {rep['srcc']:.3f}  PLCC {rep['plcc']:.3f}  n={len(target)}",
        fontsize=9,
    )
    fig.tight_layout()
    dest = Path(path)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return dest


def write_results(result: EvalResult, out_dir: str | Path, *, plot: bool = True) -> dict[str, Path]:
    """Write ``results.json`` (and ``scatter.png``) into ``out_dir`` atomically; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json"}
    atomic_write_json(paths["json"], result.to_dict())
    if plot:
        paths["scatter"] = scatter_plot(result, out / "scatter.png")
    return paths
