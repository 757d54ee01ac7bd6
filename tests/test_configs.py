"""PretrainConfig: JSON round trip, presets, validation, dotted overrides, the CLI dry run."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from shamisa.configs import PRESETS, PretrainConfig, apply_overrides, config_from_dict, load_config, preset
from shamisa.errors import ConfigError
from shamisa.objectives import ShamisaLossConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_through_json(name: str) -> None:
    cfg = preset(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert PretrainConfig.from_dict(data) == cfg
    assert isinstance(data["loss"], dict) and isinstance(data["data_dirs"], list)


def test_round_trip_keeps_nested_and_tuple_values(tmp_path) -> None:
    cfg = apply_overrides(preset("tiny"), ["data_dirs=a,b/c", "loss.lambda_var=3.5", "max_minutes=2.5"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    back = load_config(path)
    assert back == cfg
    assert back.data_dirs == ("a", "b/c")
    assert back.loss.lambda_var == 3.5 and isinstance(back.loss, ShamisaLossConfig)


def test_paper_preset_matches_the_recipe() -> None:
    cfg = preset("paper")
    assert (cfg.encoder, cfg.patch_size, cfg.items_per_step) == ("resnet50", 224, 2)
    assert (cfg.n_refs, cfg.n_comps, cfg.n_levels, cfg.max_distortions) == (3, 4, 5, 7)
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.eta_min) == (1.5e-3, 0.9, 1e-4, 1e-6)
    assert (cfg.t0_epochs, cfg.t_mult, cfg.epochs, cfg.seed) == (1, 2, 1, 27)
    assert cfg.crops_per_item == 126
    assert cfg.loss == ShamisaLossConfig()


def test_cpu_preset_holds_out_kodak_and_caps_time() -> None:
    cfg = preset("cpu")
    assert cfg.encoder == "efficientnet_lite0" and cfg.pretrained
    assert "kodak24" in cfg.exclude_dirs
    # one run fits well inside two hours on 2 cores (the cap stops it cleanly, resumable)
    assert cfg.max_minutes is not None and cfg.max_minutes <= 120
    assert cfg.device == "cpu" and cfg.amp in {"bf16", "off"}
    # the projector warm-up, then the encoder at a reduced lr, read out at several levels, one cosine
    # over the two epochs
    assert 0 < cfg.encoder_freeze_steps < 259 and 0 < cfg.encoder_lr_scale < 1
    assert cfg.readout == "multilevel" and cfg.epochs == cfg.t0_epochs == 2


def test_tiny_preset_is_small() -> None:
    cfg = preset("tiny")
    assert cfg.patch_size <= 64 and cfg.max_steps is not None and cfg.max_steps <= 10
    assert not cfg.pretrained


def test_overrides_parse_by_type() -> None:
    cfg = apply_overrides(
        preset("paper"),
        ["lr=2e-3", "epochs=3", "channels_last=false", "max_steps=none", "exclude_dirs=x,y", "loss.weighting=off"],
    )
    assert cfg.lr == 2e-3 and isinstance(cfg.lr, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.channels_last is False and cfg.max_steps is None
    assert cfg.exclude_dirs == ("x", "y")
    assert cfg.loss.weighting is False
    assert preset("paper").lr == 1.5e-3  # presets are fresh, configs frozen
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "override",
    ["nope=1", "lr", "epochs=1.5", "epochs=abc", "channels_last=maybe", "loss.nope=1", "lr.x=1", "items_per_step=0",
     "method=simclr", "amp=int8", "eta_min=1", "synth_on_device=true", "projector_input=huge",
     "loss.pair_metric=l1"],
)
def test_bad_overrides_raise_config_error(override: str) -> None:
    base = apply_overrides(preset("tiny"), ["num_workers=1"]) if override.startswith("synth") else preset("tiny")
    with pytest.raises(ConfigError):
        apply_overrides(base, [override])


def test_from_dict_rejects_unknown_keys() -> None:
    data = preset("tiny").to_dict()
    data["learning_rate"] = 1.0
    with pytest.raises(ConfigError, match="learning_rate"):
        config_from_dict(PretrainConfig, data)


def test_missing_keys_take_defaults() -> None:
    assert PretrainConfig.from_dict({"lr": 0.5}) == dataclasses.replace(PretrainConfig(), lr=0.5)


def test_cli_dry_run_prints_the_resolved_config(tmp_path) -> None:
    from shamisa.cli.app import app

    res = CliRunner().invoke(
        app,
        ["pretrain", "--preset", "tiny", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--max-steps", "7",
         "--set", "loss.rho=0", "--dry-run"],
    )
    assert res.exit_code == 0, res.output
    cfg = PretrainConfig.from_dict(json.loads(res.stdout))
    assert cfg.data_dirs == (str(tmp_path),) and cfg.max_steps == 7 and cfg.loss.rho == 0.0
    assert cfg.out_dir == str(tmp_path / "run")


def test_cli_bad_override_is_one_line_error() -> None:
    from shamisa.cli.app import app

    res = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--set", "lr=-1", "--dry-run"])
    assert res.exit_code == 2
    assert "error:" in res.output and "Traceback" not in res.output


def test_arniqa_loss_settings_are_a_config_field() -> None:
    from shamisa.configs import apply_overrides
    from shamisa.objectives import ArniqaLossConfig
    from shamisa.objectives.registry import build_loss

    cfg = apply_overrides(PretrainConfig(), ["method=arniqa", "arniqa_loss.temperature=0.25", "arniqa_loss.pristine=exclude"])
    assert cfg.arniqa_loss == ArniqaLossConfig(temperature=0.25, pristine="exclude")
    assert PretrainConfig.from_dict(cfg.to_dict()).arniqa_loss == cfg.arniqa_loss  # saved and read back
    loss = build_loss(cfg, 8, 4)
    assert loss.cfg.temperature == 0.25 and loss.cfg.pristine == "exclude"
    with pytest.raises(ConfigError):
        apply_overrides(PretrainConfig(), ["arniqa_loss.temperature=0"])
