"""How close, and how fast, the labelled JPEG2000 approximation is next to the real codec.

For random crops of the images in ``--images`` (Kodak24 by default in the docs: held out from the
calibration, which used BSDS500 crops) at each crop side and each of the five ``jpeg2000`` levels, it
reports the mean PSNR of the real codec (OpenJPEG) and of the approximation against the pristine crop,
their mean difference, the correlation of the two PSNRs across crops, the PSNR of the approximation
against the real codec's output, and the CPU milliseconds per crop of each (one thread, batched call).

Usage::

    python bench/jpeg2000_approx.py --images ../shared/data/pristine/kodak24 --sides 128,224
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def crops_of(folder: Path, side: int, per_image: int, seed: int) -> torch.Tensor:
    from shamisa.images import load_image

    g = torch.Generator().manual_seed(seed)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
    out = []
    for p in files:
        img = load_image(p)
        h, w = img.shape[1:]
        for _ in range(per_image):
            i = int(torch.randint(0, h - side + 1, (1,), generator=g))
            j = int(torch.randint(0, w - side + 1, (1,), generator=g))
            out.append(img[:, i : i + side, j : j + side])
    return torch.stack(out)


def psnr(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (10 * torch.log10(1 / ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12))).numpy()


def timed(fn, *args):  # -> (result, CPU seconds)
    t = time.process_time()
    y = fn(*args)
    return y, time.process_time() - t


def main(argv: list[str] | None = None) -> int:
    from shamisa.distortions.codecs import jpeg2000_pillow
    from shamisa.distortions.levels import LEVELS
    from shamisa.distortions.wavelet_codec import jpeg2000_approx
    from shamisa.fileio import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="folder of pristine images")
    ap.add_argument("--sides", default="128,224", help="comma list of crop sides")
    ap.add_argument("--per-image", type=int, default=2, help="random crops per image")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "jpeg2000_approx.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": 1, "loadavg_before": os.getloadavg()},
        "rows": [],
    }
    header = ("| side | ratio | PSNR real | PSNR approx | mean diff (dB) | corr | PSNR approx vs real |"
              " real ms/crop | approx ms/crop |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for side in (int(s) for s in args.sides.split(",")):
        x = crops_of(args.images, side, args.per_image, args.seed)
        jpeg2000_approx(x[:2], torch.tensor([16.0, 16.0]))  # warm-up (sub-band norms)
        for r in LEVELS["jpeg2000"]:
            rr = torch.full((len(x),), float(r))
            real, t_real = timed(jpeg2000_pillow, x, rr)
            approx, t_approx = timed(jpeg2000_approx, x, rr)
            p_real, p_approx = psnr(real, x), psnr(approx, x)
            row = {
                "side": side, "ratio": r, "n": len(x),
                "psnr_real": float(p_real.mean()), "psnr_approx": float(p_approx.mean()),
                "mean_diff_db": float((p_approx - p_real).mean()),
                "mean_abs_diff_db": float(np.abs(p_approx - p_real).mean()),
                "corr": float(np.corrcoef(p_real, p_approx)[0, 1]),
                "psnr_approx_vs_real": float(psnr(approx, real).mean()),
                "real_ms_per_crop": 1000 * t_real / len(x), "approx_ms_per_crop": 1000 * t_approx / len(x),
            }
            result["rows"].append(row)
            lines.append(
                f"| {side} | {r} | {row['psnr_real']:.2f} | {row['psnr_approx']:.2f} | {row['mean_diff_db']:+.2f} |"
                f" {row['corr']:.2f} | {row['psnr_approx_vs_real']:.2f} | {row['real_ms_per_crop']:.1f} |"
                f" {row['approx_ms_per_crop']:.1f} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    result["machine"]["loadavg_after"] = os.getloadavg()
    atomic_write_json(args.out, result)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
