"""Pretraining step throughput on the CPU: crops/s and one step split into synthesis, forward, backward.

Usage::

    python bench/train_step.py --data ../shared/data/pristine [--preset cpu] [--exclude kodak24] [--steps 3] [--set key=value ...]

Synthesis = building the step's structured items in the main process (decode, crops, every
composition at every level); forward = encoder + projector + loss; backward = backward + SGD step.
Writes ``bench/results/train_step.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from shamisa.configs import apply_overrides, config_to_dict, preset
from shamisa.distortions import builder
from shamisa.training.data import PristineDataset
from shamisa.training.model import build_model, resolve_amp, set_train_mode

RESULTS = Path(__file__).parent / "results"


def bench(cfg, steps: int, warmup: int) -> dict:
    device = torch.device("cpu")
    ds = PristineDataset(
        cfg.data_dirs, exclude=cfg.exclude_dirs, patch_size=cfg.patch_size, n_refs=cfg.n_refs, n_comps=cfg.n_comps,
        n_levels=cfg.n_levels, max_distortions=cfg.max_distortions, seed=cfg.seed,
    )
    model = build_model(cfg)
    model.amp_dtype, _ = resolve_amp(cfg, device)
    if cfg.channels_last:
        model.encoder.to(memory_format=torch.channels_last)
    set_train_mode(model, cfg.bn_mode)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=cfg.momentum)
    rows = []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        batch = builder.collate_structured([ds[(0, (s * cfg.items_per_step + i) % len(ds))] for i in range(cfg.items_per_step)])
        t1 = time.perf_counter()
        out = model(batch.refs, batch.dist, {"indices": batch.indices, "var_slot": batch.var_slot})
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        t3 = time.perf_counter()
        if s >= warmup:
            rows.append({"synthesis": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "step": t3 - t0})
    crops = cfg.items_per_step * cfg.crops_per_item
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {
        "crops_per_step": crops,
        "median_s": med,
        "train_crops_per_s": crops / (med["forward"] + med["backward"]),
        "synthesis_crops_per_s": crops / med["synthesis"],
        "end_to_end_crops_per_s": crops / med["step"],
        "steps_timed": steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--data", action="append")
    ap.add_argument("--exclude", action="append")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--name", default="train_step")
    args = ap.parse_args()
    cfg = preset(args.preset)
    flags = list(args.overrides)
    if args.data:
        flags.append("data_dirs=" + ",".join(args.data))
    if args.exclude:
        flags.append("exclude_dirs=" + ",".join(args.exclude))
    cfg = apply_overrides(cfg, flags)
    torch.manual_seed(0)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    res = bench(cfg, args.steps, args.warmup)
    load = open("/proc/loadavg").read().split()[:3] if Path("/proc/loadavg").exists() else []
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, load avg {' '.join(load)}",
        "torch": torch.__version__,
        "config": {k: v for k, v in config_to_dict(cfg).items() if k != "loss"},
        "overrides": args.overrides,
        **res,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    m = res["median_s"]
    print(f"| config | crops/step | synthesis s | forward s | backward s | step s | train crops/s | end-to-end crops/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.preset} {cfg.patch_size}px R{cfg.n_refs} F{cfg.n_comps} L{cfg.n_levels} {cfg.amp} "
        f"{' '.join(args.overrides)} | {res['crops_per_step']} | {m['synthesis']:.2f} | {m['forward']:.2f} | "
        f"{m['backward']:.2f} | {m['step']:.2f} | {res['train_crops_per_s']:.1f} | {res['end_to_end_crops_per_s']:.1f} |"
    )


if __name__ == "__main__":
    main()
