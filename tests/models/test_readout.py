"""The multilevel readout against a reference built here from forward hooks on the backbone, its
pairing, and model files that store and reload it."""

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
from shamisa.models import (
    ENCODER_NAMES,
    MultiLevelEncoder,
    PairedEncoder,
    build_encoder,
    readout_of,
    with_content,
    with_readout,
)

# Lite0's stage table has (1, 2, 2, 3, 3, 4, 1) blocks: stages 5, 6 and 7 (strides 16, 32, 32) end after
# blocks 10, 14 and 15 (0-based), with 112, 192 and 320 channels; the head has 1280.
LITE0_STAGE_ENDS = (10, 14, 15)
LITE0_DIMS = (112, 192, 320, 1280)


def _hooked_levels(encoder, x: torch.Tensor, modules) -> list[torch.Tensor]:
    outs: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in modules]
    try:
        final = encoder.feature_map(x)
    finally:
        for h in handles:
            h.remove()
    return [*outs, final]


def _reference(levels: list[torch.Tensor]) -> torch.Tensor:
    parts = [F.normalize(m.float().mean(dim=(2, 3)), dim=1) for m in levels]
    return torch.cat(parts, dim=1) / math.sqrt(len(parts))


@pytest.fixture(scope="module")
def lite0():
    return build_encoder("efficientnet_lite0", pretrained=True).eval()


def test_lite_multilevel_equals_the_hooked_stage_outputs(lite0, device) -> None:
    enc = lite0.to(device)
    ml = with_readout(enc, "multilevel")
    assert isinstance(ml, MultiLevelEncoder) and readout_of(ml) == "multilevel"
    assert ml.level_dims == LITE0_DIMS and ml.feature_dim == sum(LITE0_DIMS) == 1904
    x = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        levels = _hooked_levels(enc, x, [enc.backbone._blocks[i] for i in LITE0_STAGE_ENDS])
        want = _reference(levels)
        got = ml(x)
    assert [m.shape[1] for m in levels] == list(LITE0_DIMS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3, device=device), atol=1e-5, rtol=0)
    # the last part is the head readout's feature, scaled by 1/2
    with torch.no_grad():
        torch.testing.assert_close(got[:, -1280:] * 2, enc(x), atol=1e-5, rtol=1e-5)
    # batch equals per image
    with torch.no_grad():
        one = torch.cat([ml(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(one, got, atol=1e-5, rtol=1e-5)
    lite0.cpu()


def test_resnet_multilevel_reads_layer3_and_layer4() -> None:
    enc = build_encoder("resnet18").eval()
    ml = with_readout(enc, "multilevel")
    assert ml.level_dims == (256, 512) and ml.feature_dim == 768
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = _reference(_hooked_levels(enc, x, [enc.backbone.layer3]))
        torch.testing.assert_close(ml(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ml.features(x), want, atol=1e-5, rtol=1e-5)  # already unit norm


def test_same_weights_new_hash_and_no_change_to_the_wrapped_encoder(lite0) -> None:
    ml = with_readout(lite0, "multilevel")
    assert ml.state_dict().keys() == lite0.state_dict().keys()
    assert ml.weights_hash() != lite0.weights_hash()  # feature caches keep the readouts apart
    assert lite0.readout == "head" and lite0.feature_dim == 1280
    assert with_readout(lite0, "head") is lite0
    assert with_readout(ml, "multilevel") is ml
    with pytest.raises(ConfigError, match="cannot change"):
        with_readout(ml, "head")
    with pytest.raises(ConfigError, match="unknown readout"):
        with_readout(lite0, "gem")


def test_a_multilevel_pair_equals_its_branches_with_or_without_shared_stages(lite0) -> None:
    quality = build_encoder("efficientnet_lite0")
    quality.load_state_dict(lite0.state_dict())
    with torch.no_grad():
        for name, p in quality.backbone.named_parameters():
            if name.startswith("_blocks.") and int(name.split(".")[1]) >= 5:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    quality.eval()
    pair = with_readout(with_content(quality), "multilevel")
    assert isinstance(pair, PairedEncoder) and pair.shared_stages == 3 and pair.feature_dim == 2 * 1904
    assert readout_of(pair) == "multilevel"
    x = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    c, q = with_readout(lite0, "multilevel"), with_readout(quality, "multilevel")
    with torch.no_grad():
        want = torch.cat([c(x), q(x)], dim=1) / math.sqrt(2)
        torch.testing.assert_close(pair(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="one readout"):
        PairedEncoder(lite0, q)


def test_a_multilevel_model_file_round_trip(tmp_path, lite0) -> None:
    pair = with_readout(with_content(build_encoder("efficientnet_lite0", pretrained=True).eval()), "multilevel")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(30, 5, 2 * pair.feature_dim)).astype(np.float32)
    head = fit_ridge(feats, rng.uniform(0, 100, size=30), 1.0)
    card = ModelCard(name="ml", **encoder_card_fields(pair), crop=64, dataset="toy", mos_type="mos",
                     score_range=(0.0, 100.0))
    assert (card.readout, card.feature_dim, card.head_dim) == ("multilevel", 3808, 7616)
    path = save_model(tmp_path / "ml.safetensors", pair, head, card, dtype=None)
    assert read_card(path).readout == "multilevel"
    model = load(path, device="cpu", optimize=False)
    assert readout_of(model.encoder) == "multilevel"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(x), pair(x), atol=1e-6, rtol=1e-6)
    # one encoder, head readout: no readout key is written and the file reads as before
    single = ModelCard(name="one", **encoder_card_fields(lite0), crop=64, dataset="toy", mos_type="mos",
                       score_range=(0.0, 100.0))
    assert single.readout == "head" and "readout" not in single.to_metadata()


def test_a_card_with_an_unknown_readout_is_refused() -> None:
    with pytest.raises(ModelFileError, match="readout"):
        ModelCard(name="x", encoder="efficientnet_lite0", feature_dim=1904, crop=224, dataset="toy",
                  mos_type="mos", score_range=(0.0, 1.0), readout="gem")


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_level_widths_are_those_of_the_maps_read_out(name) -> None:
    """The widths announced at construction (read from the stages' layers, no forward pass) are the
    channels of the maps that a forward pass reads out, for every architecture."""
    ml = with_readout(build_encoder(name).eval(), "multilevel")
    with torch.no_grad():
        maps = ml.level_maps(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    assert ml.level_dims == tuple(m.shape[1] for m in maps)
    assert ml.feature_dim == sum(ml.level_dims) and len(maps) == (4 if name.startswith("efficientnet") else 2)
