"""The bundled models: each loads, scores the bundled example photos, stays under the size limit, and
its card states the figures of the build report it was made from (bench/results/*.json)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from shamisa.inference.model_file import ASSETS, BUNDLED, list_models, read_card
from shamisa.inference.quality_model import load

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))
REPORTS = {"default": REPO / "bench" / "results" / "default_model.json",
           "imagenet-lite0": REPO / "bench" / "results" / "imagenet_model.json"}
MAX_BYTES = 30 * 1024 * 1024


def test_every_bundled_model_is_listed() -> None:
    assert set(list_models()) == set(BUNDLED) == set(REPORTS)


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_card_matches_its_build_report(name: str) -> None:
    path = ASSETS / BUNDLED[name]
    assert path.stat().st_size < MAX_BYTES
    card = read_card(path)
    report = json.loads(REPORTS[name].read_text())
    assert report["model_file"].endswith(BUNDLED[name])
    per_split = report["per_split"]
    assert len(per_split["srcc"]) == len(per_split["plcc"]) == card.metrics["splits"] == 10
    # the card's medians are the medians of the report's per-split test figures, recomputed here
    assert card.metrics["srcc_median"] == pytest.approx(statistics.median(per_split["srcc"]), abs=5e-5)
    assert card.metrics["plcc_median"] == pytest.approx(statistics.median(per_split["plcc"]), abs=5e-5)
    assert card.metrics["srcc_per_split"] == pytest.approx(per_split["srcc"], abs=5e-5)
    assert report["card"]["metrics"]["srcc_median"] == card.metrics["srcc_median"]
    assert report["card"]["recipe"] == card.recipe


def test_default_is_built_on_shamisa_pretraining() -> None:
    card = read_card(ASSETS / BUNDLED["default"])
    report = json.loads(REPORTS["default"].read_text())
    assert card.content == "imagenet" and "SHAMISA" in card.recipe
    # the pair shares exactly the stages that pretraining kept frozen
    assert report["pretraining"]["config"]["encoder_frozen_stages"] == card.shared_stages
    assert report["pretraining"]["config"]["method"] == "shamisa"
    baseline = read_card(ASSETS / BUNDLED["imagenet-lite0"])
    assert baseline.content == "" and "no IQA pretraining" in baseline.recipe


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_scores_the_bundled_examples(name: str) -> None:
    assert EXAMPLES
    model = load(name, device="cpu")
    scores = np.asarray(model.score([str(p) for p in EXAMPLES]))
    assert scores.shape == (len(EXAMPLES),)
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))
    assert scores.std() > 0.02  # the photos differ in quality; a constant output is a broken model
