"""The linear-probe protocol on full CLIVE (1,162 images, 10 random 70/10/20 splits, seed 27):
frozen ImageNet EfficientNet-Lite0 + ridge, and the BRISQUE floor (36 features + RBF SVR).

Runs ``shamisa evaluate`` once per method (the feature cache makes re-runs fast), copies each
``results.json`` to ``bench/results/clive_<method>.json`` and writes ``bench/results/clive_probe.{json,md}``
with median / mean / std SRCC and PLCC.

Example::

    python bench/clive_probe.py --root $CLIVE_ROOT --cache ~/.cache/shamisa/features
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

RUNS = {
    "probe_lite0": ["--method", "probe", "--encoder", "efficientnet_lite0"],
    "probe_lite0_bf16": ["--method", "probe", "--encoder", "efficientnet_lite0", "--amp"],
    "brisque": ["--method", "brisque"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="CLIVE folder (ChallengeDB_release)")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache folder")
    ap.add_argument("--runs", default="probe_lite0,brisque", help=f"comma list of {', '.join(RUNS)}")
    ap.add_argument("--out", type=Path, default=Path("runs") / "bench-clive")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    summary = []
    for name in [r.strip() for r in args.runs.split(",") if r.strip()]:
        out = args.out / name
        cmd = ["shamisa", "evaluate", "clive", "--root", str(args.root), *RUNS[name], "--n-splits", "10",
               "--alpha-grid", "protocol", "--workers", str(args.workers), "--out", str(out)]
        if args.cache is not None:
            cmd += ["--cache", str(args.cache)]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        data = json.loads((out / "results.json").read_text())
        shutil.copyfile(out / "results.json", HERE / "results" / f"clive_{name}.json")
        s = data["summary"]
        sel = data["selection"]
        summary.append({
            "run": name,
            "command": " ".join(cmd),
            "n_images": data["n_images"],
            "n_splits": len(data["per_split"]),
            "hyperparameters": {k: sel[k] for k in ("alpha", "C", "gamma") if k in sel},
            **{f"{m}_{stat}": s[m][stat] for m in ("srcc", "plcc", "krcc", "rmse") for stat in ("median", "mean", "std")},
            "timing_s": data["timing_s"],
            "wall_s": round(wall, 1),
        })

    from shamisa.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(HERE / "results" / "clive_probe.json", {"benchmark": "clive_probe", "runs": summary,
                                                               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    lines = [
        "# CLIVE linear probe (1,162 images, 10 random 70/10/20 splits, seed 27; median over splits)",
        "",
        "Machine: 2-core CPU (shared with other jobs). Commands:",
        "",
        *(f"- `{r['command']}`" for r in summary),
        "",
        "| run | hyper-parameters | SRCC median | SRCC mean ± std | PLCC median | PLCC mean ± std | KRCC median | RMSE median |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['run']} | {', '.join(f'{k}={v:.3g}' for k, v in r['hyperparameters'].items())} | {r['srcc_median']:.4f} | "
            f"{r['srcc_mean']:.4f} ± {r['srcc_std']:.4f} | {r['plcc_median']:.4f} | {r['plcc_mean']:.4f} ± {r['plcc_std']:.4f} | "
            f"{r['krcc_median']:.4f} | {r['rmse_median']:.2f} |"
            for r in summary
        ),
    ]
    text = "\n".join(lines) + "\n"
    atomic_write_text(HERE / "results" / "clive_probe.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
