"""Does bfloat16 inference change the scores? The default model in fp32 and in bf16 on all of CLIVE.

Usage::

    python bench/score_precision.py --root $CLIVE_ROOT --threads 2

For every CLIVE image the scorer's protocol features (5 crops x 2 scales, ``QualityModel.features``)
are computed twice, with ``precision="fp32"`` and ``precision="bf16"`` (cached under ``--cache``
with :func:`shamisa.evaluation.features.cached_array`, keyed by the encoder weights, the image list and the precision). Reported:

* the shipped head's raw predictions (CLIVE MOS scale, 0-100) in bf16 against fp32: mean / 99th
  percentile / largest absolute difference, and the rank correlation between the two;
* the SRCC / PLCC of each against MOS on all images (in-sample: the head was fitted on these images,
  so only the difference between the two columns means anything);
* the evaluation protocol (10 random 70/10/20 splits, seed 27, alpha by median validation SRCC): heads
  fitted on the fp32 training features, tested on the fp32 and on the bf16 test features (the
  question a user of ``--precision bf16`` asks), and, for completeness, heads fitted and tested on
  bf16 features.

Writes ``bench/results/score_precision.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def _features(model, paths: list[str], batch: int) -> np.ndarray:
    import torch

    from shamisa.inference.preprocess import prepare_path

    out = []
    t0 = time.perf_counter()
    for start in range(0, len(paths), batch):
        crops = torch.stack([prepare_path(p, model.crop, model.max_side).crops for p in paths[start : start + batch]])
        with torch.inference_mode():
            out.append(model.features(crops).double().numpy())
        done = min(start + batch, len(paths))
        if done % 200 < batch or done == len(paths):
            print(f"  {model.precision}: {done}/{len(paths)} images, {done / (time.perf_counter() - t0):.1f} img/s",
                  file=sys.stderr, flush=True)
    return np.concatenate(out)


def main() -> int:
    from shamisa.errors import ShamisaError

    try:
        return _main()
    except ShamisaError as e:  # missing dataset, bad model file, ...: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="CLIVE folder (ChallengeDB_release)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="images per forward pass")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    ap.add_argument("--cache", type=Path, default=Path("runs/score_precision"))
    ap.add_argument("--out", type=Path, default=RESULTS / "score_precision.json")
    args = ap.parse_args()

    import torch

    from shamisa.datasets import load_dataset, make_splits
    from shamisa.fileio import atomic_write_json
    from shamisa.evaluation.metrics import plcc, srcc
    from shamisa.evaluation.features import cached_array, feature_cache_key
    from shamisa.evaluation.ridge import alpha_grid, fit_ridge, select_alpha
    from shamisa.inference.quality_model import cpu_has_native_bf16, load

    torch.set_num_threads(args.threads)
    ds = load_dataset("clive", args.root)
    paths = [str(p) for p in ds.paths]
    y = np.asarray(ds.scores, dtype=np.float64)
    if args.limit:
        paths, y = paths[: args.limit], y[: args.limit]
    feats, models = {}, {}
    for precision in ("fp32", "bf16"):
        m = models[precision] = load(args.model, device="cpu", precision=precision)
        key = feature_cache_key(m.encoder, paths, dataset_name="clive-scorer-" + precision, crop=m.crop,
                                amp=precision == "bf16")
        feats[precision] = cached_array(
            args.cache, key, stem=f"score-precision-{precision}", shape=(len(paths), 5, 2 * m.encoder.feature_dim),
            compute=lambda m=m: _features(m, paths, args.batch),
        )[0].astype(np.float64)
    model = models["fp32"]
    coef = model.coef.double().numpy()
    b = float(model.intercept)
    raw = {k: (f @ coef + b).mean(axis=1) for k, f in feats.items()}
    diff = np.abs(raw["bf16"] - raw["fp32"])
    shipped = {
        "mean_abs_raw_diff": float(diff.mean()),
        "p99_abs_raw_diff": float(np.percentile(diff, 99)),
        "max_abs_raw_diff": float(diff.max()),
        "max_abs_score_diff": float(np.abs(model.to_score(raw["bf16"]) - model.to_score(raw["fp32"])).max()),
        "srcc_bf16_vs_fp32": srcc(raw["bf16"], raw["fp32"]),
        "in_sample_srcc": {k: srcc(v, y) for k, v in raw.items()},
        "in_sample_plcc": {k: plcc(v, y) for k, v in raw.items()},
        "feature_rel_diff": float(np.linalg.norm(feats["bf16"] - feats["fp32"]) / np.linalg.norm(feats["fp32"])),
    }

    protocol = {}
    if not args.limit:
        splits = make_splits(ds, n_splits=10, seed=27)
        grid = alpha_grid("protocol")
        alpha32, _ = select_alpha(feats["fp32"], y, splits.train, splits.val, grid)
        alpha16, _ = select_alpha(feats["bf16"], y, splits.train, splits.val, grid)
        rows = {"fp32 head, fp32 test": [], "fp32 head, bf16 test": [], "bf16 head, bf16 test": []}
        for tr, te in zip(splits.train, splits.test, strict=True):
            h32 = fit_ridge(feats["fp32"][tr], y[tr], alpha32)
            h16 = fit_ridge(feats["bf16"][tr], y[tr], alpha16)
            for name, head, f in (("fp32 head, fp32 test", h32, feats["fp32"]),
                                  ("fp32 head, bf16 test", h32, feats["bf16"]),
                                  ("bf16 head, bf16 test", h16, feats["bf16"])):
                p = head.predict_images(f[te])
                rows[name].append((srcc(p, y[te]), plcc(p, y[te])))
        for name, v in rows.items():
            a = np.asarray(v)
            protocol[name] = {"median_srcc": float(np.median(a[:, 0])), "median_plcc": float(np.median(a[:, 1])),
                              "srcc": a[:, 0].round(4).tolist(), "plcc": a[:, 1].round(4).tolist()}
        d = np.asarray(rows["fp32 head, bf16 test"])[:, 0] - np.asarray(rows["fp32 head, fp32 test"])[:, 0]
        protocol["paired_srcc_diff_bf16_minus_fp32"] = {"mean": float(d.mean()), "min": float(d.min()),
                                                        "max": float(d.max())}
        protocol["alpha"] = {"fp32": float(alpha32), "bf16": float(alpha16)}

    report = {
        "command": "python bench/score_precision.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, cpu_native_bf16={cpu_has_native_bf16()}",
        "images": len(paths),
        "shipped_head": shipped,
        "protocol": protocol,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(args.out, report)
    s = shipped
    print(f"images {len(paths)}; raw |bf16 - fp32| mean {s['mean_abs_raw_diff']:.3f}, 99th pct "
          f"{s['p99_abs_raw_diff']:.3f}, max {s['max_abs_raw_diff']:.3f} (0-100 MOS scale); score max "
          f"{s['max_abs_score_diff']:.4f}; SRCC(bf16, fp32) {s['srcc_bf16_vs_fp32']:.5f}; features rel. diff "
          f"{s['feature_rel_diff']:.4f}")
    print(f"in-sample SRCC vs MOS: fp32 {s['in_sample_srcc']['fp32']:.4f}, bf16 {s['in_sample_srcc']['bf16']:.4f}; "
          f"PLCC fp32 {s['in_sample_plcc']['fp32']:.4f}, bf16 {s['in_sample_plcc']['bf16']:.4f}")
    if protocol:
        print("\n| heads / test features | median SRCC | median PLCC |\n|---|---:|---:|")
        for name in ("fp32 head, fp32 test", "fp32 head, bf16 test", "bf16 head, bf16 test"):
            print(f"| {name} | {protocol[name]['median_srcc']:.4f} | {protocol[name]['median_plcc']:.4f} |")
        d = protocol["paired_srcc_diff_bf16_minus_fp32"]
        print(f"\npaired per-split SRCC, bf16 test - fp32 test: mean {d['mean']:+.4f} (min {d['min']:+.4f}, max {d['max']:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
