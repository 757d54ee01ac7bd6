"""Throughput of the compositional distortion engine.

Measures distorted 224-px crops per second for the paper's item (3 refs x 4 compositions x 5 levels x
2 scales = 120 crops, up to 7 distortions each, prefix shared across levels), on the CPU with a fixed
number of threads (default 2) and on CUDA when available, plus a per-type cost table: milliseconds to
apply one type to a 120-crop batch (values as in a structured batch: one value for the prefix/suffix
slots, 5 level values for the varying slot -> here 5 distinct values over the batch).

Writes ``bench/results/distortion_engine.json`` and prints a markdown table.

Example::

    python bench/distortion_engine.py --images /work/shared/data/pristine/kodak24 --items 10
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _load_refs(folder: Path, n: int) -> list[torch.Tensor]:
    from shamisa.images import is_image_path, load_image

    paths = sorted(p for p in folder.iterdir() if is_image_path(p))[:n]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return [load_image(p) for p in paths]


def _item(refs: list[torch.Tensor], g: torch.Generator, device: torch.device, n_refs: int = 3) -> tuple:
    from shamisa.distortions import sample_compositions, sample_views

    idx = torch.randint(0, len(refs), (n_refs,), generator=g).tolist()
    views = [sample_views(refs[i], 224, g) for i in idx]
    full = torch.stack([v[0] for v in views]).to(device)
    half = torch.stack([v[1] for v in views]).to(device)
    comps = sample_compositions(4, generator=g)
    return full, half, comps


def bench_items(refs: list[torch.Tensor], device: torch.device, n_items: int, seed: int) -> dict:
    from shamisa.distortions import build_structured_batch

    g = torch.Generator().manual_seed(seed)
    times, cpu_times, n_dist = [], [], []
    for i in range(n_items + 1):
        full, half, comps = _item(refs, g, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        sb = build_structured_batch(full, half, comps, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i > 0:  # the first item warms up
            times.append(dt)
            cpu_times.append(dc)
            n_dist.append(float(comps.n_dist.float().mean()))
        assert sb.dist.shape[:3] == (6, 4, 5)
    crops = 120
    return {
        "device": str(device),
        "items": n_items,
        "s_per_item_median": statistics.median(times),
        "s_per_item_mean": statistics.fmean(times),
        "crops_per_s_median": crops / statistics.median(times),
        "crops_per_s_mean": crops / statistics.fmean(times),
        "cpu_s_per_item_mean": statistics.fmean(cpu_times),
        "crops_per_cpu_s": crops / statistics.fmean(cpu_times),
        "mean_chain_length": statistics.fmean(n_dist),
    }


def bench_types(
    refs: list[torch.Tensor], device: torch.device, repeats: int, seed: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Per type: (best wall ms, best CPU ms) to distort a 120-crop batch."""
    from shamisa.distortions import DISTORTION_NAMES, apply_distortion, severity_to_value

    g = torch.Generator().manual_seed(seed)
    crops = []
    for _ in range(20):
        full, half, _ = _item(refs, g, torch.device("cpu"))
        crops += [full, half]
    x = torch.cat(crops)[:120].contiguous().to(device)
    out: dict[str, float] = {}
    cpu_out: dict[str, float] = {}
    for name in DISTORTION_NAMES:
        s = (torch.rand(5, generator=g, dtype=torch.float64) * 4).repeat_interleave(24)
        v, _ = severity_to_value(name, s)
        apply_distortion(x[:6], name, v[:6], g)
        ts, cs = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            apply_distortion(x, name, v, g)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        out[name] = 1000 * min(ts)
        cpu_out[name] = 1000 * min(cs)
    return out, cpu_out


def _keep_heap() -> None:
    """Raise glibc's mmap and trim thresholds: large tensors then reuse heap pages instead of fresh mmaps
    (each fresh page costs a page fault on first touch). Process-wide; for benchmarks and data workers."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 512 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of pristine images (>= 224 px)")
    ap.add_argument("--items", type=int, default=10, help="items to time per device")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per type (best of)")
    ap.add_argument("--no-types", action="store_true", help="skip the per-type table")
    ap.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when unavailable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--keep-heap",
        action="store_true",
        help="glibc only: mallopt so that freed tensor memory stays in the heap (no page faults on reuse)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distortion_engine.json")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.keep_heap:
        _keep_heap()
    refs = _load_refs(args.images, 24)
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_before": os.getloadavg(),
        },
        "keep_heap": args.keep_heap,
        "items": {},
        "types_ms_per_120": {},
        "types_cpu_ms_per_120": {},
    }
    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    for d in devices:
        if d == "cuda" and not torch.cuda.is_available():
            continue
        dev = torch.device(d)
        if d == "cuda":
            result["machine"]["gpu"] = torch.cuda.get_device_name(0)
        print(f"[{d}] timing {args.items} items ...", file=sys.stderr, flush=True)
        result["items"][d] = bench_items(refs, dev, args.items, args.seed)
        if not args.no_types:
            print(f"[{d}] timing the 26 types ...", file=sys.stderr, flush=True)
            wall, cpu = bench_types(refs, dev, args.repeats, args.seed)
            result["types_ms_per_120"][d] = wall
            result["types_cpu_ms_per_120"][d] = cpu
    result["machine"]["loadavg_after"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    from shamisa.fileio import atomic_write_json

    atomic_write_json(args.out, result)

    lines = [
        "| device | s / item (median) | crops / s (median) | crops / s (mean) | CPU s / item | crops / CPU-s |"
        " mean chain length |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, r in result["items"].items():
        lines.append(
            f"| {d} | {r['s_per_item_median']:.3f} | {r['crops_per_s_median']:.0f} | {r['crops_per_s_mean']:.0f} |"
            f" {r['cpu_s_per_item_mean']:.2f} | {r['crops_per_cpu_s']:.0f} | {r['mean_chain_length']:.2f} |"
        )
    if result["types_ms_per_120"]:
        devs = list(result["types_ms_per_120"])
        heads = [f"ms / 120 crops ({d})" for d in devs] + [f"CPU ms / 120 crops ({d})" for d in devs]
        lines += ["", "| type | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
        from shamisa.distortions import DISTORTION_NAMES

        for name in DISTORTION_NAMES:
            cells = [f"{result['types_ms_per_120'][d][name]:.1f}" for d in devs]
            cells += [f"{result['types_cpu_ms_per_120'][d][name]:.1f}" for d in devs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
