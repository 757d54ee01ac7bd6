"""The content + quality pair: equal to the two encoders run separately, shared stages only where the
weights agree, and a model file that stores and reloads a pair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shamisa.errors import ConfigError, ModelFileError
from shamisa.evaluation.ridge import fit_ridge
from shamisa.inference.card import ModelCard
from shamisa.inference.model_file import encoder_card_fields, read_card, save_model
from shamisa.inference.quality_model import load
from shamisa.models import PairedEncoder, build_encoder, shared_stage_count, with_content


def _quality_from(content, moved_from_block: int, seed: int = 0):
    """An encoder equal to ``content`` up to block ``moved_from_block`` (exclusive), perturbed after it."""
    quality = build_encoder(content.name)
    quality.load_state_dict(content.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in quality.backbone.named_parameters():
            block = int(name.split(".")[1]) if name.startswith("_blocks.") else None
            if (block is not None and block >= moved_from_block) or name.startswith(("_conv_head", "_bn1")):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return quality.eval()


@pytest.fixture(scope="module")
def content():
    return build_encoder("efficientnet_lite0", pretrained=True).eval()


def test_pair_equals_the_two_encoders_run_separately(content) -> None:
    quality = _quality_from(content, moved_from_block=5)  # Lite0 stages 1-3 are blocks 0..4
    x = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.cat([F.normalize(content.features(x), dim=1), F.normalize(quality.features(x), dim=1)], 1)
        expected = expected / math.sqrt(2)
        shared = PairedEncoder(content, quality, shared_stages=3)(x)
        plain = PairedEncoder(content, quality)(x)
    assert shared.shape == (3, 2560)
    torch.testing.assert_close(shared, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # the quality half really differs from the content half (the pair is not two copies)
    assert (shared[:, :1280] - shared[:, 1280:]).abs().max() > 1e-3


def test_shared_stages_only_where_the_weights_agree(content) -> None:
    quality = _quality_from(content, moved_from_block=5)
    assert shared_stage_count(content, quality) == 3
    assert shared_stage_count(content, _quality_from(content, moved_from_block=3)) == 2  # stage 3 starts at block 3
    with pytest.raises(ConfigError, match="differ"):
        PairedEncoder(content, quality, shared_stages=4)
    with pytest.raises(ConfigError, match="one architecture"):
        PairedEncoder(content, build_encoder("efficientnet_lite1"))
    pair = with_content(quality)
    assert pair.shared_stages == 3 and pair.feature_dim == 2560


def test_a_paired_model_file_round_trip(tmp_path, content) -> None:
    quality = _quality_from(content, moved_from_block=5)
    pair = PairedEncoder(content, quality, shared_stages=3)
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 5, 2 * pair.feature_dim)).astype(np.float32)
    head = fit_ridge(feats, rng.uniform(0, 100, size=30), 1.0)
    card = ModelCard(name="pair", **encoder_card_fields(pair), crop=64, dataset="toy", mos_type="mos",
                     score_range=(0.0, 100.0))
    assert (card.encoder, card.content, card.shared_stages, card.head_dim) == ("efficientnet_lite0", "imagenet", 3, 5120)
    path = save_model(tmp_path / "pair.safetensors", pair, head, card, dtype=None)
    back = read_card(path)
    assert (back.content, back.shared_stages, back.feature_dim) == ("imagenet", 3, 2560)
    model = load(path, device="cpu", optimize=False)
    assert isinstance(model.encoder, PairedEncoder) and model.encoder.shared_stages == 3
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model.encoder(x)
        want = pair(x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    # a pair whose shared stages were tampered with is refused, not silently scored
    tampered = PairedEncoder(content, _quality_from(content, moved_from_block=0), shared_stages=0)
    bad = ModelCard(name="bad", encoder="efficientnet_lite0", feature_dim=2560, crop=64, dataset="toy",
                    mos_type="mos", score_range=(0.0, 100.0), content="imagenet", shared_stages=3)
    save_model(tmp_path / "bad.safetensors", tampered, head, bad, dtype=None)
    with pytest.raises(ModelFileError, match="differ"):
        load(tmp_path / "bad.safetensors", device="cpu")
