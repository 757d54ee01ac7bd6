"""``shamisa compare``: the comparison table (ImageNet probe, BRISQUE, ARNIQA-style, SHAMISA, LML-IQA).

Progress goes to stderr; the markdown table is printed on stdout. ``<out>/comparison.json``,
``<out>/comparison.md`` and the chart are written atomically (after every method, so a long run can be
watched). Trained encoders and fine-tuning results can be reused to rebuild the table without training.
``shamisa benchmark`` is the command's former name, kept as a hidden alias (speed benchmarks are the
scripts in ``bench/``).
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from shamisa.cli.common import err
from shamisa.cli.exit_codes import EXIT_ITEM_FAILED


def compare_command(
    root: Path = typer.Option(..., "--root", help="Dataset folder (CLIVE: ChallengeDB_release)."),
    dataset: str = typer.Option("clive", "--dataset", help="Dataset name."),
    budget_minutes: float = typer.Option(10.0, "--budget-minutes", help="Training budget per trained method."),
    methods: str = typer.Option(
        "imagenet,brisque,arniqa,shamisa,lml", "--methods", help="Comma-separated methods, in table order."
    ),
    ablations: bool = typer.Option(False, "--ablations", help="Also run the SHAMISA loss ablations."),
    ablation: list[str] = typer.Option(
        [], "--ablation", help="Run only this ablation (repeatable; implies --ablations): metadata_only, "
        "features_only, no_transport, binary_relations."
    ),
    encoder: str = typer.Option("efficientnet_lite0", "--encoder", help="Encoder family of the learned methods."),
    crop: int = typer.Option(224, "--crop", help="Probe crop side (224 = protocol)."),
    n_splits: int = typer.Option(10, "--n-splits", help="Random 70/10/20 splits (seed 27)."),
    shamisa_weights: Path | None = typer.Option(
        None, "--shamisa-weights", help="Reuse a SHAMISA encoder (file or pretraining run folder)."
    ),
    arniqa_weights: Path | None = typer.Option(
        None, "--arniqa-weights", help="Reuse an ARNIQA-style encoder (file or pretraining run folder)."
    ),
    lml_result: list[Path] = typer.Option(
        [], "--lml-result", help="Reuse a finished LML-IQA run (its result.json); repeat for several splits."
    ),
    merge: list[Path] = typer.Option(
        [], "--merge", help="Take the rows of an earlier comparison.json as they are (repeatable)."
    ),
    lml_splits: int = typer.Option(1, "--lml-splits", help="Splits LML-IQA fine-tunes on (budget shared)."),
    lml_crop: int = typer.Option(128, "--lml-crop", help="LML-IQA crop side."),
    pretrain_preset: str = typer.Option("cpu", "--pretrain-preset", help="Pretraining preset."),
    pretrain_data: list[Path] = typer.Option([], "--pretrain-data", help="Pristine image folder (repeatable)."),
    pretrain_override: list[str] = typer.Option(
        [], "--pretrain-override", help="Pretraining config override key=value (repeatable)."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache folder."),
    amp: bool = typer.Option(False, "--amp/--no-amp", help="bf16 autocast in probe feature extraction."),
    num_workers: int = typer.Option(1, "--num-workers", help="Image decoding workers."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder of comparison.json / comparison.md and runs."),
    runs_dir: Path | None = typer.Option(None, "--runs-dir", help="Folder of the training runs (default OUT/runs)."),
    chart: Path = typer.Option(Path("docs/benchmark.png"), "--chart", help="Bar chart PNG."),
) -> None:
    """Compare the methods on one rated dataset with the same encoder family and training budget."""
    from shamisa.evaluation.comparison import BenchmarkConfig, markdown_table, run_benchmark

    cfg = BenchmarkConfig(
        root=str(root),
        dataset=dataset,
        methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
        budget_minutes=budget_minutes,
        ablations=ablations,
        ablation_names=tuple(ablation),
        encoder=encoder,
        crop=crop,
        n_splits=n_splits,
        shamisa_weights=str(shamisa_weights) if shamisa_weights else None,
        arniqa_weights=str(arniqa_weights) if arniqa_weights else None,
        lml_results=tuple(str(p) for p in lml_result),
        merge=tuple(str(p) for p in merge),
        pretrain_preset=pretrain_preset,
        pretrain_data=tuple(str(p) for p in pretrain_data),
        pretrain_overrides=tuple(pretrain_override),
        lml_splits=lml_splits,
        lml_crop=lml_crop,
        cache_dir=str(cache_dir) if cache_dir else None,
        amp=amp,
        num_workers=num_workers,
        out=str(out),
        runs_dir=str(runs_dir) if runs_dir else None,
        chart=str(chart),
        command="shamisa " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "",
    )
    results, paths = run_benchmark(cfg)
    typer.echo(markdown_table(results), nl=False)
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    if any(r.status != "ok" for r in results):
        raise typer.Exit(EXIT_ITEM_FAILED)


def register(app: typer.Typer) -> None:
    """Add ``compare`` (and its former name ``benchmark``, hidden) to ``app``."""
    app.command("compare")(compare_command)

    @functools.wraps(compare_command)
    def benchmark_alias(*args: Any, **kwargs: Any) -> None:
        err("note: 'shamisa benchmark' is now 'shamisa compare'")
        compare_command(*args, **kwargs)

    app.command("benchmark", hidden=True)(benchmark_alias)
