"""The loss registry: each method name builds its loss with the config's settings and the given sizes."""

from __future__ import annotations

import dataclasses

import pytest

from shamisa.configs import preset
from shamisa.errors import ConfigError
from shamisa.objectives import ArniqaLossConfig, ShamisaLossConfig
from shamisa.objectives.arniqa import ArniqaObjective
from shamisa.objectives.registry import LOSSES, build_loss
from shamisa.objectives.shamisa import ShamisaObjective


def test_each_method_builds_its_loss_with_the_config_and_sizes() -> None:
    assert sorted(LOSSES) == ["arniqa", "shamisa"]
    loss_cfg = ShamisaLossConfig(knn_k=7, n_prototypes=5)
    cfg = dataclasses.replace(preset("tiny"), method="shamisa", loss=loss_cfg)
    shamisa = build_loss(cfg, 24, 16)
    assert isinstance(shamisa, ShamisaObjective)
    assert (shamisa.rep_dim, shamisa.emb_dim, shamisa.cfg) == (24, 16, loss_cfg)
    arniqa_cfg = ArniqaLossConfig(temperature=0.3, pristine="exclude")
    arniqa = build_loss(dataclasses.replace(cfg, method="arniqa", arniqa_loss=arniqa_cfg), 24, 16)
    assert isinstance(arniqa, ArniqaObjective) and arniqa.cfg == arniqa_cfg
    assert (arniqa.rep_dim, arniqa.emb_dim) == (24, 16)


def test_arniqa_loss_from_a_config_without_its_field_takes_the_defaults() -> None:
    from types import SimpleNamespace

    from shamisa.objectives.arniqa import build_arniqa_loss

    for cfg in (SimpleNamespace(), SimpleNamespace(arniqa_loss=None)):
        loss = build_arniqa_loss(cfg, 6, 5)
        assert loss.cfg == ArniqaLossConfig() and (loss.rep_dim, loss.emb_dim) == (6, 5)


def test_an_unknown_method_names_the_registered_ones() -> None:
    cfg = dataclasses.replace(preset("tiny"), method="shamisa")
    object.__setattr__(cfg, "method", "byol")  # past the config's own validation
    with pytest.raises(ConfigError, match=r"^method 'byol' has no loss registered \(available: arniqa, shamisa\)$"):
        build_loss(cfg, 8, 8)
