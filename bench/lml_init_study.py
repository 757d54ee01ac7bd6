"""LML-IQA fine-tuning: SHAMISA initialisation vs ImageNet, and the local-manifold term on vs off.

Three arms, each fine-tuned end to end on every split of the protocol (CLIVE, 10 random 70/10/20 splits,
seed 27) with the same step budget and the same fine-tuning seed, so split ``s`` of one arm is paired with
split ``s`` of the others:

- ``imagenet``: ``shamisa finetune`` from the ImageNet encoder (the LML-IQA paper's start);
- ``shamisa``: the same from a SHAMISA-pretrained encoder (``--weights``);
- ``shamisa-no-lml``: the ``shamisa`` arm with the local-manifold term off (``--lml-weight 0``).

Each run writes ``OUT/ARM/split-S/result.json``; runs that already have one are skipped, so the study
resumes after an interruption (``--max-minutes`` stops it cleanly between runs). The summary
(``--json``) holds, per arm, the median test SRCC/PLCC and the training minutes, and for the two questions
(``shamisa`` vs ``imagenet``; ``shamisa`` vs ``shamisa-no-lml``) the per-split differences, how many
splits improved and the exact two-sided sign test.

Usage::

    python bench/lml_init_study.py --root $CLIVE_ROOT --weights runs/pretrain/encoder.safetensors \
        --max-steps 60 --eval-mode center --out runs/lml-study --json bench/results/lml_init_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from compare_probes import sign_test_p  # bench/ is on the path when this script runs
from shamisa.fileio import atomic_write_json

ARMS = ("imagenet", "shamisa", "shamisa-no-lml")
QUESTIONS = (("shamisa", "imagenet", "Does SHAMISA initialisation help?"),
             ("shamisa", "shamisa-no-lml", "Does the local-manifold term help?"))


def arm_arguments(arm: str, weights: Path, lml_weight: float) -> list[str]:
    if arm == "imagenet":
        return ["--pretrained", "--lml-weight", str(lml_weight)]
    if arm == "shamisa":
        return ["--weights", str(weights), "--lml-weight", str(lml_weight)]
    if arm == "shamisa-no-lml":
        return ["--weights", str(weights), "--lml-weight", "0"]
    raise ValueError(f"unknown arm {arm!r}")


def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def paired(a: dict[int, dict], b: dict[int, dict]) -> dict:
    common = sorted(set(a) & set(b))
    out: dict = {"splits": common}
    for metric in ("test_srcc", "test_plcc"):
        diffs = [a[s][metric] - b[s][metric] for s in common]
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        out[metric] = {
            "diffs": diffs,
            "median_diff": statistics.median(diffs) if diffs else None,
            "improved": wins,
            "worse": losses,
            "sign_test_p": sign_test_p(wins, losses),
        }
    return out


def summarise(out: Path, splits: list[int], args: argparse.Namespace) -> dict:
    results: dict[str, dict[int, dict]] = {}
    for arm in ARMS:
        results[arm] = {}
        for s in splits:
            r = read_result(out / arm / f"split-{s}" / "result.json")
            if r is not None:
                results[arm][s] = r
    arms = {}
    for arm, rows in results.items():
        if not rows:
            continue
        arms[arm] = {
            "splits_done": sorted(rows),
            "median_srcc": statistics.median(r["test_srcc"] for r in rows.values()),
            "median_plcc": statistics.median(r["test_plcc"] for r in rows.values()),
            "per_split": {s: {"srcc": r["test_srcc"], "plcc": r["test_plcc"]} for s, r in sorted(rows.items())},
            "train_minutes_per_split": statistics.fmean(r["train_seconds"] for r in rows.values()) / 60,
            "eval_minutes_per_split": statistics.fmean(r["eval_seconds"] for r in rows.values()) / 60,
        }
    questions = [
        {"question": q, "candidate": a, "baseline": b, **paired(results[a], results[b])}
        for a, b, q in QUESTIONS
    ]
    return {
        "format": "shamisa-lml-init-study",
        "dataset": "clive",
        "settings": {"max_steps": args.max_steps, "batch_size": args.batch_size, "n_crops": args.n_crops,
                     "lml_weight": args.lml_weight, "eval_mode": args.eval_mode, "seed": args.seed, "n_splits": args.n_splits,
                     "weights": args.weights.name, "threads": os.environ.get("OMP_NUM_THREADS")},
        "arms": arms,
        "questions": questions,
    }


def print_summary(summary: dict) -> None:
    for arm, a in summary["arms"].items():
        print(f"{arm:15s} {len(a['splits_done']):2d} splits  SRCC {a['median_srcc']:.4f}  PLCC {a['median_plcc']:.4f}"
              f"  train {a['train_minutes_per_split']:.1f} min/split")
    for q in summary["questions"]:
        n = len(q["splits"])
        if not n:
            continue
        print(f"{q['question']} {q['candidate']} - {q['baseline']} on {n} splits:")
        for metric in ("test_srcc", "test_plcc"):
            m = q[metric]
            print(f"  {metric[5:].upper()}: median diff {m['median_diff']:+.4f}, better on {m['improved']}, "
                  f"worse on {m['worse']} (sign test p = {m['sign_test_p']:.3f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="CLIVE folder ($CLIVE_ROOT)")
    ap.add_argument("--weights", type=Path, required=True, help="SHAMISA encoder (.safetensors)")
    ap.add_argument("--out", type=Path, default=Path("runs/lml-study"))
    ap.add_argument("--json", type=Path, help="write the summary here")
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-crops", type=int, default=4)
    ap.add_argument("--lml-weight", type=float, default=0.1)
    ap.add_argument("--eval-mode", default="five_two_scale", help="test views: five_two_scale | center")
    ap.add_argument("--seed", type=int, default=0, help="fine-tuning seed (the same for every run)")
    ap.add_argument("--n-splits", type=int, default=10)
    ap.add_argument("--splits", default=None, help="comma-separated subset of splits (default: all)")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--max-minutes", type=float, default=None, help="stop starting new runs after this")
    ap.add_argument("--summary-only", action="store_true", help="only summarise the runs already done")
    args = ap.parse_args(argv)
    if not args.summary_only and not args.weights.is_file():
        raise SystemExit(f"error: no encoder file at {args.weights}")
    splits = [int(s) for s in args.splits.split(",")] if args.splits else list(range(args.n_splits))
    arms = [a for a in args.arms.split(",") if a]
    for a in arms:
        if a not in ARMS:
            raise SystemExit(f"error: unknown arm {a!r} (choose from {', '.join(ARMS)})")
    start = time.monotonic()
    if not args.summary_only:
        # Split by split, every arm in turn: an interrupted study still has paired splits.
        for s in splits:
            for arm in arms:
                run = args.out / arm / f"split-{s}"
                if read_result(run / "result.json") is not None:
                    continue
                if args.max_minutes is not None and (time.monotonic() - start) / 60 > args.max_minutes:
                    print("time budget spent; run again to resume", file=sys.stderr)
                    break
                cmd = [sys.executable, "-m", "shamisa", "finetune", "clive", "--root", str(args.root),
                       "--split", str(s), "--n-splits", str(args.n_splits), "--max-steps", str(args.max_steps),
                       "--batch-size", str(args.batch_size), "--n-crops", str(args.n_crops), "--eval-mode", args.eval_mode,
                       "--seed", str(args.seed), "--out", str(run), "--quiet",
                       *arm_arguments(arm, args.weights, args.lml_weight)]
                t0 = time.monotonic()
                proc = subprocess.run(cmd, stdout=subprocess.DEVNULL)
                if proc.returncode != 0:
                    print(f"{arm} split {s}: failed (exit {proc.returncode}); continuing", file=sys.stderr)
                    continue
                r = read_result(run / "result.json") or {}
                print(f"{arm} split {s}: test SRCC {r.get('test_srcc', float('nan')):.4f} "
                      f"({(time.monotonic() - t0) / 60:.1f} min)", file=sys.stderr, flush=True)
    summary = summarise(args.out, splits, args)
    print_summary(summary)
    if args.json:
        atomic_write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
