"""ImageNet sanity check of the EfficientNet-Lite encoders and Lite0 CPU throughput.

1. Top-5 ImageNet classes (index, probability) of an image with the offline ImageNet weights
   (shorter side resized to crop*256/224 px with antialiased bicubic, then the centre crop), at a
   224 px crop and at each model's nominal crop (240 px Lite1, 260 px Lite2; these two only when
   their optional weight packages are importable).
2. Lite0 encoder throughput in crops/s at batch 32, 224 px, on ``--threads`` CPU threads: fp32 eager,
   fp32 channels_last, channels_last + bf16 autocast (``torch.inference_mode``).

Writes ``bench/results/encoder_throughput.json`` and prints a markdown table.

    python bench/imagenet_sanity.py /path/to/kodim23.png --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shamisa.fileio import atomic_write_json
from shamisa.images import load_image
from shamisa.models import build_encoder, imagenet_state_dict
from shamisa.models.efficientnet_lite import LITE_VARIANTS
from shamisa.models.imagenet import IMAGENET_SOURCES

RESULTS = Path(__file__).parent / "results"


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """(3,H,W) -> (1,3,crop,crop): shorter side to crop*256/224, then the centre crop."""
    h, w = x.shape[-2:]
    short = round(crop * 256 / 224)
    s = short / min(h, w)
    size = (max(crop, round(h * s)), max(crop, round(w * s)))
    y = F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return y[..., top : top + crop, left : left + crop]


def top5(name: str, image: torch.Tensor, size: int) -> list[tuple[int, float]]:
    enc = build_encoder(name, pretrained=True).eval()
    fc = imagenet_state_dict(name, with_classifier=True)
    crop = center_crop(image, size)
    with torch.inference_mode():
        logits = F.linear(enc.features(crop), fc["_fc.weight"], fc["_fc.bias"])
    p = logits.softmax(dim=1)[0]
    vals, idx = p.topk(5)
    return [(int(i), round(float(v), 4)) for i, v in zip(idx, vals, strict=True)]


def throughput(mode: str, *, batch: int, size: int, iters: int, warmup: int) -> tuple[float, float]:
    """(crops per wall-clock second, crops per CPU second of this process) from the median batch."""
    enc = build_encoder("efficientnet_lite0", pretrained=True).eval()
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    if mode != "fp32":
        enc = enc.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "cl_bf16" else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for _ in range(warmup):
            enc(x)
        wall, cpu = [], []
        for _ in range(iters):
            t0, c0 = time.perf_counter(), time.process_time()
            enc(x)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    wall.sort()
    cpu.sort()
    return batch / wall[len(wall) // 2], batch / cpu[len(cpu) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "encoder_throughput.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    image = load_image(args.image)
    preds = {}
    for name, src in IMAGENET_SOURCES.items():
        try:
            importlib.import_module(src.module)
        except ImportError:
            continue
        for size in sorted({224, LITE_VARIANTS[name][2]}):
            preds[f"{name}@{size}"] = top5(name, image, size)

    modes = {"fp32": "fp32 eager", "cl": "fp32 channels_last", "cl_bf16": "channels_last + bf16 autocast"}
    speed, per_cpu = {}, {}
    for m in modes:
        s, c = throughput(m, batch=args.batch, size=args.size, iters=args.iters, warmup=args.warmup)
        speed[m], per_cpu[m] = round(s, 2), round(c, 2)
    result = {
        "image": str(args.image),
        "top5": {k: [{"class": c, "prob": p} for c, p in v] for k, v in preds.items()},
        "throughput_crops_per_s": speed,
        "crops_per_cpu_second": per_cpu,
        "settings": {
            "threads": args.threads,
            "batch": args.batch,
            "size": args.size,
            "iters": args.iters,
            "warmup": args.warmup,
            "statistic": "median batch time",
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
        },
    }
    atomic_write_json(args.out, result)

    print("| model@crop | top-5 (ImageNet class: prob) |\n|---|---|")
    for k, v in preds.items():
        print(f"| {k} | " + ", ".join(f"{c}: {p:.3f}" for c, p in v) + " |")
    head = f"Lite0 mode (batch {args.batch}, {args.size} px, {args.threads} threads)"
    print(f"\n| {head} | crops/s | crops/CPU-s |")
    print("|---|---|---|")
    for m, label in modes.items():
        print(f"| {label} | {speed[m]:.1f} | {per_cpu[m]:.1f} |")
    print(json.dumps(result["throughput_crops_per_s"]))


if __name__ == "__main__":
    main()
