"""What the content + quality pair costs when scoring: one EfficientNet-Lite0 against the pair with its
shared stages computed once and against the pair with nothing shared, each also read out at several levels
(``multilevel``, the default model's readout), on the scorer's batch of 10 crops of 224 px, fp32 and
bfloat16, alternating the models in every round (median over rounds).

Usage::

    python bench/paired_encoder_cost.py --rounds 7 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from shamisa.fileio import atomic_write_json
from shamisa.models import PairedEncoder, build_encoder, with_readout
from shamisa.models.encoder import stage_modules

RESULTS = Path(__file__).parent / "results"


def _quality_copy(content, shared: int):
    """An encoder equal to ``content`` in its first ``shared`` stages and different after them."""
    q = build_encoder(content.name)
    q.load_state_dict(content.state_dict())
    kept = {id(p) for m in stage_modules(q, shared) for p in m.parameters()}
    with torch.no_grad():
        for p in q.backbone.parameters():
            if id(p) not in kept:
                p.mul_(1.01)
    return q.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=10, help="crops per forward (the scorer's 10 per image)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "paired_encoder_cost.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    content = build_encoder("efficientnet_lite0", pretrained=True).eval()
    quality = _quality_copy(content, 3)
    models = {
        "single": content,
        "pair_shared3": PairedEncoder(content, quality, shared_stages=3),
        "pair_unshared": PairedEncoder(content, quality),
        "single_multilevel": with_readout(content, "multilevel"),
        "pair_multilevel": with_readout(PairedEncoder(content, quality), "multilevel"),  # the default model
    }
    x = torch.rand(args.batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    times: dict[str, dict[str, list[float]]] = {p: {n: [] for n in models} for p in ("fp32", "bf16")}
    with torch.inference_mode():
        for precision in times:
            for _ in range(args.rounds + 1):  # the first round warms up and is dropped
                for name, m in models.items():
                    t0 = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        m(x)
                    times[precision][name].append(time.perf_counter() - t0)
    result = {"batch": args.batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "median_seconds": {}, "relative_to_single": {}}
    for precision, per in times.items():
        med = {n: statistics.median(v[1:]) for n, v in per.items()}
        result["median_seconds"][precision] = {n: round(v, 4) for n, v in med.items()}
        result["relative_to_single"][precision] = {n: round(v / med["single"], 3) for n, v in med.items()}
    atomic_write_json(args.out, result)
    for precision in times:
        print(precision, result["median_seconds"][precision], result["relative_to_single"][precision])


if __name__ == "__main__":
    main()
