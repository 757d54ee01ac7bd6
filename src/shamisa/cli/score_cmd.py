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
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from shamisa.cli.common import DEVICE_HELP, MAX_LISTED_FAILURES, err, internal_error, user_error
from shamisa.cli.exit_codes import EXIT_ITEM_FAILED, EXIT_OK, EXIT_USER_ERROR

CSV_COLUMNS = ("path", "score", "raw", "width", "height", "flags", "error")


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    jsonl = "jsonl"
    json = "json"


# ------------------------------------------------------------------------------------------ helpers

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
    return rec.to_dict()  # one definition of the row, shared with the server's API


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


def _print_summary(n_ok: int, failures: list[Any], seconds: float, quiet: bool) -> dict[str, Any]:
    n = n_ok + len(failures)
    summary = {"images": n, "scored": n_ok, "failed": len(failures), "seconds": round(seconds, 3)}
    if not quiet:
        rate = n / seconds if seconds > 0 else 0.0
        err(f"scored {n_ok} of {n} image(s) in {seconds:.1f} s ({rate:.1f} images/s)")
    if failures:
        err(f"{len(failures)} failed:")
        for rec in failures[:MAX_LISTED_FAILURES]:
            err(f"  {rec.path}: {rec.error}")
        if len(failures) > MAX_LISTED_FAILURES:
            err(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more (see the error column of the output)")
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
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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
    map_dir: Path | None = typer.Option(
        None, "--map", help="Also write each scored image's quality map (overlay PNG with a colour bar) into this folder.",
        show_default=False,
    ),
) -> None:
    """Score image quality: one row per image, score in [0, 1] (higher is better) and the raw score.

    Exit code: 0 if every image was scored, 1 if any failed (its row has an 'error'), 2 for a usage
    or model-file error, 3 for an unexpected internal error.
    """
    from shamisa.errors import ShamisaError

    try:
        code = _run_score(ScoreArgs(
            paths=tuple(paths), recursive=recursive, model=model, batch_size=batch_size, device=device, fmt=fmt,
            output=output, fail_fast=fail_fast, workers=workers, max_side=max_side, quiet=quiet, precision=precision,
            map_dir=map_dir,
        ))
    except ShamisaError as e:
        raise user_error(str(e)) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except BrokenPipeError:  # e.g. `shamisa score ... | head`
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(EXIT_ITEM_FAILED) from None
    except OSError as e:  # the output file cannot be written, ...
        where = f"{e.filename}: " if e.filename else ""
        raise user_error(f"{where}{e.strerror or e}") from None
    except Exception as e:
        raise internal_error(e) from None
    raise typer.Exit(code)


@dataclass(frozen=True)
class ScoreArgs:
    """The options of ``shamisa score``."""

    paths: tuple[str, ...]
    recursive: bool = False
    model: str = "default"
    batch_size: int | None = None
    device: str = "auto"
    fmt: OutputFormat | None = None
    output: Path | None = None
    fail_fast: bool = False
    workers: int | None = None
    max_side: int = 2048
    quiet: bool = False
    precision: str = "fp32"
    map_dir: Path | None = None


