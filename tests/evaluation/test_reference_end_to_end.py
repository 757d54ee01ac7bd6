"""End to end on constructed datasets with a known monotone quality relation: the linear probe and
LML-IQA fine-tuning must recover it (SRCC above a threshold), which a pipeline that mixes up images,
crops, scales, score directions or splits would not.

The encoders are fixed hand-made features (local gradient / high-frequency energy), so that what is
checked is the pipeline around them, not the learning of a network.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from shamisa.datasets import load_dataset
from shamisa.datasets.splits import make_splits
from shamisa.evaluation.features import encode_image
from shamisa.evaluation.protocol import EvalConfig, evaluate_linear_probe
from shamisa.images import load_image


class SharpnessEncoder(nn.Module):
    """Hand-made, L2-normalised features of a crop: log mean squared horizontal and vertical differences
    (after a 2x2 box average) and the mean intensity. Larger blur, lower gradient energy."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # something for an optimiser to hold

    def features(self, x: torch.Tensor) -> torch.Tensor:
        g = x.mean(dim=1, keepdim=True)
        dx = (g[..., :, 1:] - g[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
        dy = (g[..., 1:, :] - g[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
        e = torch.log(dx + dy + 1e-6)
        return torch.stack([e, -e, g.mean(dim=(1, 2, 3)), torch.ones_like(e)], dim=1) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _blur_dataset(folder: Path, n: int, seed: int, invert: bool = False) -> tuple[Path, np.ndarray]:
    """``n`` textured images blurred by sigma in [0, 3]; score = 100 - 25 sigma (higher = better), or with
    ``invert`` 25 sigma (a made-up scale on which blur is "better")."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = ["path,score"]
    sigmas = rng.uniform(0, 3, n)
    for i, sigma in enumerate(sigmas):
        yy, xx = np.mgrid[0:90, 0:110] / 9.0
        base = 0.5 + 0.2 * np.sin(xx * rng.uniform(0.7, 2)) * np.cos(yy * rng.uniform(0.7, 2))
        base = base + 0.2 * ndimage.gaussian_filter(rng.normal(size=(90, 110)), 0.7)
        img = np.stack([base, base * 0.9 + 0.05, base * 0.8 + 0.1], axis=-1)
        img = ndimage.gaussian_filter(np.clip(img, 0, 1), (sigma, sigma, 0))
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"im{i:02d}.png")
        rows.append(f"im{i:02d}.png,{(25 * sigma) if invert else (100 - 25 * sigma):.4f}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv", sigmas


def test_linear_probe_recovers_a_known_monotone_relation(tmp_path):
    csv, sigmas = _blur_dataset(tmp_path / "blur", 60, seed=0)
    ds = load_dataset("csv", csv)
    enc = SharpnessEncoder()
    feats = np.stack([encode_image(enc, load_image(p), crop=40) for p in ds.paths])
    assert feats.shape == (60, 5, 8)
    splits = make_splits(ds, n_splits=4, ratios=(0.6, 0.2, 0.2), seed=1)
    res = evaluate_linear_probe(feats, ds, splits, EvalConfig(alpha_grid="budget"))
    assert len(res.per_split) == 4
    # the blur is recovered on every split's held-out images
    assert min(s["srcc"] for s in res.per_split) > 0.85
    assert res.median("srcc") > 0.9
    # the same features with the scores shuffled across images carry no relation
    rng = np.random.default_rng(0)
    shuffled = SimpleNamespace(name=ds.name, scores=rng.permutation(ds.scores), mos_type=ds.mos_type,
                               score_range=ds.score_range)
    res_bad = evaluate_linear_probe(feats, shuffled, splits, EvalConfig(alpha_grid="budget"))
    assert res_bad.median("srcc") < 0.6


# the same images rated in both directions: the fixed features rank them either way, so only a pipeline that
# learns from the scores gets both right (a head that ignores its targets keeps its random sign)
@pytest.mark.parametrize("invert", [False, True])
def test_finetune_recovers_a_known_monotone_relation(tmp_path, invert):
    from shamisa.finetuning.lml import FinetuneConfig, finetune

    seed = 0
    csv, _ = _blur_dataset(tmp_path / "blur", 40, seed=1, invert=invert)
    ds = load_dataset("csv", csv)
    torch.manual_seed(seed)
    cfg = FinetuneConfig(
        dataset="csv", crop=40, batch_size=8, n_crops=2, epochs=12, n_splits=1, saliency="random",
        head_hidden=16, proj_hidden=8, proj_dim=4, head_lr=3e-2, lr=1e-4, regression_loss="mse",
        out=str(tmp_path / "run"), seed=seed,
    )
    res = finetune(cfg, dataset=ds, encoder_factory=SharpnessEncoder, quiet=True)
    assert res.n_test == 8
    assert res.test_srcc > 0.8
    # the best checkpoint is chosen on 4 validation images, where a head of either sign can win by
    # chance; the last epochs show what training converged to: the right sign on every one of them
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_srcc"] for r in log if r.get("kind") == "val"]
    assert len(val) == 12
    assert all(v > 0.5 for v in val[-4:]), val
