"""``shamisa evaluate``: the linear-probe protocol (or the BRISQUE floor) on an IQA dataset.

Prints the resolved configuration to stderr at the start, a table of median / mean / std SRCC, PLCC,
KRCC and RMSE over splits at the end (stdout), and writes ``results.json`` and ``scatter.png`` to
``--out``. Expected errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from shamisa.cli.common import DEVICE_HELP, err, user_error


class Method(str, Enum):
    probe = "probe"
    brisque = "brisque"


class GridKind(str, Enum):
    protocol = "protocol"
    budget = "budget"


class Regressor(str, Enum):
    auto = "auto"
    ridge = "ridge"
    svr = "svr"


def _parse_ratios(text: str) -> tuple[float, float, float]:
    from shamisa.errors import ConfigError

    try:
        parts = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ConfigError(f"--ratios must be three numbers like 0.7,0.1,0.2, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise ConfigError(f"--ratios must be three non-negative numbers summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def _load_dataset(name_or_csv: str, root: Path | None, limit: int | None, skip_bad_rows: bool = False) -> Any:
    from shamisa.datasets import load_dataset
    from shamisa.errors import ConfigError

    p = Path(name_or_csv)
    if p.suffix.lower() in {".csv", ".tsv", ".txt"} or p.is_file():
        from shamisa.datasets.generic import describe_skipped, load_csv

        ds = load_csv(p, name=p.stem, skip_bad=skip_bad_rows)
        for line in describe_skipped(ds.skipped, p):
            err(line)
    else:
        if root is None:
            raise ConfigError(f"--root is required for the dataset {name_or_csv!r} (the folder of its release)")
        ds = load_dataset(name_or_csv, root)
    if limit is not None and limit < len(ds):
        ds = ds.subset(list(range(limit)))
    return ds


def _splits(ds: Any, splits_file: Path | None, arniqa_dir: Path | None, n_splits: int, ratios: tuple[float, float, float], seed: int) -> Any:
    from shamisa.datasets import load_arniqa_splits, load_splits, make_splits
    from shamisa.errors import ConfigError

    if splits_file is not None and arniqa_dir is not None:
        raise ConfigError("give either --splits or --arniqa-splits, not both")
    if splits_file is not None:
        return load_splits(splits_file, ds)
    if arniqa_dir is not None:
        return load_arniqa_splits(arniqa_dir, ds)
    return make_splits(ds, n_splits=n_splits, ratios=ratios, seed=seed)


def _encoder(name: str, weights: Path | None, device: str) -> tuple[Any, dict[str, Any]]:
    import torch

    from shamisa.errors import ModelFileError
    from shamisa.models import build_encoder, load_encoder, read_encoder_metadata

    if weights is None:
        enc = build_encoder(name, pretrained=True)
        source = "imagenet"
        meta: dict[str, Any] = {}
    else:
        try:
            read_encoder_metadata(weights)
            shamisa_file = True
        except ModelFileError:
            shamisa_file = False
        if shamisa_file:
            enc, meta = load_encoder(weights)
        else:
            enc, meta = build_encoder(name, weights=weights), {}
        source = str(weights)
    enc = enc.to(device).eval().to(memory_format=torch.channels_last)
    info = {"name": enc.name, "feature_dim": enc.feature_dim, "weights": source, "weights_hash": enc.weights_hash()}
    if meta:
        info["file_metadata"] = meta
    return enc, info


def _features(method: str, ds: Any, cfg: Any, cache: Path | None, encoder: Any, progress: bool) -> Any:
    if method == "brisque":
        from shamisa.evaluation.brisque import brisque_features_from_paths

        return brisque_features_from_paths(
            ds.paths, num_workers=cfg.num_workers, cache_dir=cache, dataset_name=ds.name, progress=progress
        )
    from shamisa.evaluation.features import extract_features

    return extract_features(
        encoder,
        ds.paths,
        crop=cfg.crop,
        batch_size=cfg.batch_size,
        device=cfg.device,
        num_workers=cfg.num_workers,
        cache_dir=cache,
        dataset_name=ds.name,
        amp=cfg.amp,
        progress=progress,
    )


def _print_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    table = Table(title=f"{result.dataset} / {result.model.get('name', result.method)} ({len(result.per_split)} splits)")
    table.add_column("metric")
    for col in ("median", "mean", "std"):
        table.add_column(col, justify="right")
    for m in ("srcc", "plcc", "krcc", "rmse"):
        fmt = "{:.2f}" if m == "rmse" else "{:.4f}"
        table.add_row(m.upper(), *(fmt.format(s[m][c]) for c in ("median", "mean", "std")))
    Console(file=sys.stdout, width=100).print(table)


def evaluate(
    dataset: str = typer.Argument(..., help="Dataset name (clive, koniq10k, spaq, flive, live, csiq, tid2013, kadid10k) or a CSV label file."),
    root: Path | None = typer.Option(None, "--root", help="The dataset folder (official layout)."),
    encoder: str = typer.Option("efficientnet_lite0", "--encoder", help="Encoder architecture (ImageNet weights unless --weights)."),
    weights: Path | None = typer.Option(None, "--weights", help="Encoder weights: a shamisa .safetensors encoder file (or a state dict for --encoder)."),
    method: Method = typer.Option(Method.probe, "--method", help="probe (frozen encoder + ridge) or brisque."),
    regressor: Regressor = typer.Option(Regressor.auto, "--regressor", help="auto = ridge for probe, SVR for brisque."),
    splits_file: Path | None = typer.Option(None, "--splits", help="A split file written by shamisa (JSON)."),
    arniqa_splits: Path | None = typer.Option(None, "--arniqa-splits", help="A folder with ARNIQA train/val/test.npy."),
    n_splits: int = typer.Option(10, "--n-splits", help="Random splits to make when no split file is given."),
    ratios: str = typer.Option("0.7,0.1,0.2", "--ratios", help="train,val,test proportions of made splits."),
    seed: int = typer.Option(27, "--seed", help="Base seed of made splits."),
    alpha_grid: GridKind = typer.Option(GridKind.protocol, "--alpha-grid", help="protocol: 100 alphas in [1e-3,1e3]; budget: 24 in [1e-2,1e2]."),
    cross_dataset: str | None = typer.Option(None, "--cross-dataset", help="Also test the regressors on every image of this dataset."),
    cross_root: Path | None = typer.Option(None, "--cross-root", help="Folder of the --cross-dataset."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default runs/eval/<dataset>-<encoder>-<date>)."),
    cache: Path | None = typer.Option(None, "--cache", help="Feature cache folder (default: <user cache>/features)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    crop: int = typer.Option(224, "--crop", help="Crop side in pixels."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass (10 crops each)."),
    device: str = typer.Option("cpu", "--device", help="Torch device: " + DEVICE_HELP),
    workers: int = typer.Option(2, "--workers", help="Image decoding processes."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="bfloat16 autocast for the encoder (changes features slightly)."),
    limit: int | None = typer.Option(None, "--limit", help="Debug: only the first N images."),
    skip_bad_rows: bool = typer.Option(
        False, "--skip-bad-rows", help="CSV labels: leave malformed rows out (each reported) instead of stopping."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate an encoder with the frozen linear-probe protocol (or BRISQUE) on an IQA dataset."""
    from shamisa.errors import ShamisaError

    args = EvaluateArgs(
        dataset=dataset, root=root, encoder=encoder, weights=weights, method=method.value,
        regressor=None if regressor == Regressor.auto else regressor.value, splits_file=splits_file,
        arniqa_splits=arniqa_splits, n_splits=n_splits, ratios=ratios, seed=seed, alpha_grid=alpha_grid.value,
        cross_dataset=cross_dataset, cross_root=cross_root, out=out, cache=cache, no_cache=no_cache, crop=crop,
        batch_size=batch_size, device=device, workers=workers, amp=amp, limit=limit, skip_bad_rows=skip_bad_rows,
        quiet=quiet,
    )
    try:
        _run(args)
    except ShamisaError as e:
        raise user_error(str(e)) from None