def _run_score(a: ScoreArgs) -> int:
    import warnings

    from shamisa.inference.quality_model import cpu_has_native_bf16, load
    from shamisa.progress import progress_bar

    # Pillow warns about oddities of files it can still decode (corrupt EXIF, short TIFF reads); the
    # per-item result is what counts, so these stay off stderr (set once, before any decoding thread).
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")  # reported per item
    out_fmt = _infer_format(a.fmt, a.output)
    if a.output is not None and a.output.is_dir():
        raise user_error(f"{a.output}: is a folder; -o needs a file name")
    model = load(a.model, device=a.device, max_side=a.max_side, precision=a.precision)
    if a.precision == "bf16" and model.device.type == "cpu" and not a.quiet:
        if not cpu_has_native_bf16():
            print("warning: this CPU has no native bfloat16 instructions; --precision bf16 will be slower than fp32",
                  file=sys.stderr)
    maps = None
    if a.map_dir is not None:
        from shamisa.inference.maps import OverlayWriter

        maps = OverlayWriter(model, a.map_dir)
    items: Any = expand_inputs(list(a.paths), a.recursive)
    total: int | None = None
    if "-" not in a.paths:
        items = list(items)
        total = len(items)
        if total == 0:
            raise user_error("no images found (folders are searched for image file extensions; use -r for sub-folders)")
    show_progress = not a.quiet
    failures: list[Any] = []
    n_ok = 0
    t0 = time.perf_counter()
    with _open_output(a.output) as out:
        writer = _Writer(out_fmt, out, model.card)
        with progress_bar(enabled=show_progress, lines=False, transient=True) as progress:
            task = progress.add_task("scoring", total=total)
            stream = model.score_paths(items, batch_size=a.batch_size, workers=a.workers)
            try:
                for rec in stream:
                    writer.write(rec)
                    progress.advance(task)
                    if rec.ok:
                        n_ok += 1
                        if maps is not None:
                            maps.write(rec.path)
                    else:
                        failures.append(rec)
                        if a.fail_fast:
                            break
            finally:
                stream.close()
        if n_ok + len(failures) == 0:
            raise user_error("no images to score")
        summary = _print_summary(n_ok, failures, time.perf_counter() - t0, a.quiet)
        if maps is not None and not a.quiet:
            err(f"wrote {len(maps.written)} quality map(s) to {a.map_dir}")
        if a.fail_fast and failures:
            err("stopped at the first failure (--fail-fast)")
        writer.close(summary)
    return EXIT_ITEM_FAILED if failures else EXIT_OK


def models_command(
    files: list[Path] = typer.Argument(None, help="Model files to describe (default: the bundled models).",
                                       show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the bundled models (or describe model files) with their model-card information."""
    from shamisa.errors import ShamisaError
    from shamisa.inference.model_file import ALIASES, list_models, model_path, read_card

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
        raise user_error(str(e)) from None
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    if not entries:
        err("no models installed")
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
    with_content: bool = typer.Option(
        False, "--with-content", help="Pair the encoder with the frozen ImageNet encoder of its architecture (content + quality)."
    ),
    readout: str | None = typer.Option(
        None, "--readout", help="head or multilevel (see 'shamisa evaluate --help'); default: the encoder's (head for a new encoder).",
        show_default=False,
    ),
    mos_type: str | None = typer.Option(None, "--mos-type", help="mos (higher is better) or dmos (CSV default: from the column name)."),
    score_range: str | None = typer.Option(None, "--score-range", help="The labels' scale LO,HI (CSV default: observed min,max)."),
    n_splits: int = typer.Option(10, "--splits", min=1, help="Random 70/10/20 splits for alpha selection and the CV estimate."),
    seed: int = typer.Option(27, "--seed", help="Split s uses seed + s."),
    grid: str = typer.Option("protocol", "--alpha-grid", help="protocol (100 alphas in [1e-3, 1e3]) or budget (24)."),
    crop: int = typer.Option(224, "--crop", min=32, help="Crop size of the protocol."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Images per encoder batch."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Decoding worker processes."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
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
    from shamisa.inference.fit import fit

    try:
        report = fit(
            labels, output, root=root, encoder=encoder, weights=weights, model=model, with_content=with_content,
            readout=readout, mos_type=mos_type,
            score_range=_parse_range(score_range), n_splits=n_splits, seed=seed, grid=grid, crop=crop,
            batch_size=batch_size, workers=workers, device=device, cache=cache, name=name, fp32=fp32,
            progress=not quiet and sys.stderr.isatty(), log=err,
        )
    except ShamisaError as e:
        raise user_error(str(e)) from None
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as e:
        raise internal_error(e) from None
    hf = report.head_fit
    print(f"cross-validated SRCC {hf.srcc_median:.4f}, PLCC {hf.plcc_median:.4f} "
          f"(median over {report.n_splits} test splits; alpha {hf.alpha:.4g})")
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB); use it with: shamisa score --model {output} IMAGES")


def register(app: typer.Typer) -> None:
    """Add ``score``, ``fit`` and ``models`` to ``app``."""
    app.command("score", no_args_is_help=True)(score_command)
    app.command("fit", no_args_is_help=True)(fit_command)
    app.command("models")(models_command)
