"""Tests of shamisa.evaluation.protocol (the split protocol, cross-dataset mapping, result files) and the
``shamisa evaluate`` command end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from shamisa.cli.app import app
from shamisa.errors import ConfigError, DatasetError
from shamisa.evaluation.protocol import (
    EvalConfig,
    evaluate_cross_dataset,
    evaluate_linear_probe,
    map_scores,
    write_results,
)
from shamisa.evaluation.metrics import plcc, srcc
from shamisa.evaluation.ridge import fit_ridge

FIXTURES = Path(__file__).parents[1] / "fixtures"


def toy(n: int = 90, d: int = 16, k: int = 5, seed: int = 0, mos_type: str = "mos", rng_range=(0.0, 100.0)):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    base = rng.normal(size=(n, d))
    feats = (base[:, None, :] + 0.2 * rng.normal(size=(n, k, d))).astype(np.float32)
    lat = base @ w
    q = 50 + 12 * lat / lat.std() + rng.normal(0, 3, n)
    scores = q if mos_type == "mos" else rng_range[0] + rng_range[1] - q
    ds = SimpleNamespace(name=f"toy{seed}", scores=scores, mos_type=mos_type, score_range=rng_range)
    return feats, ds, w


def toy_splits(n: int, n_splits: int = 4, seed: int = 27):
    parts = {"train": [], "val": [], "test": []}
    for s in range(n_splits):
        p = np.random.default_rng(seed + s).permutation(n)
        a, b = int(0.7 * n), int(0.8 * n)
        parts["train"].append(np.sort(p[:a]))
        parts["val"].append(np.sort(p[a:b]))
        parts["test"].append(np.sort(p[b:]))
    return SimpleNamespace(kind="random", seed=seed, ratios=(0.7, 0.1, 0.2), **{k: tuple(v) for k, v in parts.items()})


def test_protocol_matches_a_direct_computation(tmp_path) -> None:
    feats, ds, _ = toy()
    splits = toy_splits(90)
    res = evaluate_linear_probe(feats, ds, splits, EvalConfig(alpha_grid="budget"), model_info={"name": "toy"})
    assert len(res.per_split) == 4
    alpha = res.selection["alpha"]
    for s, row in enumerate(res.per_split):
        assert row["alpha"] == alpha
        head = fit_ridge(feats[splits.train[s]], ds.scores[splits.train[s]], alpha)
        pred = head.predict(feats[splits.test[s]]).mean(axis=1)  # mean of the 5 crop predictions
        assert row["srcc"] == pytest.approx(srcc(pred, ds.scores[splits.test[s]]))
        assert row["plcc"] == pytest.approx(plcc(pred, ds.scores[splits.test[s]]))
        assert row["n_test"] == len(splits.test[s])
    srccs = [r["srcc"] for r in res.per_split]
    assert res.summary["srcc"]["median"] == pytest.approx(float(np.median(srccs)))
    assert res.summary["srcc"]["mean"] == pytest.approx(float(np.mean(srccs)))
    assert res.median("srcc") > 0.8
    # The representative split is the one closest to the median SRCC.
    assert abs(srccs[res.representative_split] - np.median(srccs)) == pytest.approx(min(abs(np.array(srccs) - np.median(srccs))))
    paths = write_results(res, tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["summary"]["srcc"]["median"] == pytest.approx(res.median())
    assert data["config"]["alpha_grid"] == "budget" and len(data["per_split"]) == 4
    assert len(data["representative_predictions"]["predicted"]) == len(splits.test[res.representative_split])
    assert paths["scatter"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_map_scores_flips_orientation_and_rescales() -> None:
    p = np.array([0.0, 25.0, 100.0])
    assert np.allclose(map_scores(p, (0, 100), "mos", (1, 5), "mos"), [1, 2, 5])
    assert np.allclose(map_scores(p, (0, 100), "mos", (0, 1), "dmos"), [1.0, 0.75, 0.0])
    assert np.allclose(map_scores(p, (0, 100), "dmos", (0, 100), "dmos"), p)


def test_cross_dataset_orientation() -> None:
    feats, src, _ = toy(seed=0)
    # Same latent quality model, target published as DMOS on another range.
    rng = np.random.default_rng(1)
    tfeats, tgt_mos, _ = toy(seed=0)
    tgt = SimpleNamespace(name="target", scores=10 - tgt_mos.scores / 10 + rng.normal(0, 0.01, 90), mos_type="dmos", score_range=(0.0, 10.0))
    res = evaluate_cross_dataset(feats, src, toy_splits(90), tfeats, tgt, EvalConfig(alpha_grid="budget"))
    assert res.dataset == "toy0->target" and len(res.per_split) == 4
    assert res.median("srcc") > 0.8  # positive: predictions were flipped into the DMOS convention
    assert res.extra["target"]["mos_type"] == "dmos"


def test_too_small_splits_are_a_clear_error() -> None:
    feats, ds, _ = toy(n=8)
    with pytest.raises(DatasetError, match="at least 2"):
        evaluate_linear_probe(feats, ds, toy_splits(8, 2), EvalConfig())
    with pytest.raises(ConfigError):
        EvalConfig(method="nope")


# ------------------------------------------------------------------------------------------ CLI


def _texture(rng: np.random.Generator, h: int = 96, w: int = 112) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / 16.0
    base = 0.5 + 0.25 * np.sin(xx * rng.uniform(0.5, 2)) * np.cos(yy * rng.uniform(0.5, 2))
    base = base + 0.15 * ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.0)
    return np.clip(np.stack([base, base * 0.9 + 0.05, base * 0.8 + 0.1], -1), 0, 1)


def _blur_set(folder: Path, n: int, seed: int, dmos: bool = False) -> Path:
    """n images degraded by random blur; MOS = 100 - 15 * sigma (or DMOS = 15 * sigma)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    rows = ["path,dmos" if dmos else "path,score"]
    for i in range(n):
        sigma = rng.uniform(0, 4)
        img = ndimage.gaussian_filter(_texture(rng), (sigma, sigma, 0))
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"im{i}.png")
        rows.append(f"im{i}.png,{(15 * sigma) if dmos else (100 - 15 * sigma):.3f}")
    (folder / f"{folder.name}.csv").write_text("\n".join(rows) + "\n")
    return folder / f"{folder.name}.csv"


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    return _blur_set(tmp_path / "toyset", 30, seed=0)


