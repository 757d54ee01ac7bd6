"""Scoring throughput: the batched pipeline vs a one-image-at-a-time loop, measured in the same run.

Usage::

    python bench/score_throughput.py --images /data/ChallengeDB_release/Images --threads 2 --subset 100

Modes:

* ``batched`` (``batchedN``): ``model.score_paths(paths, batch_size=B, workers=W)``: decoding and
  cropping in a thread pool overlapping the encoder, B = ``--batch-size`` (or N) images, i.e. 10 B crops,
  per forward pass;
* ``loop``: ``for p in paths: model.score(p, workers=1)``: decode, crop and encode one image at a time
  (its 10 crops in one forward pass), the way a simple script calls the API;
* ``loop_eager``: like ``loop`` with the encoder in plain eager mode (``load(..., optimize=False)``),
  i.e. without the traced, frozen, inference-optimised encoder the scorer uses on the CPU -- what a
  straightforward implementation of the protocol does.

Timing is fair on a shared machine whose load changes: all modes run in ONE process, interleaved in
rounds over chunks of ``--chunk`` images (round r: every mode scores chunk r), after one warm-up image
each, so every mode sees the same background load; the time of each mode is summed over its chunks.
Peak memory (``VmHWM``, the peak resident set) is measured separately for each mode in its own subprocess on
``--memory-images`` images, since a process's peak cannot be split between modes.
Writes ``bench/results/score_throughput.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
MODES = ("loop_eager", "loop", "batched")


def _paths(folder: Path, subset: int) -> list[str]:
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in EXTS and p.is_file())
    return files[:subset] if subset > 0 else files


def _split_mode(mode: str) -> tuple[str, str]:
    """"batched1_bf16" -> ("batched1", "bf16"); "loop" -> ("loop", "fp32")."""
    return (mode[: -len("_bf16")], "bf16") if mode.endswith("_bf16") else (mode, "fp32")


def _run_mode(mode: str, models: dict, paths: list[str], args: argparse.Namespace) -> list[float]:
    base, _ = _split_mode(mode)
    if base.startswith("batched"):  # "batched" uses --batch-size; "batched4" a batch of 4 images
        bs = int(base[len("batched"):] or args.batch_size)
        return [r.raw for r in models[mode].score_paths(paths, batch_size=bs, workers=args.workers)]
    if base in ("loop", "loop_eager"):
        return [models[mode].score(p, return_raw=True, workers=1).raw for p in paths]
    raise SystemExit(f"unknown mode {mode}")


def _load_models(modes: list[str], model: str) -> dict:
    from shamisa.inference.quality_model import load

    out = {}
    for m in modes:
        base, precision = _split_mode(m)
        out[m] = load(model, device="cpu", optimize=base != "loop_eager", precision=precision)
    return out


def _memory_child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    models = _load_models([args.memory_mode], args.model)
    paths = _paths(Path(args.images), args.memory_images)
    rss_loaded = _vm("VmRSS")
    _run_mode(args.memory_mode, models, paths, args)
    return {"mode": args.memory_mode, "peak_rss_mb": round(_vm("VmHWM"), 1),
            "rss_after_load_mb": round(rss_loaded, 1), "images": len(paths)}


def _vm(key: str) -> float:
    """A /proc/self/status memory field in MB. VmHWM (peak RSS) is used rather than ru_maxrss, which
    Linux carries over from the parent across fork + exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of images (e.g. CLIVE's Images/)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="decoding threads of the batched pipeline")
    ap.add_argument("--subset", type=int, default=100, help="images scored by every mode (0: all)")
    ap.add_argument("--chunk", type=int, default=20, help="images per mode per round")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated modes")
    ap.add_argument("--memory-images", type=int, default=24, help="images for the per-mode peak-memory runs")
    ap.add_argument("--memory-mode", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS / "score_throughput.json")
    args = ap.parse_args()
    if args.memory_mode:
        print(json.dumps(_memory_child(args)))
        return 0

    import numpy as np
    import torch

    from shamisa.inference.quality_model import cpu_has_native_bf16

    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    models = _load_models(modes, args.model)
    paths = _paths(args.images, args.subset)
    for m in modes:  # warm-up: oneDNN kernels, the traced encoder, thread pools
        _run_mode(m, models, paths[:1], args)
    seconds = dict.fromkeys(modes, 0.0)
    raws: dict[str, list[float]] = {m: [] for m in modes}
    for r, start in enumerate(range(0, len(paths), args.chunk)):
        chunk = paths[start : start + args.chunk]
        order = modes if r % 2 == 0 else modes[::-1]  # alternate who goes first
        for m in order:
            t0 = time.perf_counter()
            raws[m] += _run_mode(m, models, chunk, args)
            seconds[m] += time.perf_counter() - t0
        print(f"round {r}: " + ", ".join(f"{m} {len(raws[m]) / seconds[m]:.2f} img/s" for m in modes),
              file=sys.stderr, flush=True)
    ref = np.array(raws[modes[0]])
    results = []
    for m in modes:
        cmd = [sys.executable, __file__, "--images", str(args.images), "--model", args.model,
               "--threads", str(args.threads), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
               "--memory-images", str(args.memory_images), "--memory-mode", m]
        mem = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results.append({
            "mode": m,
            "images": len(raws[m]),
            "seconds": round(seconds[m], 2),
            "images_per_s": round(len(raws[m]) / seconds[m], 3),
            "peak_rss_mb": mem["peak_rss_mb"],
            "rss_after_load_mb": mem["rss_after_load_mb"],
            "max_abs_raw_diff_vs_first_mode": float(np.abs(np.array(raws[m]) - ref).max()),
        })
    by = {r["mode"]: r for r in results}
    speedups = {}
    for b in [m for m in by if m.startswith("batched")]:
        for base in ("loop", "loop_eager", "loop_bf16"):
            if base in by:
                speedups[f"{b}_vs_{base}"] = round(by[b]["images_per_s"] / by[base]["images_per_s"], 2)
    report = {
        "command": "python bench/score_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs shared with other jobs",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "subset": len(paths),
        "chunk": args.chunk,
        "results": results,
        "speedups": speedups,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    from shamisa.fileio import atomic_write_json

    atomic_write_json(args.out, report)
    lines = ["| mode | images | seconds | images/s | peak RSS (MB) |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['mode']} | {r['images']} | {r['seconds']} | {r['images_per_s']} | {r['peak_rss_mb']} |")
    lines.append("")
    lines += [f"{k.replace('_', ' ')}: **{v}x**" for k, v in speedups.items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
