"""Paired comparison of two `shamisa evaluate` results on the same splits.

Both runs must use the same dataset, split seed and number of splits (the protocol's 10 random 70/10/20
splits, seed 27), so split ``s`` holds the same test images in both. The script prints, for SRCC and PLCC,
the medians of both runs, the per-split differences (B - A), their mean and median, how many splits
improved, and a two-sided exact sign-test p-value; ``--json OUT`` writes the same numbers.

Usage::

    python bench/compare_probes.py runs/eval-imagenet/results.json runs/eval-pretrained/results.json \
        --names imagenet,pretrained
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from math import comb
from pathlib import Path

from shamisa.fileio import atomic_write_json


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    p = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * p)


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: cannot read {path}: {e}") from None
    if data.get("format") != "shamisa-eval":
        raise SystemExit(f"error: {path} is not a shamisa evaluate results.json")
    return data


def compare(a: dict, b: dict) -> dict:
    for key in ("dataset", "n_images"):
        if a.get(key) != b.get(key):
            raise SystemExit(f"error: the runs differ in {key}: {a.get(key)} vs {b.get(key)}")
    ca, cb = a["config"], b["config"]
    for key in ("n_splits", "seed", "ratios"):
        if ca.get(key) != cb.get(key):
            raise SystemExit(f"error: the runs use different splits ({key}: {ca.get(key)} vs {cb.get(key)})")
    sa = {r["split"]: r for r in a["per_split"]}
    sb = {r["split"]: r for r in b["per_split"]}
    common = sorted(set(sa) & set(sb))
    out: dict = {"splits": common}
    for metric in ("srcc", "plcc"):
        diffs = [sb[s][metric] - sa[s][metric] for s in common]
        wins = sum(d > 0 for d in diffs)
        losses = sum(d < 0 for d in diffs)
        out[metric] = {
            "median_a": statistics.median(sa[s][metric] for s in common),
            "median_b": statistics.median(sb[s][metric] for s in common),
            "diffs": diffs,
            "mean_diff": statistics.fmean(diffs),
            "median_diff": statistics.median(diffs),
            "improved": wins,
            "worse": losses,
            "sign_test_p": sign_test_p(wins, losses),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", type=Path, help="results.json of the baseline (A)")
    ap.add_argument("b", type=Path, help="results.json of the candidate (B)")
    ap.add_argument("--names", default="A,B", help="two comma-separated labels")
    ap.add_argument("--json", type=Path, help="also write the comparison here")
    args = ap.parse_args(argv)
    name_a, name_b = (args.names.split(",") + ["B"])[:2]
    res = compare(load(args.a), load(args.b))
    res["names"] = [name_a, name_b]
    print(f"{len(res['splits'])} paired splits, {name_b} - {name_a}:")
    for metric in ("srcc", "plcc"):
        m = res[metric]
        print(f"  {metric.upper()}: median {m['median_a']:.4f} -> {m['median_b']:.4f}; per-split difference mean "
              f"{m['mean_diff']:+.4f}, median {m['median_diff']:+.4f}; better on {m['improved']}, worse on "
              f"{m['worse']} of {len(res['splits'])} (sign test p = {m['sign_test_p']:.3f})")
    if args.json:
        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
