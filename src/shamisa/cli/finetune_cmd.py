"""``shamisa finetune``: supervised fine-tuning on a human-rated dataset (LML-IQA).

Progress goes to stderr; the result (test SRCC / PLCC of the chosen split, timings, the resolved config)
is printed as JSON on stdout and written to ``<out>/result.json``. The best-validation checkpoint is
``<out>/best.safetensors`` (encoder + heads) and the encoder alone ``<out>/encoder.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from shamisa.cli.common import DEVICE_HELP, user_error

METHODS = ("lml",)


def finetune_command(
    dataset: str = typer.Argument(..., help="Dataset name (clive, koniq10k, live, ...) or 'csv'."),
    root: Path = typer.Option(..., "--root", help="Dataset folder (for 'csv': the CSV file)."),
    method: str = typer.Option("lml", "--method", help="Fine-tuning method: lml (LML-IQA)."),
    encoder: str = typer.Option("efficientnet_lite0", "--encoder", help="Encoder architecture."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Start from this encoder file (.safetensors, e.g. a SHAMISA encoder)."
    ),
    pretrained: bool = typer.Option(
        True, "--pretrained/--no-pretrained", help="Start from ImageNet weights (ignored with --weights)."
    ),
    split: int = typer.Option(0, "--split", help="Which random 70/10/20 split to train on."),
    n_splits: int = typer.Option(10, "--n-splits", help="Number of splits generated (seed 27)."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the training split."),
    crop: int = typer.Option(224, "--crop", help="Crop side in pixels (training and evaluation)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per step (>= 2)."),
    n_crops: int = typer.Option(4, "--n-crops", help="Crops per image (>= 2), full and half scale alternating."),
    saliency: str = typer.Option("spectral", "--saliency", help="Anchor choice: spectral | teacher | random."),
    lml_weight: float = typer.Option(0.1, "--lml-weight", help="Weight of the local-manifold term."),
    lr: float = typer.Option(1e-4, "--lr", help="Encoder learning rate (heads: 10x)."),
    eval_mode: str = typer.Option(
        "five_two_scale", "--eval-mode", help="Test views: five_two_scale (5 crops x 2 scales) | center."
    ),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 (autocast)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    limit: int | None = typer.Option(None, "--limit", help="Use at most N images of each of train/val/test."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Time budget for training + validation."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Step budget (fair on a shared machine)."),
    out: Path = typer.Option(Path("runs/lml"), "--out", help="Output folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress on stderr."),
) -> None:
    """Fine-tune an encoder with a quality head on one split of a rated dataset (LML-IQA)."""
    from shamisa.errors import ShamisaError
    from shamisa.finetuning.lml import FinetuneConfig, finetune

    if method not in METHODS:
        raise user_error(f"unknown fine-tuning method {method!r} (choose from {', '.join(METHODS)})")
    cfg = FinetuneConfig(
        dataset=dataset,
        root=str(root),
        encoder=encoder,
        pretrained=pretrained and weights is None,
        weights=str(weights) if weights is not None else None,
        split=split,
        n_splits=n_splits,
        epochs=epochs,
        batch_size=batch_size,
        n_crops=n_crops,
        crop=crop,
        saliency=saliency,  # type: ignore[arg-type]
        lml_weight=lml_weight,
        lr=lr,
        head_lr=10 * lr,
        eval_mode=eval_mode,  # type: ignore[arg-type]
        precision=precision,  # type: ignore[arg-type]
        device=device,
        seed=seed,
        limit=limit,
        max_minutes=max_minutes,
        max_steps=max_steps,
        out=str(out),
    )
    try:
        result = finetune(cfg, quiet=quiet)
    except ShamisaError as e:
        raise user_error(str(e)) from None
    summary = result.to_dict()
    summary.pop("history", None)
    typer.echo(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    """Add ``finetune`` to ``app``."""
    app.command("finetune")(finetune_command)
