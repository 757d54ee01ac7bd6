"""Rebuild the bundled default model (``src/shamisa/assets/default.safetensors``) from scratch.

One command::

    python scripts/build_default_model.py --clive-root /data/ChallengeDB_release
    # with a pretrained shamisa encoder instead of the ImageNet EfficientNet-Lite0:
    python scripts/build_default_model.py --clive-root /data/ChallengeDB_release --weights encoder.safetensors

Recipe: the encoder (ImageNet EfficientNet-Lite0 by default, or ``--weights``) is frozen; every CLIVE
image (1,162) gives 5 crops x 2 scales of 224 px; the ridge penalty is chosen by the median validation
SRCC over the 10 random 70/10/20 splits (seed 27, the protocol's 100-value grid); the cross-validated
SRCC/PLCC are the medians over the 10 test parts; the shipped head is refitted on all 1,162 images.
Before writing, the fp16 storage of the encoder is checked against fp32 on ``--check-images`` images
(score difference and SRCC between the two), and the result goes into the card.

Writes the model file (atomically) and a JSON report (``--report``, default
``bench/results/default_model.json``) with the per-split numbers, the fp16 check and timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "shamisa" / "assets" / "default.safetensors"
DEFAULT_REPORT = REPO / "bench" / "results" / "default_model.json"


def _fp16_roundtrip(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of the encoder whose floating backbone tensors went through fp16 and back."""
    enc16 = copy.deepcopy(encoder)
    with torch.no_grad():
        for t in list(enc16.backbone.parameters()) + list(enc16.backbone.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return enc16.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clive-root", required=True, type=Path, help="the CLIVE ChallengeDB_release folder")
    ap.add_argument("--weights", type=Path, default=None, help="encoder weights file (default: ImageNet EfficientNet-Lite0)")
    ap.add_argument("--encoder", default="efficientnet_lite0", help="encoder architecture (for ImageNet weights or a foreign state dict)")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUT, help=f"model file (default {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="JSON report")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: the shamisa cache)")
    ap.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--check-images", type=int, default=100, help="images for the fp16-vs-fp32 check (0: skip)")
    ap.add_argument("--fp32", action="store_true", help="store fp32 encoder weights")
    args = ap.parse_args(argv)

    from shamisa.datasets import load_dataset, make_splits
    from shamisa.fileio import atomic_write_json, cache_dir
    from shamisa.evaluation.metrics import srcc
    from shamisa.models import build_encoder, load_encoder, read_encoder_metadata
    from shamisa.evaluation.features import extract_features
    from shamisa.inference.card import ModelCard
    from shamisa.inference.fit import fit_head
    from shamisa.inference.model_file import save_model
    from shamisa.inference.quality_model import load

    t0 = time.perf_counter()
    ds = load_dataset("clive", args.clive_root)
    if args.weights is not None:
        try:
            read_encoder_metadata(args.weights)
            enc, _ = load_encoder(args.weights)
        except Exception:  # a foreign state dict: the architecture comes from --encoder
            enc = build_encoder(args.encoder, weights=args.weights)
        enc_desc = f"{enc.name} encoder from {args.weights.name} (weights sha256 {enc.weights_hash()[:12]})"
    else:
        enc = build_encoder(args.encoder, pretrained=True)
        enc_desc = f"{enc.name} encoder with ImageNet weights (frozen; no IQA pretraining)"
    enc.eval()
    cache = args.cache_dir if args.cache_dir is not None else cache_dir() / "features"
    paths = [str(p) for p in ds.paths]
    feats = extract_features(enc, paths, crop=224, batch_size=args.batch_size, num_workers=args.workers,
                             cache_dir=cache, dataset_name="clive", progress=sys.stderr.isatty())
    t_feat = time.perf_counter() - t0
    splits = make_splits(ds, n_splits=10, seed=27)
    fit = fit_head(feats, ds.scores, splits, grid="protocol")
    print(f"alpha {fit.alpha:.4g}; median over 10 splits: SRCC {fit.srcc_median:.4f}, PLCC {fit.plcc_median:.4f}")

    fp16: dict[str, object] = {}
    if args.check_images > 0 and not args.fp32:
        idx = np.linspace(0, len(ds) - 1, min(args.check_images, len(ds))).round().astype(int)
        sub = [paths[i] for i in idx]
        f32 = feats[idx]
        f16 = extract_features(_fp16_roundtrip(enc), sub, crop=224, batch_size=args.batch_size,
                               num_workers=args.workers, cache_dir=None, progress=False)
        p32, p16 = fit.head.predict_images(f32), fit.head.predict_images(f16)
        lo, hi = ds.score_range
        fp16 = {
            "images": int(idx.size),
            "max_abs_raw_diff": float(np.abs(p32 - p16).max()),
            "max_abs_score_diff": float(np.abs(p32 - p16).max() / (hi - lo)),
            "srcc_fp16_vs_fp32": float(srcc(p16, p32)),
            "srcc_vs_mos_fp32": float(srcc(p32, ds.scores[idx])),
            "srcc_vs_mos_fp16": float(srcc(p16, ds.scores[idx])),
            "max_abs_feature_diff": float(np.abs(f32 - f16).max()),
        }
        print(f"fp16 check on {idx.size} images: max |score diff| {fp16['max_abs_score_diff']:.2e}, "
              f"SRCC(fp16, fp32) {fp16['srcc_fp16_vs_fp32']:.6f}")

    metrics = fit.metrics()
    if fp16:
        metrics["fp16_check"] = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in fp16.items()}
    card = ModelCard(
        name="default",
        encoder=enc.name,
        feature_dim=int(enc.feature_dim),
        crop=224,
        dataset="clive",
        mos_type="mos",
        score_range=ds.score_range,
        recipe=(f"{enc_desc}; ridge head on 5 crops x 2 scales (224 px, full + half scale), mean of crop "
                f"predictions; alpha {fit.alpha:.4g} chosen by median validation SRCC over 10 random 70/10/20 "
                f"CLIVE splits (seed 27, 100 alphas in [1e-3, 1e3]); refitted on all {len(ds)} CLIVE images; "
                f"rebuild: python scripts/build_default_model.py --clive-root PATH"
                + (f" --weights {args.weights.name}" if args.weights else "")),
        metrics=metrics,
        description=f"{enc.name} + ridge head on CLIVE (authentic distortions, MOS 0-100)",
    )
    out = save_model(args.output, enc, fit.head, card, dtype=None if args.fp32 else torch.float16)
    model = load(out, device="cpu")  # read back: checksum, format, and the same predictions as the head
    report = {
        "command": "python scripts/build_default_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_file": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "size_mb": round(out.stat().st_size / 1e6, 3),
        "card": model.card.summary(),
        "feature_seconds": round(t_feat, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(args.report, report)
    print(json.dumps({k: report[k] for k in ("model_file", "size_mb", "feature_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
