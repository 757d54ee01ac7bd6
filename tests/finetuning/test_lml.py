"""LML-IQA fine-tuning: building blocks, one training step, and an end-to-end CLI run on a CSV fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import natural_like_image
from shamisa.errors import ConfigError
from shamisa.finetuning.data import eval_views, normalise_scores, sample_training_crops
from shamisa.finetuning.lml import FinetuneConfig, cosine_factor, finetune, lml_step_losses
from shamisa.finetuning.model import LmlModel, ema_update, load_lml_model


class TinyEncoder(nn.Module):
    """A minimal encoder with the shamisa encoder contract (feature_dim, features)."""

    feature_dim = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.features(x), dim=1)


def _tiny_models() -> tuple[LmlModel, LmlModel]:
    torch.manual_seed(0)
    student = LmlModel(TinyEncoder(), head_hidden=16, proj_hidden=16, proj_dim=8)
    teacher = LmlModel(TinyEncoder(), head_hidden=16, proj_hidden=16, proj_dim=8).eval()
    teacher.load_state_dict(student.state_dict())
    return student, teacher


def test_normalise_scores_flips_dmos() -> None:
    s = np.array([0.0, 25.0, 100.0])
    assert normalise_scores(s, (0, 100), "mos").tolist() == [0.0, 0.25, 1.0]
    assert normalise_scores(s, (0, 100), "dmos").tolist() == [1.0, 0.75, 0.0]


def test_cosine_factor_and_ema() -> None:
    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(0.0)
    assert cosine_factor(0.5) == pytest.approx(0.5) and cosine_factor(2.0) == pytest.approx(0.0)
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * wa + 0.1 * wb)


def test_training_crops_layout_and_saliency() -> None:
    img = natural_like_image(90, 120, seed=1)
    g = torch.Generator().manual_seed(0)
    crops, boxes, sal = sample_training_crops(img, 32, 6, (1.0, 0.5), g, saliency=True)
    assert crops.shape == (6, 3, 32, 32)
    assert boxes[:, 3].tolist() == [0, 1, 0, 1, 0, 1]
    assert (boxes[boxes[:, 3] == 0, 2] == 32).all() and (boxes[boxes[:, 3] == 1, 2] == 64).all()
    assert sal is not None and sal.shape == (6,) and (sal >= 0).all()
    # an image smaller than the crop is enlarged first
    small, _, none = sample_training_crops(natural_like_image(20, 30), 32, 2, (1.0, 0.5), g, saliency=False)
    assert small.shape == (2, 3, 32, 32) and none is None
    assert eval_views(img, 32, "five_two_scale").shape == (10, 3, 32, 32)
    assert eval_views(img, 32, "center").shape == (1, 3, 32, 32)


@pytest.mark.parametrize("mode", ["spectral", "random", "teacher"])
def test_step_losses_anchor_choice_and_gradients(mode: str) -> None:
    student, teacher = _tiny_models()
    g = torch.Generator().manual_seed(0)
    crops = torch.rand(3, 4, 3, 24, 24, generator=g)
    targets = torch.tensor([0.2, 0.5, 0.9])
    sal = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.8, 0.1, 0.1, 0.1], [0.0, 0.0, 0.1, 0.5]])
    cfg = FinetuneConfig(saliency=mode, lml_weight=0.5)  # type: ignore[arg-type]
    out = lml_step_losses(student, teacher, crops, targets, sal, cfg, g)
    if mode == "spectral":
        assert out["anchor"].tolist() == [1, 0, 3]
    elif mode == "teacher":
        norms = teacher.encoder.features(crops.flatten(0, 1)).norm(dim=-1).view(3, 4)
        assert out["anchor"].tolist() == norms.argmax(dim=1).tolist()
    assert ((out["anchor"] >= 0) & (out["anchor"] < 4)).all()
    assert out["loss"].item() == pytest.approx(out["regression"].item() + 0.5 * out["lml"].item(), rel=1e-5)
    # InfoNCE with 1 positive, 2 inter and 3 intra negatives is bounded by log(6) when all sims are equal
    assert 0.0 < out["lml"].item() < 3 * math.log(6)
    out["loss"].backward()
    assert student.encoder.conv.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError):
        if mode == "spectral":
            lml_step_losses(student, teacher, crops, targets, None, cfg, g)
        else:
            raise ValueError("only spectral needs saliency scores")


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        FinetuneConfig(n_crops=1)
    with pytest.raises(ConfigError):
        FinetuneConfig(batch_size=1)
    with pytest.raises(ConfigError):
        FinetuneConfig(saliency="edges")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FinetuneConfig(max_steps=0)
    assert FinetuneConfig().to_dict()["scales"] == [1.0, 0.5]


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    """20 generated 80x80 images whose score falls with the amount of added noise."""
    from PIL import Image

    folder = tmp_path / "rated"
    folder.mkdir()
    rows = ["path,mos"]
    for i in range(20):
        x = natural_like_image(80, 80, seed=i)
        noise = torch.rand(3, 80, 80, generator=torch.Generator().manual_seed(100 + i)) - 0.5
        x = (x + 0.6 * (i / 20) * noise).clamp(0, 1)
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"im{i:02d}.png")
        rows.append(f"im{i:02d}.png,{100 - 4 * i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def test_finetune_function_with_tiny_encoder_and_time_budget(csv_dataset: Path, tmp_path: Path) -> None:
    from shamisa.datasets import load_dataset

    ds = load_dataset("csv", csv_dataset)
    cfg = FinetuneConfig(dataset="csv", crop=32, batch_size=4, n_crops=2, epochs=3, n_splits=1,
                         max_minutes=1e-4, out=str(tmp_path / "run"), log_every=1)
    res = finetune(cfg, dataset=ds, encoder_factory=TinyEncoder, quiet=True)
    assert res.stopped_by == "time" and res.steps == 1
    assert (res.n_train, res.n_val, res.n_test) == (14, 2, 4)
    assert -1.0 <= res.test_srcc <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in lines] == ["train", "val", "test"]
    # a step budget stops after exactly that many steps, whatever the machine's speed
    cfg2 = FinetuneConfig(dataset="csv", crop=32, batch_size=4, n_crops=2, epochs=3, n_splits=1, max_steps=2,
                          out=str(tmp_path / "run2"), saliency="random")
    res2 = finetune(cfg2, dataset=ds, encoder_factory=TinyEncoder, quiet=True)
    assert res2.stopped_by == "steps" and res2.steps == 2 and res2.best_epoch == pytest.approx(8 / 14)


def test_finetune_cli_end_to_end(csv_dataset: Path, tmp_path: Path) -> None:
    from shamisa.cli.app import app

    out = tmp_path / "lml"
    args = ["finetune", "csv", "--root", str(csv_dataset), "--method", "lml", "--no-pretrained",
            "--crop", "32", "--batch-size", "7", "--n-crops", "2", "--epochs", "1", "--n-splits", "1",
            "--saliency", "spectral", "--eval-mode", "center", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["config"]["saliency"] == "spectral" and summary["steps"] == 2  # 14 train images / 7
    assert summary["stopped_by"] == "epochs"
    assert np.isfinite(summary["test_srcc"]) and np.isfinite(summary["test_plcc"])
    stored = json.loads((out / "result.json").read_text())
    assert stored["test_srcc"] == summary["test_srcc"]
    # the best checkpoint reloads and reproduces the reported test SRCC
    model, meta = load_lml_model(out / "best.safetensors")
    assert meta["config"]["crop"] == 32
    from shamisa.datasets import load_dataset, make_splits
    from shamisa.finetuning.model import predict_paths
    from shamisa.evaluation.metrics import srcc

    ds = load_dataset("csv", csv_dataset)
    test = make_splits(ds, n_splits=1, seed=27).test[0]
    pred = predict_paths(model, [str(ds.paths[i]) for i in test], crop=32, mode="center")
    assert srcc(pred, ds.scores[test]) == pytest.approx(summary["test_srcc"], abs=1e-6)
    assert (out / "encoder.safetensors").is_file()


def test_finetune_cli_rejects_unknown_method(csv_dataset: Path, tmp_path: Path) -> None:
    from shamisa.cli.app import app

    result = CliRunner().invoke(app, ["finetune", "csv", "--root", str(csv_dataset), "--method", "simclr",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown fine-tuning method 'simclr'" in result.output
