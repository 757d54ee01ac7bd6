"""Throughput of the compositional distortion engine.

Measures distorted 224-px crops per second for the paper's item (3 refs x 4 compositions x 5 levels x
2 scales = 120 crops, up to 7 distortions each, prefix shared across levels), on the CPU with a fixed
number of threads (default 2) and on CUDA when available, plus a per-type cost table: milliseconds to
apply one type to a 120-crop batch (values as in a structured batch: one value for the prefix/suffix
slots, 5 level values for the varying slot -> here 5 distinct values over the batch).

Writes ``bench/results/distortion_engine.json`` and prints a markdown table. CPU time (``time.process_time``)
is recorded next to wall time, so that runs on a shared, loaded machine stay comparable. ``--workers N`` times
the items in N spawned processes with one intra-op thread each, as PyTorch data workers run them: each
process makes one warm-up item, then all start their timed items together (a barrier) and the aggregate
crops / s over the whole span (earliest start to latest end) is the conservative multi-core figure; the sum
of the processes' own rates (``crops_per_s_sum_of_workers``), what workers that run continuously deliver, is
recorded next to it.

``--engine reference --reference-repo PATH`` times the official SHAMISA engine instead (a checkout of
github.com/Mahdi-Naseri/SHAMISA, commit 419bec3 or later, with ``utils/dither_extension/dither.so`` built; it
needs torchvision, so run it from an environment where torchvision imports, with this package installed next to
it): its pretraining dataset's item with the settings of its ``configs/default.yaml`` (3 refs x 4 compositions
x 5 levels x 2 scales, up to 7 distortions, severities |N(0, 2.5)|, the prefix reused across levels), on the
same pristine images and under the same protocol (warm-up item, start barrier, one thread per worker). Its item
also opens, converts and crops its 3 reference images and normalises its crops; the load share is measured
separately and recorded (``reference_load_s_per_item``).

Examples::

    python bench/distortion_engine.py --images ../shared/data/pristine/kodak24 --items 8 --threads 1
    python bench/distortion_engine.py --images ../shared/data/pristine/kodak24 --items 6 --workers 2 --no-types
    python bench/distortion_engine.py --images ../shared/data/pristine/kodak24 --items 4 --workers 2 --no-types \
        --engine reference --reference-repo ../SHAMISA
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent


def _image_paths(folder: Path, n: int) -> list[Path]:
    """The first ``n`` images of ``folder`` in name order; SystemExit when there are none."""
    from shamisa.images import is_image_path

    paths = sorted(p for p in folder.iterdir() if is_image_path(p))[:n]
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return paths


def _load_refs(folder: Path, n: int) -> list[torch.Tensor]:
    from shamisa.images import load_image

    return [load_image(p) for p in _image_paths(folder, n)]


def _item(refs: list[torch.Tensor], g: torch.Generator, device: torch.device, n_refs: int = 3) -> tuple:
    from shamisa.distortions import sample_compositions, sample_views

    idx = torch.randint(0, len(refs), (n_refs,), generator=g).tolist()
    views = [sample_views(refs[i], 224, g) for i in idx]
    full = torch.stack([v[0] for v in views]).to(device)
    half = torch.stack([v[1] for v in views]).to(device)
    comps = sample_compositions(4, generator=g)
    return full, half, comps


def bench_items(
    refs: list[torch.Tensor],
    device: torch.device,
    n_items: int,
    seed: int,
    before_timing: Callable[[], object] | None = None,
    jpeg2000_impl: str = "openjpeg",
) -> dict:
    """One warm-up item, then ``n_items`` timed ones; ``before_timing`` is called between them."""
    from shamisa.distortions import build_structured_batch

    g = torch.Generator().manual_seed(seed)

    def one(_: int) -> tuple[float, float, float]:
        full, half, comps = _item(refs, g, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        sb = build_structured_batch(full, half, comps, g, jpeg2000_impl=jpeg2000_impl)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert sb.dist.shape[:3] == (6, 4, 5)
        return dt, dc, float(comps.n_dist.float().mean())

    return {"device": str(device), **_timed_items(n_items, one, before_timing)}


def _timed_items(
    n_items: int, one: Callable[[int], tuple[float, float, float]], before_timing: Callable[[], object] | None
) -> dict:
    """``one(0)`` as a warm-up, ``before_timing()``, then ``one(1..n_items)`` timed; ``one`` returns the wall and
    CPU seconds of its item and the item's mean chain length."""
    times, cpu_times, n_dist = [], [], []
    t_start, faults0 = 0.0, 0
    for i in range(n_items + 1):
        if i == 1:
            if before_timing is not None:
                before_timing()
            t_start = time.time()
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        dt, dc, chain = one(i)
        if i > 0:  # the first item warms up
            times.append(dt)
            cpu_times.append(dc)
            n_dist.append(chain)
    t_end = time.time()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    crops = 120
    return {
        "t_start": t_start,
        "t_end": t_end,
        "items": n_items,
        "s_per_item_median": statistics.median(times),
        "s_per_item_mean": statistics.fmean(times),
        "crops_per_s_median": crops / statistics.median(times),
        "crops_per_s_mean": crops / statistics.fmean(times),
        "cpu_s_per_item_mean": statistics.fmean(cpu_times),
        "crops_per_cpu_s": crops / statistics.fmean(cpu_times),
        "mean_chain_length": statistics.fmean(n_dist),
        "minor_page_faults_per_item": faults / n_items,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


#: The official engine's pretraining-data settings (its configs/default.yaml, ``training.data``).
REFERENCE_SETTINGS = {
    "patch_size": 224,
    "max_distortions": 7,
    "num_levels": 5,
    "n_refs": 3,
    "n_dist_comps": 4,
    "n_dist_comp_levels": 5,
    "extended_int_distortions": True,
    "severity_discrete": False,
    "severity_dist": "gaussian",
    "fixed_order": False,
    "cache_mode": "na",
    "no_cache_opt_variant": "variant_b",
}


def _reference_dataset(repo: Path, folder: Path, n: int) -> Any:
    """The official engine's structured pretraining dataset over the first ``n`` images of ``folder``."""
    if not (repo / "data" / "dataset_kadis700_structured.py").is_file():
        raise SystemExit(
            f"{repo} is not a checkout of the official SHAMISA repository (no data/dataset_kadis700_structured.py)"
        )
    if not (repo / "utils" / "dither_extension" / "dither.so").is_file():
        raise SystemExit(
            f"build the official engine's dither extension first: "
            f"g++ -O3 -fPIC -shared -fopenmp {repo}/utils/dither_extension/dither.cpp -o {repo}/utils/dither_extension/dither.so"
        )
    sys.path.insert(0, str(repo))
    try:
        from data.dataset_kadis700_structured import KADIS700StructuredDataset
    except ImportError as e:
        raise SystemExit(
            f"the official engine does not import here ({e}); it needs torchvision, kornia, pandas, dotmap, pyyaml"
        )
    ds = KADIS700StructuredDataset(root=str(folder), **REFERENCE_SETTINGS)
    ds.ref_images = _image_paths(folder, n)
    return ds


def bench_reference_items(
    repo: Path, folder: Path, n_items: int, seed: int, before_timing: Callable[[], object] | None = None
) -> dict:
    """The official engine: one warm-up item, then ``n_items`` timed ``dataset[i]`` calls (as its data workers)."""
    import random

    import numpy as np

    ds = _reference_dataset(repo, folder, 24)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

    def one(i: int) -> tuple[float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        item = ds[(seed + i) % len(ds.ref_images)]
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        assert item["dist_imgs"].shape[:3] == (6, 4, 5)
        return dt, dc, float(item["num_distortions"].float().mean())

    timed = _timed_items(n_items, one, before_timing)
    # what the item spends on its 3 reference images (open, convert, the two crops, to float), not distortion
    from PIL import Image
    from utils.utils_data import resize_crop

    c0 = time.process_time()
    for i in range(3 * 8):
        with Image.open(ds.ref_images[i % len(ds.ref_images)]) as im:
            im = im.convert("RGB")
            ds._to_float_tensor(resize_crop(im, 224))
            ds._to_float_tensor(resize_crop(im, 224, downscale_factor=2))
    load = (time.process_time() - c0) / 8
    return {"device": "cpu", "engine": "reference", **timed, "reference_load_s_per_item": load}


def bench_types(
    refs: list[torch.Tensor], device: torch.device, repeats: int, seed: int, jpeg2000_impl: str = "openjpeg"
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
        apply_distortion(x[:6], name, v[:6], g, jpeg2000_impl=jpeg2000_impl)
        ts, cs = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            apply_distortion(x, name, v, g, jpeg2000_impl=jpeg2000_impl)
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        out[name] = 1000 * min(ts)
        cpu_out[name] = 1000 * min(cs)
    return out, cpu_out


#: Longest wait at the start barrier (s): a worker that never arrives fails the run instead of hanging it.
BARRIER_TIMEOUT_S = 600.0


def _worker_items(args: tuple[str, str, int, int, str | None, str], barrier: Any, results: Any) -> None:
    """One data-worker process: one intra-op thread, one warm-up item, the start barrier, ``n`` timed items
    (of the official engine when ``reference_repo`` is given)."""
    folder, device, n, seed, reference_repo, jpeg2000_impl = args
    try:
        torch.set_num_threads(1)

        def start() -> None:
            barrier.wait(BARRIER_TIMEOUT_S)

        if reference_repo is not None:
            r = bench_reference_items(Path(reference_repo), Path(folder), n, seed, start)
        else:
            r = bench_items(_load_refs(Path(folder), 24), torch.device(device), n, seed, start, jpeg2000_impl)
        r["pid"] = os.getpid()
        results.put(r)
    except BaseException as e:  # noqa: BLE001 -- any failure (SystemExit too) is reported, not left hanging
        barrier.abort()
        results.put({"error": f"{type(e).__name__}: {e}"})


def _opt_str(p: Path | None) -> str | None:
    return None if p is None else str(p)


def bench_workers(
    folder: Path,
    device: str,
    n_items: int,
    n_workers: int,
    seed: int,
    reference_repo: Path | None = None,
    jpeg2000_impl: str = "openjpeg",
) -> dict:
    """Items generated by ``n_workers`` processes (one thread each, as PyTorch data workers), ``n_items`` each,
    their timed items started together.

    Throughput = all timed crops / the span from the earliest timed start to the latest timed end; also the sum
    of the workers' own rates (crops / their own timed span).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker_items,
            args=(
                (str(folder), device, n_items, seed + 1000 * k, _opt_str(reference_repo), jpeg2000_impl),
                barrier,
                results,
            ),
        )
        for k in range(n_workers)
    ]
    for proc in procs:
        proc.start()
    rs = [results.get(timeout=BARRIER_TIMEOUT_S + 3600) for _ in procs]
    for proc in procs:
        proc.join()
    errors = [r["error"] for r in rs if "error" in r]
    if errors:
        raise SystemExit(f"a worker failed: {errors[0]}")
    rs.sort(key=lambda r: r["t_start"])
    span = max(r["t_end"] for r in rs) - min(r["t_start"] for r in rs)
    crops = 120 * n_items * n_workers
    cpu = sum(r["cpu_s_per_item_mean"] * n_items for r in rs)
    return {
        "device": device,
        "workers": n_workers,
        "items_per_worker": n_items,
        "span_s": span,
        "start_skew_s": max(r["t_start"] for r in rs) - min(r["t_start"] for r in rs),
        "crops_per_s": crops / span,
        "crops_per_s_sum_of_workers": sum(120 * n_items / (r["t_end"] - r["t_start"]) for r in rs),
        "cpu_s_per_item_mean": cpu / (n_items * n_workers),
        "crops_per_cpu_s": crops / cpu,
        "s_per_item_median": statistics.median(r["s_per_item_median"] for r in rs),
        "crops_per_s_median": statistics.fmean(r["crops_per_s_median"] for r in rs),
        "crops_per_s_mean": statistics.fmean(r["crops_per_s_mean"] for r in rs),
        "mean_chain_length": statistics.fmean(r["mean_chain_length"] for r in rs),
        **(
            {"reference_load_s_per_item": statistics.fmean(r["reference_load_s_per_item"] for r in rs)}
            if reference_repo is not None
            else {}
        ),
        "per_worker": rs,
    }


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
        "--no-keep-heap",
        action="store_true",
        help="set SHAMISA_KEEP_HEAP=0: leave glibc's allocator thresholds alone (the engine raises them by default)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="time the items in this many spawned processes with one thread each (as data workers); 0 = in-process",
    )
    ap.add_argument(
        "--jpeg2000",
        choices=("openjpeg", "approx"),
        default="openjpeg",
        help="jpeg2000 implementation: the real codec, or the labelled wavelet approximation",
    )
    ap.add_argument(
        "--engine",
        choices=("shamisa", "reference"),
        default="shamisa",
        help="this package's engine, or the official SHAMISA engine from --reference-repo (CPU, --workers >= 1)",
    )
    ap.add_argument(
        "--reference-repo", type=Path, help="checkout of the official SHAMISA repository (--engine reference)"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distortion_engine.json")
    args = ap.parse_args(argv)
    reference = args.engine == "reference"
    if reference and (args.reference_repo is None or args.workers < 1):
        ap.error("--engine reference needs --reference-repo and --workers >= 1")
    if reference:
        args.no_types, args.devices = True, "cpu"
        # its dither extension uses OpenMP: one thread per worker, as torch
        os.environ["OMP_NUM_THREADS"] = "1"

    if args.no_keep_heap:
        os.environ["SHAMISA_KEEP_HEAP"] = "0"  # inherited by spawned workers
    torch.set_num_threads(args.threads)
    _image_paths(args.images, 24)  # no images: a clear error before any worker starts
    # the images as tensors in this process only for in-process items or the per-type table (workers load their own)
    refs = _load_refs(args.images, 24) if args.workers == 0 or not args.no_types else []
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "loadavg_before": os.getloadavg(),
        },
        "keep_heap": not args.no_keep_heap,
        "engine": args.engine,
        "jpeg2000": "openjpeg (PIL)" if reference else args.jpeg2000,
        "workers": args.workers,
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
        if args.workers > 0:
            result["items"][d] = bench_workers(
                args.images,
                d,
                args.items,
                args.workers,
                args.seed,
                args.reference_repo if reference else None,
                args.jpeg2000,
            )
        else:
            result["items"][d] = bench_items(refs, dev, args.items, args.seed, jpeg2000_impl=args.jpeg2000)
        if not args.no_types:
            print(f"[{d}] timing the 26 types ...", file=sys.stderr, flush=True)
            wall, cpu = bench_types(refs, dev, args.repeats, args.seed, args.jpeg2000)
            result["types_ms_per_120"][d] = wall
            result["types_cpu_ms_per_120"][d] = cpu
    result["machine"]["loadavg_after"] = os.getloadavg()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    from shamisa.fileio import atomic_write_json

    atomic_write_json(args.out, result)

    lines = [
        (
            "| device | workers | s / item (median) | crops / s (median) | crops / s (all workers) |"
            " crops / s (sum of workers) | CPU s / item | crops / CPU-s | mean chain length |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d, r in result["items"].items():
        lines.append(
            f"| {d} | {r.get('workers', 0)} | {r['s_per_item_median']:.3f} | {r['crops_per_s_median']:.0f} |"
            f" {r.get('crops_per_s', r['crops_per_s_median']):.0f} |"
            f" {r.get('crops_per_s_sum_of_workers', r['crops_per_s_median']):.0f} |"
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
