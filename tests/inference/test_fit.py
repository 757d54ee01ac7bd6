"""``shamisa fit`` end to end on generated labelled images, and the fitting protocol on synthetic features."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_like_image
from PIL import Image
from typer.testing import CliRunner

from shamisa.inference.card import ModelCard
from shamisa.inference.fit import fit_head
from shamisa.inference.model_file import read_card, save_model
from shamisa.cli.app import app
from shamisa.datasets import make_splits
from shamisa.datasets.base import IQADataset
from shamisa.models import build_encoder, save_encoder
from shamisa.evaluation.ridge import RidgeHead, fit_ridge

runner = CliRunner()
N_GOOD = 36


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def encoder_model(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    enc = build_encoder("efficientnet_lite0").eval()
    card = ModelCard(name="base", encoder=enc.name, feature_dim=1280, crop=32, dataset="x", mos_type="mos",
                            score_range=(0, 1))
    head = RidgeHead(np.zeros(2560), 0.5, 1.0)
    return save_model(tmp_path_factory.mktemp("enc") / "base.safetensors", enc, head, card)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """36 images whose label is their brightness, plus malformed rows of every kind."""
    root = tmp_path_factory.mktemp("labels")
    (root / "img").mkdir()
    rows = ["path,score"]
    for i in range(N_GOOD):
        gain = 0.3 + 0.7 * i / (N_GOOD - 1)
        arr = (natural_like_image(48, 56, seed=i) * gain).permute(1, 2, 0).numpy()
        Image.fromarray((arr * 255).astype(np.uint8)).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{10 + 80 * gain:.3f}")
    rows += [
        "img/0.png,",  # missing score
        "img/1.png,nan",  # NaN
        "img/2.png,good",  # text
        "img/missing.png,50",  # image file not found
        ",42",  # missing path
    ]
    csv_path = root / "labels.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def _fit(labelled: Path, out: Path, *extra: str):
    return runner.invoke(
        app,
        ["fit", str(labelled), "-o", str(out), "--crop", "32", "--splits", "3", "--workers", "0", "--no-cache",
         "--alpha-grid", "budget", *extra],
    )


def test_fit_writes_a_scorable_model(tmp_path, labelled, encoder_model):
    out = tmp_path / "mine.safetensors"
    r = _fit(labelled, out, "--model", str(encoder_model))
    assert r.exit_code == 0, r.output
    m = re.search(r"SRCC (-?[0-9.]+), PLCC (-?[0-9.]+)", r.stdout)
    assert m and all(-1 <= float(v) <= 1 for v in m.groups())
    assert float(m.group(1)) > 0.8  # labels are a deterministic function of image brightness
    # every malformed row is reported with its line number and reason
    for line, reason in [(38, "missing score"), (39, "not a finite number"), (40, "not a finite number"),
                         (41, "image file not found"), (42, "missing image path")]:
        assert re.search(rf"line {line}: .*{reason}", r.stderr), (line, r.stderr)
    assert "skipped 5 malformed row(s)" in r.stderr
    card = read_card(out)
    assert card.dataset == "labels" and card.mos_type == "mos" and card.crop == 32
    assert card.metrics["splits"] == 3 and card.metrics["n_images"] == N_GOOD
    assert card.score_range == (pytest.approx(10 + 80 * 0.3), pytest.approx(90.0))
    sr = runner.invoke(app, ["score", str(labelled.parent / "img"), "--model", str(out), "-f", "csv"])
    assert sr.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(sr.stdout)))
    assert len(rows) == N_GOOD and all(0 <= float(x["score"]) <= 1 for x in rows)


def test_fit_with_encoder_weights_and_dmos(tmp_path, labelled):
    torch.manual_seed(2)
    wfile = save_encoder(tmp_path / "enc.safetensors", build_encoder("efficientnet_lite0"))
    out = tmp_path / "d.safetensors"
    r = _fit(labelled, out, "--weights", str(wfile), "--mos-type", "dmos", "--score-range", "0,100", "--fp32")
    assert r.exit_code == 0, r.output
    card = read_card(out)
    assert card.mos_type == "dmos" and card.score_range == (0.0, 100.0)
    assert "enc.safetensors" in card.recipe


def test_fit_with_the_multilevel_readout(tmp_path, labelled):
    torch.manual_seed(3)
    wfile = save_encoder(tmp_path / "enc.safetensors", build_encoder("efficientnet_lite0"))
    out = tmp_path / "ml.safetensors"
    r = _fit(labelled, out, "--weights", str(wfile), "--with-content", "--readout", "multilevel")
    assert r.exit_code == 0, r.output
    card = read_card(out)
    assert (card.readout, card.content, card.feature_dim) == ("multilevel", "imagenet", 3808)
    assert "multilevel readout" in card.recipe
    # a model fitted on it keeps its readout; scoring reads the card
    again = tmp_path / "again.safetensors"
    assert _fit(labelled, again, "--model", str(out)).exit_code == 0
    assert read_card(again).readout == "multilevel"
    sr = runner.invoke(app, ["score", str(labelled.parent / "img"), "--model", str(out), "-f", "csv"])
    assert sr.exit_code == 0, sr.output
    assert len(list(csv.DictReader(io.StringIO(sr.stdout)))) == N_GOOD
    bad = _fit(labelled, tmp_path / "x.safetensors", "--model", str(out), "--readout", "head")
    assert bad.exit_code != 0 and "cannot change" in bad.output


@pytest.mark.parametrize(
    "args,msg",
    [
        (["nope.csv"], "not found"),
        (["clive"], "--root"),
        (["LABELS", "--mos-type", "zscore"], "mos or dmos"),
        (["LABELS", "--score-range", "1"], "LO,HI"),
        (["LABELS", "--model", "M", "--encoder", "efficientnet_lite0"], "not both"),
    ],
)
def test_fit_usage_errors(tmp_path, labelled, encoder_model, args, msg):
    args = [str(labelled) if a == "LABELS" else str(encoder_model) if a == "M" else a for a in args]
    r = runner.invoke(app, ["fit", *args, "-o", str(tmp_path / "x.safetensors"), "--crop", "32", "--no-cache"])
    assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "x.safetensors").exists()


def test_fit_too_few_rows(tmp_path, encoder_model):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "few.csv").write_text("path,score\na.png,1\na.png,2\n")
    r = _fit(tmp_path / "few.csv", tmp_path / "o.safetensors", "--model", str(encoder_model))
    assert r.exit_code == 2 and "at least 30" in r.stderr


def test_fit_head_recovers_a_linear_signal():
    """On features with a planted linear signal, the protocol finds it and the final head uses all data."""
    rng = np.random.default_rng(0)
    n, d = 120, 16
    x = rng.normal(size=(n, 5, d))
    w = rng.normal(size=d)
    y = x.mean(axis=1) @ w + 0.05 * rng.normal(size=n)
    ds = IQADataset(name="s", root=Path("."), paths=tuple(Path(f"{i}.png") for i in range(n)), scores=y,
                    mos_type="mos", score_range=(float(y.min()), float(y.max())), synthetic=False)
    fit = fit_head(x, y, make_splits(ds, n_splits=4), grid="budget")
    assert fit.srcc.shape == (4,) and fit.srcc_median > 0.9 and fit.plcc_median > 0.9
    ref = fit_ridge(x, y, fit.alpha)
    np.testing.assert_allclose(fit.head.coef, ref.coef)
    assert fit.metrics()["splits"] == 4 and fit.metrics()["n_images"] == n


def test_fit_head_matches_evaluate():
    """`shamisa fit` reports the same cross-validated numbers as `shamisa evaluate` on the same features."""
    from shamisa.evaluation.protocol import EvalConfig, evaluate_linear_probe

    rng = np.random.default_rng(1)
    n, d = 90, 12
    x = rng.normal(size=(n, 5, d))
    y = x.mean(axis=1) @ rng.normal(size=d) + rng.normal(size=n)
    ds = IQADataset(name="s", root=Path("."), paths=tuple(Path(f"{i}.png") for i in range(n)), scores=y,
                    mos_type="mos", score_range=(float(y.min()), float(y.max())), synthetic=False)
    splits = make_splits(ds, n_splits=5)
    fit = fit_head(x, y, splits, grid="budget")
    res = evaluate_linear_probe(x, ds, splits, EvalConfig(alpha_grid="budget", n_splits=5))
    assert fit.alpha == pytest.approx(res.per_split[0]["alpha"])
    assert fit.srcc_median == pytest.approx(res.summary["srcc"]["median"])
    assert fit.plcc_median == pytest.approx(res.summary["plcc"]["median"])
