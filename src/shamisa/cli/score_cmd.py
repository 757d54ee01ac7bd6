"""``shamisa score``, ``shamisa fit`` and ``shamisa models``.

``score`` streams one row per input (csv / jsonl line by line; table and json at the end) to stdout or
``-o FILE`` (written atomically); progress and the summary go to stderr. A file that cannot be scored
gives a row with an ``error`` and does not stop the job (unless ``--fail-fast``); the exit code is 0
when every item was scored, 1 when any failed, 2 for a usage or model-file error, 3 for an unexpected
internal error (one line; ``SHAMISA_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer

EXIT_ITEM_FAILED = 1
EXIT_USER_ERROR = 2
MAX_LISTED_FAILURES = 20
CSV_COLUMNS = ("path", "score", "raw", "width", "height", "flags", "error")


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"
    json = "json"


# ------------------------------------------------------------------------------------------ helpers


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _user_error(msg: str) -> typer.Exit:
    _err(f"error: {msg}")
    return typer.Exit(EXIT_USER_ERROR)


def _internal_error(e: Exception) -> BaseException:
    """Unexpected exceptions: one line (set SHAMISA_DEBUG=1 for the traceback)."""
    if os.environ.get("SHAMISA_DEBUG"):
        return e
    _err(f"error: unexpected {type(e).__name__}: {e} (set SHAMISA_DEBUG=1 for a traceback and please report it)")
    return typer.Exit(3)


def _has_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


def _walk_images(folder: Path, recursive: bool) -> Iterator[Any]:
    """Image files of a folder in sorted order; unreadable sub-folders become error items."""
    from shamisa.errors import ImageLoadError
    from shamisa.images import is_image_path

    if not recursive:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            yield ImageLoadError(folder, f"cannot list folder: {e.strerror or e}")
            return
        for e in entries:
            if is_image_path(e.name) and not e.is_dir():
                yield e.path
        return
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if is_image_path(name):
                yield os.path.join(dirpath, name)
        while errors:
            e = errors.pop(0)
            yield ImageLoadError(e.filename or folder, f"cannot list folder: {e.strerror or e}")
    for e in errors:
        yield ImageLoadError(e.filename or folder, f"cannot list folder: {e.strerror or e}")


def expand_inputs(args: list[str], recursive: bool, stdin: io.TextIOBase | None = None) -> Iterator[Any]:
    """Turn command-line arguments into image paths (lazily, in order).

    * a file (or a broken link) is taken as it is, whatever its extension;
    * a folder gives its image files (by extension, sorted), its sub-folders too with ``recursive``;
    * a pattern with ``* ? [`` is expanded (``**`` matches sub-folders);
    * ``-`` reads one path per line from stdin.

    Paths that do not exist are passed on and reported as per-item errors.
    """
    for a in args:
        if a == "-":
            for line in stdin if stdin is not None else sys.stdin:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line
            continue
        p = Path(a)
        if p.is_dir():
            yield from _walk_images(p, recursive)
        elif p.exists() or p.is_symlink():
            yield a
        elif _has_glob(a):
            matches = sorted(glob.glob(a, recursive=True))
            if not matches:
                yield a
            for m in matches:
                if os.path.isdir(m):
                    if recursive:
                        yield from _walk_images(Path(m), recursive)
                else:
                    yield m
        else:
            yield a


def _record_dict(rec: Any) -> dict[str, Any]:
    return {
        "path": rec.path,
        "score": None if rec.score is None else round(rec.score, 6),
        "raw": None if rec.raw is None else round(rec.raw, 6),
        "width": rec.width,
        "height": rec.height,
        "flags": list(rec.flags),
        "error": rec.error,
    }


class _Writer:
    """Streams records in one of the output formats to a text stream."""

    def __init__(self, fmt: OutputFormat, out: Any, card: Any) -> None:
        self.fmt = fmt
        self.out = out
        self.card = card
        self.rows: list[dict[str, Any]] = []
        self._csv = None
        if fmt is OutputFormat.csv:
            self._csv = csv.writer(out, lineterminator="\n")
            self._csv.writerow(CSV_COLUMNS)
            out.flush()

    def write(self, rec: Any) -> None:
        d = _record_dict(rec)
        if self.fmt is OutputFormat.csv:
            assert self._csv is not None
            row = dict(d, flags=";".join(d["flags"]))
            self._csv.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
            self.out.flush()
        elif self.fmt is OutputFormat.jsonl:
            self.out.write(json.dumps(d, ensure_ascii=False) + "\n")
            self.out.flush()
        else:
            self.rows.append(d)

    def close(self, summary: dict[str, Any]) -> None:
        if self.fmt is OutputFormat.json:
            doc = {"model": self.card.summary(), "summary": summary, "results": self.rows}
            self.out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        elif self.fmt is OutputFormat.table:
            from rich.console import Console
            from rich.table import Table

            table = Table(show_edge=False, header_style="bold")
            for col, kw in (("path", {}), ("score", {"justify": "right"}), ("raw", {"justify": "right"}),
                            ("notes", {})):
                table.add_column(col, **kw)
            for d in self.rows:
                if d["error"]:
                    table.add_row(d["path"], "-", "-", f"[red]error: {d['error']}[/red]")
                else:
                    table.add_row(d["path"], f"{d['score']:.4f}", f"{d['raw']:.3f}", ", ".join(d["flags"]))
            is_file = not (hasattr(self.out, "isatty") and self.out.isatty())
            console = Console(file=self.out, width=200 if is_file else None, no_color=is_file, highlight=False)
            console.print(table)
        self.out.flush()


@contextlib.contextmanager
def _open_output(output: Path | None) -> Iterator[Any]:
    if output is None:
        yield sys.stdout
        return
    from shamisa.fileio import atomic_write

    with atomic_write(output, "w") as f:
        yield f


def _infer_format(fmt: OutputFormat | None, output: Path | None) -> OutputFormat:
    if fmt is not None:
        return fmt
    if output is not None:
        suffix = output.suffix.lower().lstrip(".")
        return OutputFormat(suffix) if suffix in {"csv", "json", "jsonl"} else OutputFormat.csv
    return OutputFormat.table if sys.stdout.isatty() else OutputFormat.csv


def _progress(enabled: bool, total: int | None) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("scoring"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=True,
    )


def _print_summary(n_ok: int, failures: list[Any], seconds: float, quiet: bool) -> dict[str, Any]:
    n = n_ok + len(failures)
    summary = {"images": n, "scored": n_ok, "failed": len(failures), "seconds": round(seconds, 3)}
    if not quiet:
        rate = n / seconds if seconds > 0 else 0.0
        _err(f"scored {n_ok} of {n} image(s) in {seconds:.1f} s ({rate:.1f} images/s)")
    if failures:
        _err(f"{len(failures)} failed:")
        for rec in failures[:MAX_LISTED_FAILURES]:
            _err(f"  {rec.path}: {rec.error}")
        if len(failures) > MAX_LISTED_FAILURES:
            _err(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more (see the error column of the output)")
    return summary


# ------------------------------------------------------------------------------------------ commands


def score_command(
    paths: list[str] = typer.Argument(
        ..., help="Image files, folders, glob patterns ('photos/**/*.jpg'), or '-' to read paths from stdin.",
        show_default=False,
    ),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also score images in sub-folders."),
    model: str = typer.Option("default", "--model", "-m", help="A bundled model name or a model file."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", "-b", min=1, show_default=False,
        help="Images per encoder batch (10 crops each). Default: 1 on the CPU (fastest there), 16 on CUDA.",
    ),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    precision: str = typer.Option(
        "fp32", "--precision",
        help="Encoder arithmetic: fp32 (the reference) or bf16 (about 3x faster on CPUs with AVX512-BF16/AMX "
        "and on GPUs; raw scores within ~0.5 MOS points of fp32 on average).",
    ),
    fmt: OutputFormat | None = typer.Option(
        None, "--format", "-f", help="Output format. Default: from the -o suffix, else table on a terminal, csv otherwise.",
        show_default=False, case_sensitive=False,
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write results to this file (atomically)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first image that cannot be scored."),
    workers: int | None = typer.Option(
        None, "--workers", "-j", min=1, help="Decoding threads (default: up to 4).", show_default=False
    ),
    max_side: int = typer.Option(2048, "--max-side", min=64, help="Downscale images whose longer side is larger."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary (failures are still listed)."),
) -> None:
    """Score image quality: one row per image, score in [0, 1] (higher is better) and the raw score.

    Exit code: 0 if every image was scored, 1 if any failed (its row has an 'error'), 2 for a usage
    or model-file error, 3 for an unexpected internal error.
    """
    from shamisa.errors import ShamisaError

    try:
        code = _run_score(
            paths, recursive, model, batch_size, device, fmt, output, fail_fast, workers, max_side, quiet, precision
        )
    except ShamisaError as e:
        raise _user_error(str(e)) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # e.g. `shamisa score ... | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_ITEM_FAILED) from None
    except OSError as e:  # the output file cannot be written, ...
        where = f"{e.filename}: " if e.filename else ""
        raise _user_error(f"{where}{e.strerror or e}") from None
    except Exception as e:
        raise _internal_error(e) from None
    raise typer.Exit(code)


def _run_score(
    paths: list[str],
    recursive: bool,
    model_name: str,
    batch_size: int | None,
    device: str,
    fmt: OutputFormat | None,
    output: Path | None,
    fail_fast: bool,
    workers: int | None,
    max_side: int,
    quiet: bool,
    precision: str = "fp32",
) -> int:
    import warnings

    from shamisa.scorer import load

    # Pillow warns about oddities of files it can still decode (corrupt EXIF, short TIFF reads); the
    # per-item result is what counts, so these stay off stderr (set once, before any decoding thread).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # reported per item
    out_fmt = _infer_format(fmt, output)
    if output is not None and output.is_dir():
        raise _user_error(f"{output}: is a folder; -o needs a file name")
    model = load(model_name, device=device, max_side=max_side, precision=precision)
    if precision == "bf16" and model.device.type == "cpu" and not quiet:
        from shamisa.scorer import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            print("warning: this CPU has no native bfloat16 instructions; --precision bf16 will be slower than fp32",
                  file=sys.stderr)
    items: Any = expand_inputs(paths, recursive)
    total: int | None = None
    if "-" not in paths:
        items = list(items)
        total = len(items)
        if total == 0:
            raise _user_error("no images found (folders are searched for image file extensions; use -r for sub-folders)")
    show_progress = not quiet and sys.stderr.isatty()
    failures: list[Any] = []
    n_ok = 0
    t0 = time.perf_counter()
    with _open_output(output) as out:
        writer = _Writer(out_fmt, out, model.card)
        with _progress(show_progress, total) as progress:
            task = progress.add_task("score", total=total)
            stream = model.score_paths(items, batch_size=batch_size, workers=workers)
            try:
                for rec in stream:
                    writer.write(rec)
                    progress.advance(task)
                    if rec.ok:
                        n_ok += 1
                    else:
                        failures.append(rec)
                        if fail_fast:
                            break
            finally:
                stream.close()
        if n_ok + len(failures) == 0:
            raise _user_error("no images to score")
        summary = _print_summary(n_ok, failures, time.perf_counter() - t0, quiet)
        if fail_fast and failures:
            _err("stopped at the first failure (--fail-fast)")
        writer.close(summary)
    return EXIT_ITEM_FAILED if failures else 0


def models_command(
    files: list[Path] = typer.Argument(None, help="Model files to describe (default: the bundled models).",
                                       show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the bundled models (or describe model files) with their model-card information."""
    from shamisa.errors import ShamisaError
    from shamisa.scorer import ALIASES, list_models, model_path, read_card

    try:
        entries = []
        targets = [(str(f), Path(f)) for f in files] if files else [(n, model_path(n)) for n in list_models()]
        for name, path in targets:
            card = read_card(path)
            d = card.summary()
            d["name"] = name
            d["aliases"] = sorted(a for a, t in ALIASES.items() if t == name)
            d["file"] = str(path)
            d["size_mb"] = round(path.stat().st_size / 1e6, 2)
            entries.append(d)
    except ShamisaError as e:
        raise _user_error(str(e)) from None
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    if not entries:
        _err("no models installed")
        raise typer.Exit(EXIT_USER_ERROR)
    for d in entries:
        m = d["metrics"] or {}
        srcc, plcc = m.get("srcc_median"), m.get("plcc_median")
        quality = f"SRCC {srcc:.4f}, PLCC {plcc:.4f} (median over {m.get('splits', '?')} splits)" if srcc is not None and plcc is not None else "not measured"
        lo, hi = d["score_range"]
        lines = [
            f"{d['name']}" + (f"  (aliases: {', '.join(d['aliases'])})" if d["aliases"] else ""),
            f"  {d['description']}" if d["description"] else None,
            f"  encoder    {d['encoder']}, crop {d['crop']}",
            f"  head data  {d['dataset']} ({d['mos_type'].upper()} {lo:g}-{hi:g})",
            f"  quality    {quality}",
            f"  recipe     {d['recipe']}" if d["recipe"] else None,
            f"  file       {d['file']} ({d['size_mb']} MB)",
        ]
        print("\n".join(line for line in lines if line is not None))


def report_skipped_rows(skipped: Sequence[Any], source: object) -> None:
    """On stderr: how many malformed label rows were left out, then the first
    :data:`MAX_LISTED_FAILURES` with their line numbers and reasons."""
    if not skipped:
        return
    _err(f"skipped {len(skipped)} malformed row(s) of {source}:")
    for row in skipped[:MAX_LISTED_FAILURES]:
        _err(f"  line {row.line}: {row.reason}" + (f" ({row.path})" if row.path and row.path not in row.reason else ""))
    if len(skipped) > MAX_LISTED_FAILURES:
        _err(f"  ... and {len(skipped) - MAX_LISTED_FAILURES} more")


def _parse_range(text: str | None) -> tuple[float, float] | None:
    from shamisa.errors import ConfigError

    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise ConfigError(f"--score-range must be two numbers LO,HI (e.g. 0,100), got {text!r}") from None
    if not lo < hi:
        raise ConfigError(f"--score-range needs LO < HI, got {text!r}")
    return lo, hi


def resolve_encoder(encoder: str | None, weights: Path | None, model: str | None) -> tuple[Any, str]:
    """The encoder to fit a head on, and a one-line description of where its weights come from.

    Exactly one of: ``encoder`` (ImageNet weights), ``weights`` (an encoder file, or a foreign state
    dict with ``encoder`` naming the architecture), ``model`` (the encoder of a model file / bundled
    model). Nothing given: the bundled default model's encoder.
    """
    from shamisa.errors import ConfigError, ModelFileError
    from shamisa.models import build_encoder, load_encoder, read_encoder_metadata

    if model is not None and (encoder is not None or weights is not None):
        raise ConfigError("give --model, or --encoder/--weights, not both")
    if weights is not None:
        try:
            read_encoder_metadata(weights)
            is_encoder_file = True
        except ModelFileError:
            is_encoder_file = False
        if is_encoder_file:
            enc, _ = load_encoder(weights)
            if encoder is not None and encoder != enc.name:
                raise ConfigError(f"{weights} holds a {enc.name} encoder, not {encoder}")
        else:
            from shamisa.scorer import read_model_file

            with contextlib.suppress(ModelFileError):
                if read_model_file(weights, verify=False)[0]:
                    raise ConfigError(f"{weights} is a shamisa model file: pass it with --model, not --weights")
            if encoder is None:
                raise ConfigError(f"{weights} is not a shamisa encoder file: also give --encoder NAME (its architecture)")
            enc = build_encoder(encoder, weights=weights)
        return enc.eval(), f"{enc.name} encoder from {Path(weights).name} (weights sha256 {enc.weights_hash()[:12]})"
    if encoder is not None:
        enc = build_encoder(encoder, pretrained=True)
        return enc.eval(), f"{enc.name} encoder with ImageNet weights"
    from shamisa.scorer import load

    m = load(model or "default", device="cpu")
    return m.encoder, f"{m.encoder.name} encoder of model {model or 'default'!r}"


def fit_command(
    labels: str = typer.Argument(
        ..., help="A CSV label file (columns path, score; optional ref) or a dataset name (clive, koniq10k, ...) with --root.",
        show_default=False,
    ),
    output: Path = typer.Option(..., "--output", "-o", help="The model file to write (.safetensors).", show_default=False),
    root: Path | None = typer.Option(None, "--root", help="Dataset folder (for a dataset name); for a CSV: folder its relative paths start from."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder with ImageNet weights (e.g. efficientnet_lite0)."),
    weights: Path | None = typer.Option(None, "--weights", help="Encoder weights file (e.g. from 'shamisa pretrain')."),
    model: str | None = typer.Option(None, "--model", help="Use the encoder of this model (default: the bundled 'default')."),
    mos_type: str | None = typer.Option(None, "--mos-type", help="mos (higher is better) or dmos (CSV default: from the column name)."),
    score_range: str | None = typer.Option(None, "--score-range", help="The labels' scale LO,HI (CSV default: observed min,max)."),
    n_splits: int = typer.Option(10, "--splits", min=1, help="Random 70/10/20 splits for alpha selection and the CV estimate."),
    seed: int = typer.Option(27, "--seed", help="Split s uses seed + s."),
    grid: str = typer.Option("protocol", "--alpha-grid", help="protocol (100 alphas in [1e-3, 1e3]) or budget (24)."),
    crop: int = typer.Option(224, "--crop", min=32, help="Crop size of the protocol."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Images per encoder batch."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Decoding worker processes."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache features under the shamisa cache folder."),
    name: str | None = typer.Option(None, "--name", help="Model name recorded in the card."),
    fp32: bool = typer.Option(False, "--fp32", help="Store encoder weights as fp32 (default fp16, half the size)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Fit a ridge head on your labels and write a complete model file for 'shamisa score --model FILE'.

    Features follow the evaluation protocol (5 crops x 2 scales). The ridge penalty is chosen on the
    validation part of N random splits (median SRCC); the cross-validated SRCC/PLCC printed are the
    medians over the splits' test parts; the head in the file is refitted on all labelled images.
    """
    from shamisa.errors import ShamisaError

    try:
        _run_fit(labels, output, root, encoder, weights, model, mos_type, score_range, n_splits, seed, grid,
                 crop, batch_size, workers, device, cache, name, fp32, quiet)
    except ShamisaError as e:
        raise _user_error(str(e)) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as e:
        raise _internal_error(e) from None


def _run_fit(labels: str, output: Path, root: Path | None, encoder: str | None, weights: Path | None,
             model: str | None, mos_type: str | None, score_range: str | None, n_splits: int, seed: int,
             grid: str, crop: int, batch_size: int, workers: int, device: str, cache: bool,
             name: str | None, fp32: bool, quiet: bool) -> None:
    import torch

    from shamisa.datasets import load_dataset, make_splits
    from shamisa.datasets.generic import load_csv
    from shamisa.errors import ConfigError, DatasetError
    from shamisa.fileio import cache_dir
    from shamisa.probe import extract_features
    from shamisa.scorer import ModelCard, _resolve_device, fit_head, save_model

    if mos_type is not None and mos_type not in ("mos", "dmos"):
        raise ConfigError(f"--mos-type must be mos or dmos, not {mos_type!r}")
    rng = _parse_range(score_range)
    label_path = Path(labels)
    if label_path.is_file():
        kw: dict[str, Any] = {"skip_bad": True, "name": label_path.stem}
        if mos_type:
            kw["mos_type"] = mos_type
        if rng:
            kw["score_range"] = rng
        if root is not None:
            kw["image_root"] = root
        ds = load_csv(label_path, **kw)
        dataset_desc = f"CSV {label_path.name}"
    elif label_path.suffix.lower() in {".csv", ".tsv", ".txt"} or label_path.exists():
        raise DatasetError(f"{labels}: label file not found")
    else:
        if root is None:
            raise ConfigError(f"{labels!r} is not a file; for a dataset name give its folder with --root")
        ds = load_dataset(labels, root)
        dataset_desc = ds.name
        if mos_type or rng:
            raise ConfigError("--mos-type/--score-range apply to CSV labels only (datasets know their scale)")
    report_skipped_rows(ds.skipped, labels)
    if len(ds) < 30:
        raise DatasetError(f"{labels}: {len(ds)} usable labelled images; at least 30 are needed (3 per validation split)")
    dev = _resolve_device(device)
    enc, enc_desc = resolve_encoder(encoder, weights, model)
    enc = enc.to(dev).eval()
    _err(f"fitting a head on {len(ds)} images of {dataset_desc} ({ds.mos_type}, range {ds.score_range[0]:g}-{ds.score_range[1]:g}) with the {enc_desc}")
    feats = extract_features(
        enc, [str(p) for p in ds.paths], crop=crop, batch_size=batch_size, device=dev, num_workers=workers,
        cache_dir=(cache_dir() / "features") if cache else None, dataset_name=ds.name,
        progress=not quiet and sys.stderr.isatty(),
    )
    splits = make_splits(ds, n_splits=n_splits, seed=seed)
    fit = fit_head(feats, ds.scores, splits, grid=grid)
    split_kind = f"{len(splits)} {splits.kind} {'/'.join(str(round(100 * r)) for r in (splits.ratios or ()))} splits (seed {seed})"
    card = ModelCard(
        name=name or output.stem,
        encoder=enc.name,
        feature_dim=int(enc.feature_dim),
        crop=crop,
        dataset=ds.name,
        mos_type=ds.mos_type,
        score_range=ds.score_range,
        recipe=(f"{enc_desc}; ridge head on {PROTOCOL_DESC}, alpha {fit.alpha:.4g} chosen by median validation "
                f"SRCC over {split_kind}, grid {grid}; refitted on all {len(ds)} images of {dataset_desc}"),
        metrics=fit.metrics(),
        description=f"{enc.name} + ridge head fitted on {dataset_desc}",
    )
    save_model(output, enc.cpu(), fit.head, card, dtype=None if fp32 else torch.float16)
    print(f"cross-validated SRCC {fit.srcc_median:.4f}, PLCC {fit.plcc_median:.4f} "
          f"(median over {len(splits)} test splits; alpha {fit.alpha:.4g})")
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB); use it with: shamisa score --model {output} IMAGES")


PROTOCOL_DESC = "5 crops x 2 scales (full + half), mean of crop predictions"


def register(app: typer.Typer) -> None:
    """Add ``score``, ``fit`` and ``models`` to ``app``."""
    app.command("score", no_args_is_help=True)(score_command)
    app.command("fit", no_args_is_help=True)(fit_command)
    app.command("models")(models_command)