@dataclass(frozen=True)
class EvaluateArgs:
    """The options of ``shamisa evaluate``."""

    dataset: str
    root: Path | None = None
    encoder: str = "efficientnet_lite0"
    weights: Path | None = None
    method: str = "probe"
    regressor: str | None = None
    splits_file: Path | None = None
    arniqa_splits: Path | None = None
    n_splits: int = 10
    ratios: str = "0.7,0.1,0.2"
    seed: int = 27
    alpha_grid: str = "protocol"
    cross_dataset: str | None = None
    cross_root: Path | None = None
    out: Path | None = None
    cache: Path | None = None
    no_cache: bool = False
    crop: int = 224
    batch_size: int = 8
    device: str = "cpu"
    workers: int = 2
    amp: bool = False
    limit: int | None = None
    skip_bad_rows: bool = False
    quiet: bool = False


def _run(a: EvaluateArgs) -> None:
    import json

    import torch

    from shamisa.device import resolve_device
    from shamisa.errors import ConfigError
    from shamisa.evaluation.protocol import EvalConfig, evaluate_cross_dataset, evaluate_linear_probe, write_results
    from shamisa.fileio import cache_dir

    method = a.method
    cfg = EvalConfig(
        method=method,
        regressor=a.regressor,
        crop=a.crop,
        n_splits=a.n_splits,
        seed=a.seed,
        ratios=_parse_ratios(a.ratios),
        alpha_grid=a.alpha_grid,
        batch_size=a.batch_size,
        device=a.device,
        num_workers=max(0, a.workers),
        amp=a.amp,
        limit=a.limit,
    )
    if method == "brisque" and a.weights is not None:
        raise ConfigError("--weights has no meaning with --method brisque")
    resolve_device(cfg.device)  # fails early on a device this machine does not have
    if a.cross_root is not None and a.cross_dataset is None:
        raise ConfigError("--cross-root is given without --cross-dataset")
    progress = not a.quiet
    cache = None if a.no_cache else (a.cache or cache_dir() / "features")

    t_start = time.perf_counter()
    ds = _load_dataset(a.dataset, a.root, cfg.limit, a.skip_bad_rows)
    splits = _splits(ds, a.splits_file, a.arniqa_splits, cfg.n_splits, cfg.ratios, cfg.seed)
    model_name = "brisque" if method == "brisque" else a.encoder
    enc, model_info = (None, {"name": "brisque", "features": 36}) if method == "brisque" else _encoder(a.encoder, a.weights, cfg.device)
    if enc is not None:
        model_name = enc.name
    out = a.out or Path("runs") / "eval" / f"{ds.name}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    resolved = {
        "dataset": ds.name,
        "root": str(ds.root),
        "n_images": len(ds),
        "splits": {"kind": splits.kind, "n": len(splits), "seed": splits.seed},
        "model": model_info,
        "config": cfg.to_dict(),
        "cache": None if cache is None else str(cache),
        "out": str(out),
        "torch_threads": torch.get_num_threads(),
    }
    if a.cross_dataset:
        resolved["cross_dataset"] = {"dataset": a.cross_dataset, "root": None if a.cross_root is None else str(a.cross_root)}
    err("shamisa evaluate: " + json.dumps(resolved, default=str))

    t0 = time.perf_counter()
    feats = _features(method, ds, cfg, cache, enc, progress)
    timing = {"features": round(time.perf_counter() - t0, 3)}
    result = evaluate_linear_probe(feats, ds, splits, cfg, model_info=model_info, timing=timing)
    paths = write_results(result, out)
    _print_table(result)
    err(f"wrote {paths['json']} and {paths['scatter']}")

    if a.cross_dataset:
        target = _load_dataset(a.cross_dataset, a.cross_root, None)
        t1 = time.perf_counter()
        tfeats = _features(method, target, cfg, cache, enc, progress)
        cross = evaluate_cross_dataset(
            feats, ds, splits, tfeats, target, cfg, model_info=model_info,
            timing={"features": round(time.perf_counter() - t1, 3)},
        )
        cross_dir = Path(out) / f"cross-{target.name}"
        cpaths = write_results(cross, cross_dir)
        _print_table(cross)
        err(f"wrote {cpaths['json']} and {cpaths['scatter']}")
    err(f"done in {time.perf_counter() - t_start:.1f} s")


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to ``app``."""
    app.command("evaluate")(evaluate)
