"""The varying slot with and without its image-only work shared across levels.

For each type with a shared stage (``shamisa.distortions.functional.SHARED_STAGES``), times the varying slot of a
structured item as ``build_structured_batch`` runs it, ``apply_levels(views, name, 5 values)``, against what it
did before, ``apply_distortion`` on the views repeated once per level, on the same 6 views (3 Kodak crops at full
and half scale, 224 px), alternating the two in every repeat; checks that both give the same result up to float
rounding. CPU time of one thread; median over repeats.

Usage::

    python bench/shared_levels.py --images ../shared/data/pristine/kodak24 [--jpeg2000 approx]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of pristine images (>= 224 px)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--jpeg2000", choices=("openjpeg", "approx"), default="approx")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "shared_levels.json")
    args = ap.parse_args(argv)

    from shamisa.distortions import apply_distortion, apply_levels, sample_views
    from shamisa.distortions.functional import SHARED_STAGES
    from shamisa.distortions.levels import LEVELS
    from shamisa.distortions.memory import keep_heap
    from shamisa.fileio import atomic_write_json
    from shamisa.images import is_image_path, load_image

    if not args.images.is_dir():
        print(f"error: {args.images} is not a folder", file=sys.stderr)
        return 1
    paths = sorted(p for p in args.images.iterdir() if is_image_path(p))[:3]
    if not paths:
        print(f"error: no images in {args.images}", file=sys.stderr)
        return 1
    keep_heap()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    pairs = [sample_views(load_image(p), 224, g) for p in paths]
    views = torch.stack([v[0] for v in pairs] + [v[1] for v in pairs])
    b = views.shape[0]
    rows = []
    names = list(SHARED_STAGES) + (["jpeg2000"] if args.jpeg2000 == "approx" else [])  # the codec has none
    for name in names:
        values = torch.tensor(LEVELS[name], dtype=torch.float64)
        seeds = torch.arange(30, dtype=torch.int64) + 1000

        shared = functools.partial(apply_levels, views, name, values, seeds=seeds, jpeg2000_impl=args.jpeg2000)
        repeated = functools.partial(
            apply_distortion, views.repeat(5, 1, 1, 1), name, values.repeat_interleave(b), seeds=seeds,
            jpeg2000_impl=args.jpeg2000,
        )
        a, r = shared(), repeated()  # warm-up, and the check
        diff = (a - r).abs()
        times: dict[str, list[float]] = {"repeated": [], "shared": []}
        for i in range(args.repeats):
            for label, fn in (("repeated", repeated), ("shared", shared))[:: 1 if i % 2 == 0 else -1]:
                c0 = time.process_time()
                fn()
                times[label].append((time.process_time() - c0) * 1000)
        row = {
            "type": name,
            "repeated_ms": statistics.median(times["repeated"]),
            "shared_ms": statistics.median(times["shared"]),
            "max_abs_diff": float(diff.max()),
            "frac_values_differing": float((diff > 0).float().mean()),
        }
        row["speedup"] = row["repeated_ms"] / row["shared_ms"]
        rows.append(row)
        print(f"{name:12s} repeated {row['repeated_ms']:7.1f} ms  shared {row['shared_ms']:7.1f} ms  "
              f"x{row['speedup']:.2f}  max diff {row['max_abs_diff']:.2g}", file=sys.stderr, flush=True)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": os.getloadavg(),
        },
        "jpeg2000": args.jpeg2000,
        "views": b,
        "levels": 5,
        "rows": rows,
    }
    atomic_write_json(args.out, result)
    print("| type | repeated batch, CPU ms | shared stage, CPU ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['type']} | {row['repeated_ms']:.1f} | {row['shared_ms']:.1f} | {row['speedup']:.2f}x | "
              f"{row['max_abs_diff']:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
