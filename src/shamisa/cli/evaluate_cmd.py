"""``shamisa evaluate``: the linear-probe protocol (or the BRISQUE floor) on an IQA dataset.

Prints the resolved configuration to stderr at the start, a table of median / mean / std SRCC, PLCC,
KRCC and RMSE over splits at the end (stdout), and writes ``results.json`` and ``scatter.png`` to
``--out``. Expected errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import sys
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


class Readout(str, Enum):
    head = "head"
    multilevel = "multilevel"


class Regressor(str, Enum):
    auto = "auto"
    ridge = "ridge"
    svr = "svr"


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
    with_content: bool = typer.Option(
        False, "--with-content", help="Pair the encoder with the frozen ImageNet encoder of its architecture (content + quality features)."
    ),
    readout: Readout = typer.Option(
        Readout.head, "--readout",
        help="head: the last feature map's average (the papers' probe); multilevel: also the stride-16/32 stages' averages.",
    ),
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
    from shamisa.errors import ShamisaError as _ShamisaError
    from shamisa.evaluation.run import EvaluationRequest, parse_ratios, run_evaluation
    from shamisa.fileio import cache_dir

    try:
        request = EvaluationRequest(
            dataset=dataset, root=root, encoder=encoder, weights=weights, with_content=with_content,
            readout=readout.value, method=method.value, regressor=None if regressor == Regressor.auto else regressor.value,
            splits_file=splits_file, arniqa_splits=arniqa_splits, n_splits=n_splits, ratios=parse_ratios(ratios),
            seed=seed, alpha_grid=alpha_grid.value, cross_dataset=cross_dataset, cross_root=cross_root, out=out,
            cache=None if no_cache else (cache or cache_dir() / "features"), crop=crop, batch_size=batch_size,
            device=device, workers=workers, amp=amp, limit=limit, skip_bad_rows=skip_bad_rows, progress=not quiet,
        )
        outcome = run_evaluation(request, log=err)
    except _ShamisaError as e:
        raise user_error(str(e)) from None
    _print_table(outcome.result)
    err(f"wrote {outcome.paths['json']} and {outcome.paths['scatter']}")
    if outcome.cross is not None and outcome.cross_paths is not None:
        _print_table(outcome.cross)
        err(f"wrote {outcome.cross_paths['json']} and {outcome.cross_paths['scatter']}")
    err(f"done in {outcome.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    """Add this module's command(s) to ``app``."""
    app.command("evaluate")(evaluate)