def test_cli_probe_end_to_end_on_clive_mini(tmp_path) -> None:
    root = FIXTURES / "clive_mini"
    if not root.is_dir():
        pytest.skip("clive_mini fixture not present")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["evaluate", "clive", "--root", str(root), "--n-splits", "3", "--ratios", "0.5,0.25,0.25", "--crop", "64",
         "--out", str(out), "--cache", str(tmp_path / "cache"), "--workers", "0", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert data["dataset"] == "clive" and data["n_images"] == 8
    assert len(data["per_split"]) == 3 and data["config"]["crop"] == 64
    assert data["model"]["name"] == "efficientnet_lite0" and len(data["model"]["weights_hash"]) == 64
    assert all(-1 <= s["srcc"] <= 1 for s in data["per_split"])
    assert (out / "scatter.png").stat().st_size > 1000
    assert "SRCC" in r.stdout and "median" in r.stdout
    assert list((tmp_path / "cache").glob("clive-efficientnet_lite0-*.npy"))


def test_cli_probe_multilevel_readout_with_content(tmp_path) -> None:
    root = FIXTURES / "clive_mini"
    if not root.is_dir():
        pytest.skip("clive_mini fixture not present")
    out = tmp_path / "out"
    args = ["evaluate", "clive", "--root", str(root), "--n-splits", "3", "--ratios", "0.5,0.25,0.25", "--crop", "64",
            "--cache", str(tmp_path / "cache"), "--workers", "0", "--quiet"]
    r = CliRunner().invoke(app, [*args, "--readout", "multilevel", "--with-content", "--out", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    # the pair of two Lite0 encoders read at 4 levels: 2 x (112 + 192 + 320 + 1280) features
    assert data["model"]["readout"] == "multilevel" and data["model"]["feature_dim"] == 3808
    assert len(data["per_split"]) == 3
    # its own cache entry, apart from the head readout's
    r = CliRunner().invoke(app, [*args, "--with-content", "--out", str(tmp_path / "head")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "head" / "results.json").read_text())["model"]["feature_dim"] == 2560
    assert len(list((tmp_path / "cache").glob("clive-*.npy"))) == 2
    r = CliRunner().invoke(app, ["evaluate", "clive", "--root", str(root), "--method", "brisque", "--readout",
                                 "multilevel", "--quiet"])
    assert r.exit_code == 2 and "--readout" in r.output


def test_cli_brisque_end_to_end_on_a_csv(csv_dataset, tmp_path) -> None:
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["evaluate", str(csv_dataset), "--method", "brisque", "--n-splits", "3", "--out", str(out),
         "--cache", str(tmp_path / "cache"), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    data = json.loads((out / "results.json").read_text())
    assert data["method"] == "brisque" and data["config"]["regressor"] == "svr"
    assert {"C", "gamma"} <= set(data["per_split"][0])
    # Blur is what BRISQUE measures: ranking by blur must be far better than chance.
    assert data["summary"]["srcc"]["median"] > 0.7
    assert (out / "scatter.png").exists()


def test_cli_cross_dataset_mos_to_dmos(csv_dataset, tmp_path) -> None:
    target = _blur_set(tmp_path / "target", 12, seed=5, dmos=True)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["evaluate", str(csv_dataset), "--method", "brisque", "--n-splits", "3", "--out", str(out),
         "--cross-dataset", str(target), "--no-cache", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    data = json.loads((out / "cross-target" / "results.json").read_text())
    assert data["dataset"] == "toyset->target" and data["n_images"] == 12 and len(data["per_split"]) == 3
    assert data["extra"]["target"]["mos_type"] == "dmos"
    assert data["summary"]["srcc"]["median"] > 0.5  # positive after the MOS -> DMOS flip


def test_cli_errors_are_one_line(tmp_path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", "nosuchset", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["evaluate", "clive"])
    assert r.exit_code == 2 and "--root" in r.output
    r = runner.invoke(app, ["evaluate", "clive", "--root", str(FIXTURES / "clive_mini"), "--ratios", "0.5,0.5", "--quiet"])
    assert r.exit_code == 2 and "ratios" in r.output
    if (FIXTURES / "clive_mini").is_dir():  # 8 images, default 70/10/20: one test image per split
        r = runner.invoke(app, ["evaluate", "clive", "--root", str(FIXTURES / "clive_mini"), "--method", "brisque",
                                "--n-splits", "2", "--out", str(tmp_path / "o"), "--no-cache", "--quiet"])
        assert r.exit_code == 2 and "at least 2" in r.output


@pytest.mark.parametrize("regressor", ["ridge", "svr"])
def test_image_level_features_with_either_regressor(regressor) -> None:
    feats, ds, _ = toy(n=60, d=6, k=1)
    res = evaluate_linear_probe(feats[:, 0, :] * 50 + 3, ds, toy_splits(60, 3), EvalConfig(method="brisque", regressor=regressor))
    assert res.config["regressor"] == regressor and len(res.per_split) == 3
    assert res.median("srcc") > 0.7
    key = "alpha" if regressor == "ridge" else "C"
    assert key in res.per_split[0]


def test_cli_malformed_csv_rows_stop_or_are_skipped_with_skip_bad_rows(csv_dataset, tmp_path) -> None:
    text = csv_dataset.read_text().rstrip("\n").split("\n")
    text += ["im0.png,not-a-number", "missing-score.png,"]
    csv_dataset.write_text("\n".join(text) + "\n")
    runner = CliRunner()
    base = ["evaluate", str(csv_dataset), "--method", "brisque", "--n-splits", "3", "--no-cache", "--quiet"]
    r = runner.invoke(app, base + ["--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "malformed row" in r.output and "--skip-bad-rows" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, base + ["--out", str(tmp_path / "b"), "--skip-bad-rows"])
    assert r.exit_code == 0, r.output
    assert "skipped 2 malformed row(s)" in r.output and "line 32:" in r.output and "line 33:" in r.output
    assert json.loads((tmp_path / "b" / "results.json").read_text())["n_images"] == 30
