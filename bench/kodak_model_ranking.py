"""Synthetic-distortion ranking of a quality MODEL (encoder + head) on held-out Kodak24.

Every Kodak image (never used in pretraining) is distorted with each of the 26 types at the 5 levels of
its level table; the model scores every distorted image with its normal scoring protocol
(``shamisa.load(...).score``). Per type:

* within-image: SRCC between the model's score and -level over the 5 levels of one image, averaged over
  the images (does the model order one content's severities?);
* pooled: one SRCC between score and -level over all images x levels (24 x 5 = 120 points): contents
  must share one quality scale, the no-reference question a user asks of a score.

Also the pooled SRCC over all types at once (3,120 points). Several models are scored on the same
distorted images in one run.

Usage::

    python bench/kodak_model_ranking.py --kodak ../shared/data/pristine/kodak24 \
        --model imagenet=imagenet-lite0 --model default=default --precision bf16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import shamisa
from shamisa.distortions import DISTORTION_NAMES, apply_distortion
from shamisa.distortions.levels import severity_to_value
from shamisa.fileio import atomic_write_json
from shamisa.images import load_image

RESULTS = Path(__file__).parent / "results"
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    r = spearmanr(a, b).statistic
    return 0.0 if np.isnan(r) else float(r)


def distorted(image: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """type -> (5, 3, H, W): the image at the 5 levels of the type's table."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in DISTORTION_NAMES:
        values, _ = severity_to_value(name, torch.arange(5, dtype=torch.float64))
        out[name] = apply_distortion(image.unsqueeze(0).repeat(5, 1, 1, 1), name, values, generator=g)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kodak", type=Path, default=Path("../shared/data/pristine/kodak24"))
    ap.add_argument("--model", action="append", required=True, help="label=model name or model file")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 (the models' scoring precision)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke runs)")
    ap.add_argument("--out", type=Path, default=RESULTS / "kodak_model_ranking.json")
    args = ap.parse_args()
    t0 = time.time()
    paths = sorted(p for p in args.kodak.iterdir() if p.suffix.lower() in SUFFIXES)[: args.limit]
    if not paths:
        raise SystemExit(f"error: no images in {args.kodak}")
    specs = [m.partition("=")[::2] for m in args.model]
    models = {label: shamisa.load(spec, precision=args.precision) for label, spec in specs}
    scores = {label: {name: np.zeros((len(paths), 5)) for name in DISTORTION_NAMES} for label in models}
    for i, path in enumerate(paths):
        stacks = distorted(load_image(path), args.seed + i)
        for label, model in models.items():
            for name, x in stacks.items():
                scores[label][name][i] = np.asarray(model.score(x, batch_size=5))
        print(f"{i + 1}/{len(paths)} {path.name} {time.time() - t0:.0f} s", flush=True)
    levels = np.tile(np.arange(5), len(paths))
    result = {"images": len(paths), "kodak": str(args.kodak), "precision": args.precision,
              "models": dict(specs), "within_by_type": {}, "pooled_by_type": {}, "summary": {}}
    for label in models:
        within = {n: float(np.mean([_srcc(s[i], -np.arange(5)) for i in range(len(paths))]))
                  for n, s in scores[label].items()}
        pooled = {n: _srcc(s.reshape(-1), -levels) for n, s in scores[label].items()}
        all_scores = np.concatenate([s.reshape(-1) for s in scores[label].values()])
        result["within_by_type"][label], result["pooled_by_type"][label] = within, pooled
        result["summary"][label] = {
            "mean_within_srcc": float(np.mean(list(within.values()))),
            "mean_pooled_srcc": float(np.mean(list(pooled.values()))),
            "pooled_all_types_srcc": _srcc(all_scores, -np.tile(levels, len(DISTORTION_NAMES))),
            "types_pooled_better_than_first": None,
        }
    first = specs[0][0]
    for label in models:
        result["summary"][label]["types_pooled_better_than_first"] = sum(
            result["pooled_by_type"][label][n] > result["pooled_by_type"][first][n] for n in DISTORTION_NAMES)
    result["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, result)
    labels = list(models)
    print("| type | " + " | ".join(f"{l} within | {l} pooled" for l in labels) + " |")
    print("|---|" + "---|---|" * len(labels))
    for n in DISTORTION_NAMES:
        print(f"| {n} | " + " | ".join(f"{result['within_by_type'][l][n]:.3f} | {result['pooled_by_type'][l][n]:.3f}" for l in labels) + " |")
    for l in labels:
        print(l, json.dumps(result["summary"][l]))


if __name__ == "__main__":
    main()
