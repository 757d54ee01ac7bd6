"""Feature-extraction throughput of the linear-probe protocol (10 crops of 224 px per image).

Measures, on the images of a dataset (CLIVE by default), with the feature cache off:

* decode + crop only (DataLoader workers, no encoder): images/s;
* full extraction (decode in workers || encoder in the main process, channels_last) in fp32 and
  with bfloat16 autocast: images/s and crops/s, and how much bf16 changes the features
  (relative L2 difference, minimum cosine similarity per crop feature).

Writes ``bench/results/feature_throughput.json`` and ``.md`` and prints the markdown table.

Example::

    python bench/feature_throughput.py --root $CLIVE_ROOT --limit 200
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def decode_rate(paths: list[str], crop: int, workers: int, batch_size: int) -> float:
    from shamisa.evaluation.features import _collate, _CropDataset, _worker_init

    loader = torch.utils.data.DataLoader(
        _CropDataset(paths, crop), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
    )
    t0 = time.perf_counter()
    n = sum(len(items) for items in loader)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="clive")
    ap.add_argument("--root", type=Path, required=True, help="dataset folder")
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--limit", type=int, default=None, help="first N images (default: all)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--modes", default="fp32,bf16", help="comma list of fp32, bf16")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "feature_throughput.json")
    args = ap.parse_args(argv)

    from shamisa.datasets import load_dataset
    from shamisa.models import build_encoder
    from shamisa.evaluation.features import extract_features

    import os

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    ds = load_dataset(args.dataset, args.root)
    paths = [str(p) for p in ds.paths[: args.limit]]
    enc = build_encoder(args.encoder, pretrained=True).eval().to(memory_format=torch.channels_last)
    # Warm-up (first-call kernels, page cache).
    extract_features(enc, paths[:4], crop=args.crop, batch_size=args.batch_size, num_workers=0, progress=False)

    rows = []
    dec = decode_rate(paths, args.crop, args.workers, args.batch_size)
    rows.append({"mode": "decode + crops only", "images_per_s": dec, "crops_per_s": 10 * dec, "seconds": len(paths) / dec})
    feats: dict[str, np.ndarray] = {}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        t0 = time.perf_counter()
        feats[mode] = extract_features(
            enc, paths, crop=args.crop, batch_size=args.batch_size, num_workers=args.workers,
            amp=(mode == "bf16"), progress=sys.stderr.isatty(),
        )
        dt = time.perf_counter() - t0
        rows.append({"mode": f"extract {mode}", "images_per_s": len(paths) / dt, "crops_per_s": 10 * len(paths) / dt, "seconds": dt})
    diff = None
    if "fp32" in feats and "bf16" in feats:
        a, b = feats["fp32"].astype(np.float64), feats["bf16"].astype(np.float64)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        diff = {
            "relative_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
            "max_abs": float(np.abs(a - b).max()),
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
        }

    result = {
        "benchmark": "feature_throughput",
        "command": "python bench/feature_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": ds.name,
        "n_images": len(paths),
        "crops_per_image": 10,
        "crop": args.crop,
        "encoder": enc.name,
        "batch_size_images": args.batch_size,
        "workers": args.workers,
        "torch_threads": args.threads,
        "rows": rows,
        "bf16_vs_fp32_features": diff,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "note": "2-core CPU VM shared with other jobs",
                    "loadavg_1min_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    md = [
        f"# Feature-extraction throughput ({enc.name}, {ds.name}, {len(paths)} images, 10 crops of {args.crop} px each)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: 2-core CPU (shared), torch {torch.__version__}, {args.threads} threads, {args.workers} decode workers, "
        f"batch {args.batch_size} images. 1-minute load average {load_start[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (other jobs share the 2 cores).",
        "",
        "| mode | images/s | crops/s | seconds |",
        "|---|---:|---:|---:|",
        *(f"| {r['mode']} | {r['images_per_s']:.2f} | {r['crops_per_s']:.1f} | {r['seconds']:.1f} |" for r in rows),
    ]
    if diff:
        md += ["", f"bf16 vs fp32 features: relative L2 difference {diff['relative_l2']:.4f}, "
               f"min cosine {diff['min_cosine']:.5f}, mean cosine {diff['mean_cosine']:.5f}."]
    text = "\n".join(md) + "\n"
    from shamisa.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(args.out, result)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
