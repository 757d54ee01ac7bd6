"""Is the quality map meaningful on real photos? Distort one half of each pristine Kodak image and see
whether the map's scores drop on that half.

For each of the 24 Kodak images, each distortion type (Gaussian blur and white noise from
``shamisa.distortions`` at severity index 2.0 of [0, 4], the middle of the KADID level table: blur sigma
1.0, noise variance 0.003) and each side (left, then right), the whole image is distorted with the
project's batched function, and the distorted pixels are pasted into the pristine image on that side
only. The default model's quality map (patch = its crop size, stride = half) is computed for all
variants; we report, per distortion type, the mean map score over the distorted half and over the clean
half (pooled over images and sides), the mean difference, and the fraction of (image, side) cases where
the distorted half scores lower. Since the two halves of a photo differ in content (and so in score) to
begin with, we also compare each half with the same half of the pristine image's map: how much each half
lost, and how often the distorted half lost more than the clean one.

Usage::

    python bench/quality_map_check.py --kodak ../shared/data/pristine/kodak24

Writes ``bench/results/quality_map_check.json`` (relative paths only) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

import shamisa
from shamisa.distortions import apply_distortion, severity_to_value
from shamisa.images import IMAGE_EXTENSIONS, load_image
from shamisa.inference.maps import quality_maps

RESULTS = Path(__file__).parent / "results"
TYPES = ("gaublur", "whitenoise")


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return p.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kodak", type=Path, required=True, help="folder of the 24 Kodak PNGs")
    ap.add_argument("--model", default="default")
    ap.add_argument("--severity", type=float, default=2.0, help="severity index in [0, 4] (2.0 = middle level)")
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared machine: 1)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (a quick look)")
    ap.add_argument("--out", type=Path, default=RESULTS / "quality_map_check.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(p for p in args.kodak.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[: args.limit]
    if not files:
        raise SystemExit(f"no images in {args.kodak}")
    model = shamisa.load(args.model, device="cpu")
    t0 = time.perf_counter()
    per_type: dict[str, list[dict]] = {t: [] for t in TYPES}
    clean_scores = []
    for f in files:
        x = load_image(f)
        w = x.shape[-1]
        half = w // 2
        variants, keys = [x], [("clean", "", "")]
        for t in TYPES:
            v, _ = severity_to_value(t, torch.tensor([args.severity]))
            d = apply_distortion(x[None], t, v.float(), torch.Generator().manual_seed(27))[0]
            for side in ("left", "right"):
                y = x.clone()
                sl = slice(0, half) if side == "left" else slice(half, w)
                y[:, :, sl] = d[:, :, sl]
                variants.append(y)
                keys.append(("dist", t, side))
        maps = quality_maps(model, variants, patch=args.patch, stride=args.stride)
        clean = maps[0].map
        pristine = {"left": float(clean[:, :half].mean()), "right": float(clean[:, half:].mean())}
        clean_scores.append(pristine)
        for (_, t, side), qm in zip(keys[1:], maps[1:], strict=True):
            m = qm.map
            dist_half = m[:, :half] if side == "left" else m[:, half:]
            clean_half = m[:, half:] if side == "left" else m[:, :half]
            other = "right" if side == "left" else "left"
            per_type[t].append({
                "image": f.name, "side": side,
                "distorted_half": round(float(dist_half.mean()), 5),
                "clean_half": round(float(clean_half.mean()), 5),
                "pristine_same_half": round(pristine[side], 5),
                "pristine_other_half": round(pristine[other], 5),
            })
        print(f"{f.name}: " + ", ".join(
            f"{t} {r['side']} {r['distorted_half']:.3f}/{r['clean_half']:.3f}" for t in TYPES for r in per_type[t][-2:]
        ), flush=True)
    summary = {}
    for t in TYPES:
        rows = per_type[t]
        dist = np.array([r["distorted_half"] for r in rows])
        cln = np.array([r["clean_half"] for r in rows])
        p_same = np.array([r["pristine_same_half"] for r in rows])
        p_other = np.array([r["pristine_other_half"] for r in rows])
        drop_dist, drop_clean = p_same - dist, p_other - cln
        v, _ = severity_to_value(t, torch.tensor([args.severity]))
        summary[t] = {
            "value": float(v[0]),
            "cases": len(rows),
            "mean_distorted_half": round(float(dist.mean()), 4),
            "mean_clean_half": round(float(cln.mean()), 4),
            "mean_difference": round(float((cln - dist).mean()), 4),
            "fraction_distorted_lower": round(float((dist < cln).mean()), 4),
            "fraction_distorted_lower_left": round(float(np.mean([r["distorted_half"] < r["clean_half"]
                                                                  for r in rows if r["side"] == "left"])), 4),
            "fraction_distorted_lower_right": round(float(np.mean([r["distorted_half"] < r["clean_half"]
                                                                   for r in rows if r["side"] == "right"])), 4),
            # paired with the pristine image's map: how much each half lost
            "mean_drop_distorted_half_vs_pristine": round(float(drop_dist.mean()), 4),
            "mean_drop_clean_half_vs_pristine": round(float(drop_clean.mean()), 4),
            "fraction_distorted_half_dropped": round(float((drop_dist > 0).mean()), 4),
            "fraction_distorted_half_dropped_more_than_clean_half": round(float((drop_dist > drop_clean).mean()), 4),
        }
    ex = maps[0]
    doc = {
        "command": f"python bench/quality_map_check.py --kodak {_rel(args.kodak)}"
        + (f" --model {args.model}" if args.model != "default" else "")
        + (f" --severity {args.severity:g}" if args.severity != 2.0 else "")
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (f" --limit {args.limit}" if args.limit is not None else ""),
        "model": args.model,
        "images": len(files),
        "severity_index": args.severity,
        "patch": ex.patch,
        "stride": ex.stride,
        "summary": summary,
        "pristine_map_mean_left_right": {
            "left": round(float(np.mean([c["left"] for c in clean_scores])), 4),
            "right": round(float(np.mean([c["right"] for c in clean_scores])), 4),
        },
        "per_image": per_type,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.machine(),
                    "load_average_1m": round(os.getloadavg()[0], 2)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("\n| type | value | distorted half | clean half | difference | distorted lower | drop vs pristine: "
          "distorted / clean half | distorted half dropped more |")
    print("|---|---|---|---|---|---|---|---|")
    for t, s in summary.items():
        print(f"| {t} | {s['value']:g} | {s['mean_distorted_half']:.4f} | {s['mean_clean_half']:.4f} | "
              f"{s['mean_difference']:+.4f} | {s['fraction_distorted_lower']:.0%} ({s['cases']} cases) | "
              f"{s['mean_drop_distorted_half_vs_pristine']:+.4f} / {s['mean_drop_clean_half_vs_pristine']:+.4f} | "
              f"{s['fraction_distorted_half_dropped_more_than_clean_half']:.0%} |")
    print(f"wrote {_rel(args.out)}")


if __name__ == "__main__":
    main()
