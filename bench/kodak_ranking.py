"""Distortion-ranking check on held-out Kodak: does an encoder order the 5 KADID levels of each
distortion type by severity, without any training on human scores?

For every Kodak image (center crop), every distortion type and every level k = 0..4 (the KADID level
table value), the predicted quality is the negative distance of the representation to that of the
pristine crop, ``q = -||h(distorted) - h(pristine)||_2`` (h is the L2-normalised encoder output).
Per (type, image) we compute SRCC(q, -k) over the 5 levels (1 = perfectly ordered), then average over
images ("within-image", full-reference-like: it uses the image's own pristine crop).

A harder, no-reference variant ("pooled"): q_nr = -||h(distorted) - c||_2 with c the mean representation
of the *other* 23 pristine crops (leave-one-out), and one SRCC(q_nr, -k) per type pooled over all
images x levels (120 points), so contents must be comparable on one scale. Types whose level-0 value is the identity (meanshift/contrast change at 0) still have 4
distinct distorted levels plus an identical-to-pristine one, which is fine for the ranking.

Usage::

    python bench/kodak_ranking.py --kodak ../shared/data/pristine/kodak24 \
        --encoder imagenet=efficientnet_lite0 --encoder pretrained=runs/pretrain-cpu/encoder.safetensors

Writes ``bench/results/kodak_ranking.json`` and prints a markdown table (types x encoders).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from shamisa.distortions import DISTORTION_NAMES, GROUP_OF, apply_distortion
from shamisa.distortions.levels import severity_to_value
from shamisa.images import ensure_min_side, load_image
from shamisa.training.data import find_images

RESULTS = Path(__file__).parent / "results"


def load_named_encoder(spec: str):
    from shamisa.models import build_encoder, load_encoder

    if spec.endswith(".safetensors"):
        enc, _ = load_encoder(spec)
        return enc.eval()
    return build_encoder(spec, pretrained=True).eval()


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    x = ensure_min_side(x, size)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, top : top + size, left : left + size]


def distorted_stack(images: list[torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """name -> (N_img, 5, 3, P, P) the 5 KADID levels of every image."""
    out = {}
    levels = torch.arange(5, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = torch.stack(images)
    n = x.shape[0]
    for name in DISTORTION_NAMES:
        values, _ = severity_to_value(name, levels)
        y = apply_distortion(x.repeat_interleave(5, 0), name, values.repeat(n), generator=g)
        out[name] = y.view(n, 5, *x.shape[1:])
    return out


@torch.no_grad()
def embed(encoder, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    outs = []
    for i in range(0, x.shape[0], batch):
        xb = x[i : i + batch].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(encoder(xb).float())
    return torch.cat(outs)


def ranking_scores(encoder, pristine: torch.Tensor, stacks: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(within-image SRCC per type, pooled no-reference SRCC per type)."""
    h0 = embed(encoder, pristine)  # (N, D)
    n = h0.shape[0]
    loo_centre = (h0.sum(0, keepdim=True) - h0) / max(n - 1, 1)  # (N, D) centre of the other images
    within, pooled = {}, {}
    for name, y in stacks.items():
        h = embed(encoder, y.flatten(0, 1)).view(n, 5, -1)
        q = -(h - h0[:, None]).norm(dim=-1)  # (N, 5)
        srcc = []
        for i in range(n):
            r = spearmanr(q[i].numpy(), -np.arange(5)).statistic
            srcc.append(0.0 if np.isnan(r) else float(r))
        within[name] = float(np.mean(srcc))
        q_nr = -(h - loo_centre[:, None]).norm(dim=-1)
        r = spearmanr(q_nr.flatten().numpy(), -np.tile(np.arange(5), n)).statistic
        pooled[name] = 0.0 if np.isnan(r) else float(r)
    return within, pooled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kodak", default="../shared/data/pristine/kodak24")
    ap.add_argument("--encoder", action="append", required=True, help="label=efficientnet_lite0 or label=path.safetensors")
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--name", default="kodak_ranking")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    images = [center_crop(load_image(p), args.crop) for p in find_images([args.kodak])]
    stacks = distorted_stack(images, args.seed)
    pristine = torch.stack(images)
    table: dict[str, dict[str, float]] = {}
    pooled: dict[str, dict[str, float]] = {}
    for item in args.encoder:
        label, _, spec = item.partition("=")
        table[label], pooled[label] = ranking_scores(load_named_encoder(spec), pristine, stacks)
    labels = list(table)
    result = {
        "images": len(images),
        "crop": args.crop,
        "quality": "-||h(dist) - h(pristine)||_2",
        "encoders": {item.partition("=")[0]: item.partition("=")[2] for item in args.encoder},
        "srcc_by_type": table,
        "mean_srcc": {lab: float(np.mean(list(table[lab].values()))) for lab in labels},
        "quality_nr_pooled": "-||h(dist) - mean h(other pristine crops)||_2, SRCC over images x levels",
        "pooled_srcc_by_type": pooled,
        "mean_pooled_srcc": {lab: float(np.mean(list(pooled[lab].values()))) for lab in labels},
        "seconds": round(time.time() - t0, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    heads = [f"{lab} within" for lab in labels] + [f"{lab} pooled NR" for lab in labels]
    print("| type | group | " + " | ".join(heads) + " |")
    print("|---|---|" + "---|" * len(heads))
    for name in DISTORTION_NAMES:
        cells = [f"{table[lab][name]:.3f}" for lab in labels] + [f"{pooled[lab][name]:.3f}" for lab in labels]
        print(f"| {name} | {GROUP_OF[name]} | " + " | ".join(cells) + " |")
    means = [f"**{result['mean_srcc'][lab]:.3f}**" for lab in labels]
    means += [f"**{result['mean_pooled_srcc'][lab]:.3f}**" for lab in labels]
    print("| **mean** | | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
