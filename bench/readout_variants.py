"""Which pooled features of a frozen EfficientNet-Lite0 to give the ridge head: readout variants on CLIVE.

For every CLIVE image and every crop of the probe protocol (5 crops x 2 scales, 224 px), the script pools
the outputs of Lite0's stages 3-7 and of its head, by mean and by standard deviation, once per encoder
(``--encoder label=imagenet`` or ``label=ENCODER_FILE``; about 6 minutes an encoder on 2 CPU cores), then
runs the protocol's ridge probe (10 splits, seed 27, the 100-value alpha grid, unchanged) on each variant:

* ``head``: the head's mean (the ``head`` readout of ``shamisa evaluate``);
* ``head+std``: the head's mean and standard deviation;
* ``multilevel``: the means of stages 5, 6, 7 and the head (the ``multilevel`` readout);
* ``multilevel+std``: the same with each level's standard deviation;
* ``pair(FIRST,OTHER):VARIANT``: the first encoder (content) beside each other one (quality).

Each pooled part is L2-normalised; the parts are concatenated and scaled to unit norm (as
``shamisa.models.readout``). The ``head`` variant reproduces ``shamisa evaluate clive`` exactly and the
``multilevel`` variant reproduces ``shamisa evaluate clive --readout multilevel`` (the same features, in
a different batch order). Output: median test SRCC / PLCC, the median validation SRCC at the chosen alpha
(the protocol's model-selection figure) and the per-split values, as JSON.

Usage::

    python bench/readout_variants.py --root $CLIVE_ROOT --encoder imagenet=imagenet \
        --encoder shamisa=runs/pretrain-cpu/encoder.safetensors --json bench/results/readout_variants.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shamisa.datasets import load_dataset, make_splits
from shamisa.evaluation.protocol import EvalConfig, evaluate_linear_probe
from shamisa.fileio import atomic_write_json
from shamisa.images import load_image, two_scale_crops
from shamisa.models import build_encoder, encoder_from_weights
from shamisa.models.readout import lite_level_maps, lite_stage_ends

#: channels of the pooled levels, in order: the outputs of stages 3..7, then the head
LEVELS = (40, 80, 112, 192, 320, 1280)
VARIANTS = {
    "head": [(1280, "mean")],
    "head+std": [(1280, "mean"), (1280, "std")],
    "multilevel": [(c, "mean") for c in (112, 192, 320, 1280)],
    "multilevel+std": [(c, k) for c in (112, 192, 320, 1280) for k in ("mean", "std")],
}


def pooled_levels(encoder, paths: list[str], log=print) -> np.ndarray:
    """(N, 2 scales, 5 crops, 2 * sum(LEVELS)) float32: per level, mean then std over positions."""
    ends = lite_stage_ends(encoder.name, first_stage=3)
    rows, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for i, p in enumerate(paths):
            full, half = two_scale_crops(load_image(p), 224)
            maps = lite_level_maps(encoder, torch.cat([full, half]), ends)
            f = torch.cat([t for m in maps for t in (m.mean(dim=(2, 3)), m.std(dim=(2, 3)))], dim=1)
            rows.append(f.reshape(2, 5, -1).numpy().astype(np.float32))
            if (i + 1) % 200 == 0:
                log(f"  {i + 1}/{len(paths)} images, {time.perf_counter() - t0:.0f} s")
    return np.stack(rows)


def variant_features(raw: list[np.ndarray], spec: list[tuple[int, str]]) -> np.ndarray:
    offsets = np.cumsum([0] + [2 * c for c in LEVELS])
    blocks = []
    for a in raw:
        for channels, kind in spec:
            i = LEVELS.index(channels)
            start = offsets[i] + (0 if kind == "mean" else channels)
            x = a[..., start : start + channels]
            blocks.append(x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12))
    x = np.concatenate(blocks, axis=-1) / np.sqrt(len(blocks))
    return np.concatenate([x[:, 0], x[:, 1]], axis=-1)  # (N, 5, 2F): [full crop k, half crop k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="CLIVE folder ($CLIVE_ROOT)")
    ap.add_argument("--encoder", action="append", required=True, help="label=imagenet or label=ENCODER_FILE")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated (pairs are added for 2+ encoders)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    ds = load_dataset("clive", args.root)
    splits = make_splits(ds, n_splits=10, ratios=(0.7, 0.1, 0.2), seed=27)
    raws: dict[str, np.ndarray] = {}
    for item in args.encoder:
        label, _, source = item.partition("=")
        if not source:
            raise SystemExit(f"error: --encoder wants label=imagenet or label=FILE, got {item!r}")
        enc = (build_encoder("efficientnet_lite0", pretrained=True) if source == "imagenet"
               else encoder_from_weights(Path(source), "efficientnet_lite0")[0]).eval()
        print(f"pooling {label} ({source})", file=sys.stderr)
        raws[label] = pooled_levels(enc, [str(p) for p in ds.paths], log=lambda m: print(m, file=sys.stderr))
    labels = list(raws)
    runs = [(f"{lab}:{v}", [raws[lab]], v) for lab in labels for v in args.variants.split(",")]
    runs += [(f"pair({labels[0]},{other}):{v}", [raws[labels[0]], raws[other]], v)
             for other in labels[1:] for v in args.variants.split(",")]
    out: dict = {"dataset": "clive", "splits": "10 x 70/10/20, seed 27", "encoders": dict(
        item.partition("=")[::2] for item in args.encoder), "results": {}}
    for name, raw, v in runs:
        res = evaluate_linear_probe(variant_features(raw, VARIANTS[v]), ds, splits, EvalConfig())
        row = {"srcc": [s["srcc"] for s in res.per_split], "plcc": [s["plcc"] for s in res.per_split],
               "val_srcc": res.selection["best_median_val_srcc"]}
        row["srcc_median"], row["plcc_median"] = statistics.median(row["srcc"]), statistics.median(row["plcc"])
        out["results"][name] = row
        print(f"{name:40s} SRCC {row['srcc_median']:.4f}  PLCC {row['plcc_median']:.4f}  validation SRCC "
              f"{row['val_srcc']:.4f}", flush=True)
        if args.json:
            atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
