"""Soak test: score many generated images in one process and check that memory stays bounded.

Usage::

    python bench/soak.py --images 10000 --crop 32 --threads 1

Builds a randomly initialised EfficientNet-Lite0 model file with the given crop (speed: the crop size
changes the encoder cost, not the pipeline under test) unless ``--model`` is given, writes
``--distinct`` generated images of assorted sizes and formats (plus about 5% broken files, which
exercise the error path), and streams ``--images`` paths (cycling over the files) through
``QualityModel.score_paths`` -- the code path of ``shamisa score``. The resident set size (VmRSS) is
sampled every ``--sample-every`` images.

Pass criterion: after the warm-up (the first 10% of the images), RSS never exceeds the RSS at the end
of the warm-up by more than ``--bound-mb`` (default 64 MB), and the least-squares slope of RSS over
the second half is below 1 KB per image. Writes ``bench/results/soak.json`` and prints a summary table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        if i % 20 == 19:  # ~5% broken files
            p = folder / f"broken{i}.jpg"
            p.write_bytes(rng.integers(0, 256, 200 + i, dtype=np.uint8).tobytes())
        else:
            h, w = int(rng.integers(40, 400)), int(rng.integers(40, 400))
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([np.sin(xx / (5 + i % 7)), np.cos(yy / (3 + i % 5)), np.sin((xx + yy) / 11)], -1)
            arr = ((base * 0.4 + 0.5 + rng.normal(0, 0.05, (h, w, 3))).clip(0, 1) * 255).astype(np.uint8)
            p = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
            Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def tiny_model(path: Path, crop: int) -> Path:
    import torch

    from shamisa.models import build_encoder
    from shamisa.evaluation.ridge import RidgeHead
    from shamisa.inference.card import ModelCard
    from shamisa.inference.model_file import save_model

    torch.manual_seed(0)
    enc = build_encoder("efficientnet_lite0").eval()
    head = RidgeHead(np.random.default_rng(0).normal(size=2 * enc.feature_dim), 50.0, 1.0)
    card = ModelCard(name="soak", encoder=enc.name, feature_dim=enc.feature_dim, crop=crop, dataset="none",
                     mos_type="mos", score_range=(0.0, 100.0))
    return save_model(path, enc, head, card)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=10000, help="images to score")
    ap.add_argument("--distinct", type=int, default=200, help="distinct generated files (cycled)")
    ap.add_argument("--crop", type=int, default=32, help="crop of the generated random model")
    ap.add_argument("--model", default=None, help="score with this model instead of a generated one")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample-every", type=int, default=100)
    ap.add_argument("--bound-mb", type=float, default=64.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from shamisa.inference.quality_model import load

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        model_file = Path(args.model) if args.model else tiny_model(folder / "soak.safetensors", args.crop)
        files = make_images(folder, args.distinct)
        model = load(model_file, device="cpu")
        stream = itertools.islice(itertools.cycle(files), args.images)
        samples = [(0, 0.0, rss_mb())]
        n_ok = n_err = 0
        t0 = time.perf_counter()
        for i, rec in enumerate(model.score_paths(stream, batch_size=args.batch_size, workers=args.workers), 1):
            n_ok += rec.ok
            n_err += not rec.ok
            if i % args.sample_every == 0 or i == args.images:
                samples.append((i, round(time.perf_counter() - t0, 2), round(rss_mb(), 1)))
                print(f"{i:6d} images  {samples[-1][1]:8.1f} s  RSS {samples[-1][2]:7.1f} MB", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0

    n = np.array([s[0] for s in samples], dtype=float)
    rss = np.array([s[2] for s in samples])
    warm = n >= 0.1 * args.images
    rss_warm = float(rss[warm][0])
    growth = float(rss[warm].max() - rss_warm)
    second = n >= 0.5 * args.images
    slope_kb = float(np.polyfit(n[second], rss[second], 1)[0] * 1024) if second.sum() >= 3 else float("nan")
    passed = growth <= args.bound_mb and (not np.isfinite(slope_kb) or slope_kb < 1.0)
    report = {
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} logical CPUs (shared)",
        "images": args.images,
        "distinct_files": args.distinct,
        "crop": args.crop if not args.model else "from model",
        "scored": n_ok,
        "errors": n_err,
        "seconds": round(seconds, 1),
        "images_per_s": round(args.images / seconds, 2),
        "rss_start_mb": float(rss[0]),
        "rss_after_warmup_mb": rss_warm,
        "rss_max_mb": float(rss.max()),
        "growth_after_warmup_mb": round(growth, 1),
        "slope_second_half_kb_per_image": round(slope_kb, 4),
        "bound_mb": args.bound_mb,
        "passed": bool(passed),
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from shamisa.fileio import atomic_write_json

    atomic_write_json(args.out, report)
    print("| images | errors | seconds | RSS start | RSS after warm-up | RSS max | growth after warm-up | slope (2nd half) | bound | pass |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {args.images} | {n_err} | {seconds:.0f} | {rss[0]:.0f} MB | {rss_warm:.0f} MB | {rss.max():.0f} MB | "
          f"{growth:.1f} MB | {slope_kb:.3f} KB/image | {args.bound_mb:.0f} MB | {'yes' if passed else 'NO'} |")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
