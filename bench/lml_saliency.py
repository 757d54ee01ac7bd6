"""LML-IQA anchor choice: spectral-residual saliency vs. alternatives, same split and budget.

Fine-tunes EfficientNet-Lite0 (ImageNet start) on one split of a rated dataset once per saliency mode
(``spectral``, ``random``, ``teacher``), each with the same settings and time budget, and tabulates
test SRCC / PLCC. A mode whose run folder already holds a ``result.json`` with the same settings is not
trained again, so the script can be stopped and restarted.

Writes ``bench/results/lml_saliency.json`` and ``.md`` and prints the markdown table.

    python bench/lml_saliency.py --root $CLIVE_ROOT --modes spectral,random \\
        --max-minutes 15 --crop 128 --runs runs/lml
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from pathlib import Path

from shamisa.fileio import atomic_write_json, atomic_write_text
from shamisa.finetuning.lml import FinetuneConfig, finetune

RESULTS = Path(__file__).parent / "results"
# settings that must match for a stored run to be reused
KEYS = ("dataset", "split", "crop", "batch_size", "n_crops", "precision", "seed", "encoder", "epochs")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--dataset", default="clive")
    ap.add_argument("--modes", default="spectral,random")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-crops", type=int, default=4)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/lml")
    ap.add_argument("--name", default="lml_saliency")
    args = ap.parse_args(argv)

    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        out = Path(args.runs) / f"{args.dataset}-s{args.split}-{mode}"
        cfg = FinetuneConfig(
            dataset=args.dataset, root=args.root, split=args.split, epochs=args.epochs, crop=args.crop,
            batch_size=args.batch_size, n_crops=args.n_crops, saliency=mode, precision=args.precision,
            seed=args.seed, max_minutes=args.max_minutes, max_steps=args.max_steps, out=str(out),
        )
        stored = out / "result.json"
        res = None
        if stored.is_file():
            old = json.loads(stored.read_text())
            if all(old["config"].get(k) == cfg.to_dict()[k] for k in KEYS):
                res = old
                print(f"{mode}: reusing {stored}", file=sys.stderr)
        if res is None:
            res = finetune(cfg).to_dict()
        c = res["config"]
        budget = " + ".join(x for x in (f"{c['max_minutes']:g} min" if c.get("max_minutes") else "",
                                         f"{c['max_steps']} steps" if c.get("max_steps") else "") if x) or "-"
        rows.append({"saliency": mode, "run": str(out), "budget": budget, **{k: res[k] for k in (
            "test_srcc", "test_plcc", "best_val_srcc", "best_epoch", "steps", "epochs_done", "stopped_by",
            "train_seconds", "eval_seconds")}})

    command = "python bench/lml_saliency.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    payload = {"name": args.name, "command": command, "machine": f"{platform.machine()} CPU, 2 cores (shared)",
               "settings": {k: v for k, v in vars(args).items()}, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"{args.name}.json", payload)
    table = ["| anchor (saliency) | test SRCC | test PLCC | best val SRCC | budget | steps | epochs | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['saliency']} | {r['test_srcc']:.3f} | {r['test_plcc']:.3f} | {r['best_val_srcc']:.3f} | "
                     f"{r['budget']} | {r['steps']} | {r['epochs_done']:.2f} | {r['train_seconds'] / 60:.1f} min |")
    md = "\n".join(table) + "\n"
    atomic_write_text(
        RESULTS / f"{args.name}.md",
        f"# LML-IQA anchor choice ({args.dataset}, split {args.split})\n\nCommand: `{command}`\n\n"
        f"Machine: 2-core CPU shared with other jobs (wall-time budgets are noisy). Encoder EfficientNet-Lite0 "
        f"from ImageNet, crop {args.crop}, {args.n_crops} crops/image, batch {args.batch_size} images, "
        f"{args.precision}; budget per mode in the table (a step budget where the machine's load changed between "
        f"runs); test = 5 crops x 2 scales.\n\n{md}",
    )
    print(md, end="")


if __name__ == "__main__":
    main()
