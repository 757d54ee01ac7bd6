"""Rebuild a bundled model from scratch: SHAMISA pretraining on pristine images, the ImageNet content
encoder beside it, and a ridge head on CLIVE.

The default model (``src/shamisa/assets/default.safetensors``), in one command::

    python scripts/build_default_model.py --pristine ../shared/data/pristine --clive-root $CLIVE_ROOT

1. Pretrain: the ``cpu`` preset (``shamisa pretrain --preset cpu``; Kodak24 is excluded and stays held
   out) on ``--pristine`` into ``--run`` (default ``runs/default-model``). Running the command again
   resumes an interrupted run; a finished run is reused as it is. ``--weights ENCODER_FILE`` skips this
   step and uses that encoder.
2. Pair: the pretrained (quality) encoder beside the frozen ImageNet encoder of its architecture
   (content), sharing the stages pretraining kept frozen (``shamisa.models.with_content``), both read
   out at several levels (``--readout multilevel``, the default: the averages of Lite's stages 5-7 and
   of its head, :mod:`shamisa.models.readout`; ``--readout head`` gives the papers' last-map average).
3. Head: every CLIVE image (1,162) gives 5 crops x 2 scales of 224 px; the ridge penalty is chosen by the
   median validation SRCC over the 10 random 70/10/20 splits (seed 27, the protocol's 100-value grid); the
   cross-validated SRCC/PLCC are the medians over the 10 test parts; the shipped head is refitted on all
   images. Test splits never choose anything.
4. Write the model file (encoder tensors in fp16, checked against fp32 on ``--check-images`` images) and a
   JSON report (``--report``) with the per-split figures the card's metrics come from.

The ImageNet-only model kept for comparison (``imagenet-lite0``)::

    python scripts/build_default_model.py --clive-root $CLIVE_ROOT --imagenet --name imagenet-lite0 \
        --output src/shamisa/assets/imagenet-lite0.safetensors --report bench/results/imagenet_model.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shamisa.configs import preset
from shamisa.datasets import load_dataset, make_splits
from shamisa.evaluation.features import extract_features
from shamisa.evaluation.metrics import srcc
from shamisa.fileio import atomic_write_json, cache_dir
from shamisa.inference.card import ModelCard
from shamisa.inference.fit import fit_head
from shamisa.inference.model_file import encoder_card_fields, save_model
from shamisa.inference.quality_model import load
from shamisa.models import READOUTS, build_encoder, load_encoder, with_content, with_readout
from shamisa.training import export_encoder, pretrain

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "shamisa" / "assets" / "default.safetensors"
DEFAULT_REPORT = REPO / "bench" / "results" / "default_model.json"


def _fp16_roundtrip(encoder: torch.nn.Module) -> torch.nn.Module:
    """A copy of the encoder whose floating tensors went through fp16 and back (what the file stores)."""
    enc16 = copy.deepcopy(encoder)
    with torch.no_grad():
        for t in list(enc16.parameters()) + list(enc16.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return enc16.eval()


def _levels(enc: torch.nn.Module) -> tuple[int, ...]:
    one = getattr(enc, "quality", enc)
    return tuple(getattr(one, "level_dims", (one.feature_dim,)))


def _quality_encoder(args: argparse.Namespace) -> tuple[torch.nn.Module, str, dict]:
    """The pretrained encoder (trained now or resumed, or read from --weights), its description, and
    the pretraining facts for the report."""
    if args.weights is not None:
        enc, meta = load_encoder(args.weights)
        cfg = meta.get("config") or {}
        desc = (f"SHAMISA-pretrained {enc.name} ({meta.get('step', '?')} steps of {cfg.get('patch_size', '?')}-px "
                f"crops, projector lr {cfg.get('lr', '?')}, encoder lr x{cfg.get('encoder_lr_scale', '?')}, "
                f"{cfg.get('encoder_freeze_steps', 0)} warm-up steps)") if cfg else f"SHAMISA-pretrained {enc.name}"
        cfg = {k: (Path(v).name if k == "out_dir" and v else v) for k, v in cfg.items()}  # no machine path
        return enc, desc, {"weights": args.weights.name, "steps": meta.get("step"), "config": cfg}
    if args.pristine is None:
        raise SystemExit("error: give --pristine DIR (pristine images to pretrain on) or --weights ENCODER_FILE")
    cfg = dataclasses.replace(preset("cpu"), data_dirs=(str(args.pristine),), out_dir=str(args.run / "pretrain"),
                              max_minutes=args.max_minutes)
    run = pretrain(cfg)
    record = json.loads((run / "ckpt" / "last.json").read_text())
    if not record.get("finished"):
        raise SystemExit(f"error: pretraining stopped at step {record['step']} of {record['total_steps']} "
                         f"({record.get('stop_reason')}); run the same command again to continue")
    encoder_file = export_encoder(run, args.run / "encoder.safetensors")
    enc, _ = load_encoder(encoder_file)
    facts = {"preset": "cpu", "steps": record["step"], "wall_minutes": round(record.get("wall_s", 0) / 60, 1),
             "config": record.get("config")}
    return enc, f"SHAMISA-pretrained {enc.name} (cpu preset, {record['step']} steps)", facts


def _portable(argv: list[str], args: argparse.Namespace) -> list[str]:
    """The command line as a user would type it: the CLIVE folder as $CLIVE_ROOT, the cache folder as
    $FEATURE_CACHE (no path of the machine that built the model)."""
    names = {str(args.clive_root): "$CLIVE_ROOT"}
    if args.cache_dir is not None:
        names[str(args.cache_dir)] = "$FEATURE_CACHE"
    if args.weights is not None and args.weights.is_absolute():  # a run's encoder: runs/RUN/FILE
        names[str(args.weights)] = f"runs/{args.weights.parent.name}/{args.weights.name}"
    return [names.get(a, a) for a in argv]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clive-root", required=True, type=Path, help="the CLIVE ChallengeDB_release folder")
    ap.add_argument("--pristine", type=Path, default=None, help="pristine images to pretrain on (e.g. ../shared/data/pristine)")
    ap.add_argument("--run", type=Path, default=Path("runs/default-model"), help="pretraining run folder (resumed if present)")
    ap.add_argument("--max-minutes", type=float, default=120.0, help="wall-time cap of this invocation's pretraining")
    ap.add_argument("--weights", type=Path, default=None, help="a pretrained encoder file instead of pretraining")
    ap.add_argument("--imagenet", action="store_true", help="no pretraining: the ImageNet encoder alone (comparison model)")
    ap.add_argument("--encoder", default="efficientnet_lite0", help="architecture of the --imagenet model")
    ap.add_argument("--name", default="default", help="model name in the card")
    ap.add_argument("--output", type=Path, default=DEFAULT_OUT, help=f"model file (default {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--report", type=Path, default=DEFAULT_REPORT, help="JSON report")
    ap.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: the shamisa cache)")
    ap.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--check-images", type=int, default=100, help="images for the fp16-vs-fp32 check (0: skip)")
    ap.add_argument("--fp32", action="store_true", help="store fp32 encoder weights")
    ap.add_argument("--no-content", action="store_true",
                    help="the pretrained encoder alone, without the frozen ImageNet content encoder beside it")
    ap.add_argument("--readout", choices=READOUTS, default="multilevel",
                    help="how the frozen encoders are read out (default: multilevel)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    ds = load_dataset("clive", args.clive_root)  # fail early on a wrong folder, before any training
    if args.imagenet:
        enc = build_encoder(args.encoder, pretrained=True).eval()
        enc_desc, pretraining = f"{enc.name} encoder with ImageNet weights (frozen; no IQA pretraining)", None
    else:
        quality, quality_desc, pretraining = _quality_encoder(args)
        if args.no_content:
            enc, enc_desc = quality.eval(), f"the {quality_desc}, frozen"
        else:
            enc = with_content(quality)
            enc_desc = (f"content + quality: the frozen ImageNet {enc.content.name} beside the {quality_desc} "
                        f"({enc.shared_stages} shared stages)")
    enc = with_readout(enc, args.readout)
    if args.readout != "head":
        enc_desc += f", read out at several levels ({args.readout} readout: {', '.join(map(str, _levels(enc)))} features)"
    t_pre = time.perf_counter() - t0
    cache = args.cache_dir if args.cache_dir is not None else cache_dir() / "features"
    paths = [str(p) for p in ds.paths]
    feats = extract_features(enc, paths, crop=224, batch_size=args.batch_size, num_workers=args.workers,
                             cache_dir=cache, dataset_name="clive", progress=sys.stderr.isatty())
    t_feat = time.perf_counter() - t0 - t_pre
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
    rebuild = ("python scripts/build_default_model.py --clive-root $CLIVE_ROOT "
               + ("--imagenet" if args.imagenet else
                  f"--weights {args.weights.name}" if args.weights else "--pristine ../shared/data/pristine")
               + ("" if args.readout == "multilevel" else f" --readout {args.readout}")
               + (" --no-content" if args.no_content and not args.imagenet else ""))
    card = ModelCard(
        name=args.name,
        **encoder_card_fields(enc),
        crop=224,
        dataset="clive",
        mos_type="mos",
        score_range=ds.score_range,
        recipe=(f"{enc_desc}; ridge head on 5 crops x 2 scales (224 px, full + half scale), mean of crop "
                f"predictions; alpha {fit.alpha:.4g} chosen by median validation SRCC over 10 random 70/10/20 "
                f"CLIVE splits (seed 27, 100 alphas in [1e-3, 1e3]); refitted on all {len(ds)} CLIVE images; "
                f"rebuild: {rebuild}"),
        metrics=metrics,
        description=(f"{enc.name} + ridge head on CLIVE (authentic distortions, MOS 0-100)" if args.imagenet else
                     f"SHAMISA-pretrained {enc.name} + ridge head on CLIVE (MOS 0-100)" if args.no_content else
                     f"SHAMISA-pretrained {enc.quality.name} + ImageNet content + ridge head on CLIVE (MOS 0-100)"),
    )
    out = save_model(args.output, enc, fit.head, card, dtype=None if args.fp32 else torch.float16)
    model = load(out, device="cpu")  # read back: checksum, format, and the same predictions as the head
    report = {
        "command": "python scripts/build_default_model.py " + " ".join(_portable(argv if argv is not None else sys.argv[1:], args)),
        "model_file": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else out.name,
        "size_mb": round(out.stat().st_size / 1e6, 3),
        "card": model.card.summary(),
        "per_split": {"srcc": [round(float(v), 6) for v in fit.srcc], "plcc": [round(float(v), 6) for v in fit.plcc]},
        "pretraining": pretraining,
        "pretrain_seconds": round(t_pre, 1),
        "feature_seconds": round(t_feat, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(args.report, report)
    print(json.dumps({k: report[k] for k in ("model_file", "size_mb", "feature_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
