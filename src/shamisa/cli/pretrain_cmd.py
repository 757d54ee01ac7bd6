"""``shamisa pretrain`` (self-supervised pretraining, resumable) and ``shamisa export`` (encoder file).

Examples::

    shamisa pretrain --preset cpu --data pristine/ --exclude kodak24 --out runs/cpu
    shamisa pretrain --preset paper --data $KADIS_ROOT/ref_imgs --weights resnet50-imagenet.pth --set loss.rho=0
    torchrun --nproc_per_node 4 -m shamisa pretrain --preset paper --data ... --out runs/paper

``items_per_step`` is per process: under ``torchrun`` with N processes an optimizer step sees
``items_per_step * N * grad_accum`` items (the paper's batch is 2 items on one process).
    shamisa export runs/cpu -o encoder.safetensors --fp16

Running the same ``pretrain`` command again with the same ``--out`` resumes from its last checkpoint.
The resolved config is printed on stderr at the start; the run folder is printed on stdout at the end.
"""

from __future__ import annotations

from pathlib import Path

import typer

from shamisa.cli.common import DEVICE_HELP, user_error


def pretrain(
    preset: str = typer.Option(
        "cpu", "--preset", "-p",
        help="Starting recipe: paper (ResNet-50 from random initialisation unless --weights; "
        "items_per_step=2 per process), cpu or tiny.",
    ),
    config: Path | None = typer.Option(None, "--config", help="A config JSON (e.g. a run's config.json) instead of a preset."),
    data: list[Path] = typer.Option(None, "--data", "-d", help="Folder of pristine images (repeatable, recursive)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Sub-folder name or path to leave out (repeatable)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder (checkpoints, metrics); reused to resume."),
    encoder: str | None = typer.Option(None, "--encoder", help="efficientnet_lite0/1/2, resnet18, resnet50."),
    weights: Path | None = typer.Option(
        None, "--weights", help="Initial encoder weights (safetensors or .pth), e.g. ImageNet ResNet-50 for the paper preset."
    ),
    device: str | None = typer.Option(None, "--device", help=DEVICE_HELP),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Wall-time cap of this invocation (checkpoint, then stop)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the images."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="DataLoader worker processes for synthesis."),
    overrides: list[str] = typer.Option(
        None, "--set",
        help="Override any config key: --set lr=1e-3 --set loss.rho=0. items_per_step is per process "
        "(under torchrun a step sees items_per_step x processes x grad_accum items).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Self-supervised pretraining of an encoder on folders of pristine images (resumable)."""
    import json

    from shamisa.configs import apply_overrides, config_to_dict, load_config
    from shamisa.configs import preset as get_preset
    from shamisa.errors import ShamisaError

    try:
        cfg = load_config(config) if config is not None else get_preset(preset)
        flags: list[str] = []
        if data:
            flags.append("data_dirs=" + ",".join(str(d) for d in data))
        if exclude:
            flags.append("exclude_dirs=" + ",".join(exclude))
        if weights is not None:
            flags += [f"weights={weights}", "pretrained=false"]
        for key, val in (
            ("out_dir", out), ("encoder", encoder), ("device", device), ("max_steps", max_steps),
            ("max_minutes", max_minutes), ("epochs", epochs), ("seed", seed), ("num_workers", num_workers),
        ):
            if val is not None:
                flags.append(f"{key}={val}")
        cfg = apply_overrides(cfg, flags + list(overrides or []))
        if dry_run:
            print(json.dumps(config_to_dict(cfg), indent=2))
            return
        from shamisa.training import pretrain as run

        run_dir = run(cfg)
    except ShamisaError as e:
        raise user_error(str(e)) from None
    print(run_dir)


def export(
    checkpoint: Path = typer.Argument(..., help="Run folder, its ckpt/ folder, ckpt/last.json or a checkpoint file."),
    output: Path = typer.Option(..., "--output", "-o", help="Encoder file to write (.safetensors)."),
    fp16: bool = typer.Option(False, "--fp16", help="Store float16 weights (half the size)."),
) -> None:
    """Write the encoder of a pretraining checkpoint (usable by ``evaluate --weights`` and ``score``)."""
    from shamisa.errors import ShamisaError

    try:
        from shamisa.training import export_encoder

        path = export_encoder(checkpoint, output, fp16=fp16)
    except ShamisaError as e:
        raise user_error(str(e)) from None
    print(path)


def register(app: typer.Typer) -> None:
    """Add ``pretrain`` and ``export`` to ``app``."""
    app.command("pretrain")(pretrain)
    app.command("export")(export)
