"""The pretraining loop on generated images: outputs, determinism, non-finite handling, the loss hook,
export, the dataset and the item sampler."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import make_images
from safetensors.torch import load_file
from torch import nn

from shamisa.configs import PretrainConfig, apply_overrides, preset
from shamisa.errors import ConfigError, DatasetError, TrainingError


def tiny_cfg(tmp_path: Path, out: str = "run", *extra: str) -> PretrainConfig:
    data = tmp_path / "data"
    if not data.exists():
        make_images(data)
    return apply_overrides(preset("tiny"), [f"data_dirs={data}", f"out_dir={tmp_path / out}", *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[PretrainConfig, Path]:
    from shamisa.training import pretrain

    tmp = tmp_path_factory.mktemp("tiny")
    cfg = tiny_cfg(tmp, "run", "max_steps=3")
    return cfg, pretrain(cfg)


def test_tiny_run_writes_checkpoint_metrics_and_plot(tiny_run) -> None:
    cfg, run = tiny_run
    record = json.loads((run / "ckpt" / "last.json").read_text())
    assert record["step"] == 3 and record["finished"] and record["stop_reason"] == "done"
    assert PretrainConfig.from_dict(record["config"]) == cfg
    assert set(record["rng"]) >= {"torch_cpu", "numpy", "python"}
    weights = load_file(str(run / "ckpt" / "last.safetensors"))
    assert any(k.startswith("encoder.backbone.") for k in weights)
    assert any(k.startswith("projector.") for k in weights) and any(k.startswith("loss.") for k in weights)
    optim = load_file(str(run / "ckpt" / "last-optim.safetensors"))
    assert optim and all(k.endswith("momentum_buffer") for k in optim)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "var", "cov", "rel", "pair", "align", "reg", "w_knn", "lr", "t_data", "t_forward", "t_backward"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert (run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert PretrainConfig.from_dict(json.loads((run / "config.json").read_text())) == cfg
    # only the current step's files are kept
    assert sorted(p.name for p in (run / "ckpt").glob("step-*")) == ["step-00000003-optim.safetensors", "step-00000003.safetensors"]


def test_lr_follows_cosine_warm_restarts_per_iteration(tiny_run) -> None:
    cfg, run = tiny_run
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 6 // cfg.items_per_step  # 6 images, 2 items a step, T0 = 1 epoch
    for r in rows:
        t = (r["step"] - 1) / steps_per_epoch
        expected = cfg.eta_min + (cfg.lr - cfg.eta_min) * (1 + math.cos(math.pi * t)) / 2
        assert r["lr"] == pytest.approx(expected, rel=1e-9)


def test_rerun_of_a_finished_run_changes_nothing(tiny_run, capsys) -> None:
    from shamisa.training import pretrain

    cfg, run = tiny_run
    before = (run / "ckpt" / "last.json").read_text()
    pretrain(cfg)
    assert (run / "ckpt" / "last.json").read_text() == before
    assert "already finished" in capsys.readouterr().err


def test_resume_refuses_a_different_config(tiny_run) -> None:
    from shamisa.training import pretrain

    cfg, _ = tiny_run
    with pytest.raises(ConfigError, match="different config"):
        pretrain(apply_overrides(cfg, ["lr=0.5"]))


def test_checkpoint_from_before_a_new_key_still_resumes(tiny_run) -> None:
    from shamisa.configs import config_to_dict
    from shamisa.training.checkpoint import check_resumable

    cfg, _ = tiny_run
    current = config_to_dict(cfg)
    older = {k: v for k, v in current.items() if k not in ("encoder_lr_scale", "jpeg2000_impl", "encoder_freeze_steps")}
    check_resumable(older, current)  # the missing keys take their defaults, which the run uses
    with pytest.raises(ConfigError, match="jpeg2000_impl"):
        check_resumable(older, config_to_dict(apply_overrides(cfg, ["jpeg2000_impl=approx"])))


def test_export_writes_a_loadable_encoder(tiny_run, tmp_path) -> None:
    from typer.testing import CliRunner

    from shamisa.cli.app import app
    from shamisa.models import load_encoder

    _, run = tiny_run
    out = tmp_path / "enc.safetensors"
    res = CliRunner().invoke(app, ["export", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output
    encoder, meta = load_encoder(out)
    assert meta["step"] == 3 and meta["config"]["encoder"] == "efficientnet_lite0"
    weights = load_file(str(run / "ckpt" / "last.safetensors"))
    for k, v in encoder.backbone.state_dict().items():
        assert torch.equal(v, weights[f"encoder.backbone.{k}"]), k
    res16 = CliRunner().invoke(app, ["export", str(run / "ckpt" / "last.json"), "-o", str(tmp_path / "h.safetensors"), "--fp16"])
    assert res16.exit_code == 0 and (tmp_path / "h.safetensors").stat().st_size < out.stat().st_size * 0.6
    bad = CliRunner().invoke(app, ["export", str(tmp_path), "-o", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "no pretraining checkpoint" in bad.output


def test_same_seed_gives_identical_weights(tiny_run, tmp_path) -> None:
    from shamisa.training import pretrain

    cfg, run = tiny_run
    again = pretrain(apply_overrides(cfg, [f"out_dir={tmp_path / 'again'}"]))
    a = load_file(str(run / "ckpt" / "last.safetensors"))
    b = load_file(str(again / "ckpt" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = pretrain(apply_overrides(cfg, [f"out_dir={tmp_path / 'other'}", "seed=1", "max_steps=1"]))
    c = load_file(str(other / "ckpt" / "last.safetensors"))
    assert not torch.equal(a["projector.net.0.weight"], c["projector.net.0.weight"])


class _NaNAfter(nn.Module):
    """Wraps the real loss; returns NaN from call ``start`` on."""

    def __init__(self, inner: nn.Module, start: int) -> None:
        super().__init__()
        self.inner, self.start, self.calls = inner, start, 0

    def forward(self, *args):
        out = self.inner(*args)
        self.calls += 1
        if self.calls > self.start:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nonfinite_losses_stop_training_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    from shamisa.objectives import LOSSES
    from shamisa.training import pretrain

    real = LOSSES["shamisa"]
    monkeypatch.setitem(LOSSES, "shamisa", lambda c, d, e: _NaNAfter(real(c, d, e), start=2))
    cfg = tiny_cfg(tmp_path, "run", "max_steps=20", "epochs=10", "max_nonfinite=2", "checkpoint_every=2")
    with pytest.raises(TrainingError, match="2 non-finite losses in a row"):
        pretrain(cfg)
    record = json.loads((tmp_path / "run" / "ckpt" / "last.json").read_text())
    assert record["step"] == 2  # steps 3 and 4 were skipped; no checkpoint written after them
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "nonfinite_loss"] == [3, 4]


def test_a_registered_loss_plugs_in(tmp_path, monkeypatch) -> None:
    from shamisa.objectives import LOSSES
    from shamisa.training import pretrain

    class MeanNorm(nn.Module):
        def forward(self, z_ref, z_dist, h_ref, h_dist, meta):
            assert z_dist.shape[0] == z_ref.shape[0] * meta["indices"].shape[1] * meta["indices"].shape[2]
            loss = z_ref.pow(2).mean() + z_dist.pow(2).mean()
            return {"loss": loss, "norm": float(loss.detach())}

    monkeypatch.setitem(LOSSES, "arniqa", lambda c, d, e: MeanNorm())
    run = pretrain(tiny_cfg(tmp_path, "run", "method=arniqa", "max_steps=1"))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["norm"] == pytest.approx(row["loss"])


def test_arniqa_method_trains_with_the_contrastive_loss(tmp_path) -> None:
    from shamisa.training import pretrain

    run = pretrain(tiny_cfg(tmp_path, "run", "method=arniqa", "max_steps=1"))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "nt_xent" in row and math.isfinite(row["loss"]) and row["loss"] > 0


def test_unregistered_method_is_a_config_error(tmp_path, monkeypatch) -> None:
    from shamisa.objectives import LOSSES
    from shamisa.training import pretrain

    monkeypatch.delitem(LOSSES, "arniqa", raising=False)
    with pytest.raises(ConfigError, match="no loss registered"):
        pretrain(tiny_cfg(tmp_path, "run", "method=arniqa"))


# ------------------------------------------------------------------------------------------- data


def test_dataset_finds_images_excludes_and_skips_bad_files(tmp_path) -> None:
    from shamisa.training.data import PristineDataset

    make_images(tmp_path / "a", n=3)
    make_images(tmp_path / "a" / "held_out", n=2)
    (tmp_path / "a" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "a" / "notes.txt").write_text("x")
    ds = PristineDataset(
        [tmp_path / "a"], exclude=["held_out"], patch_size=32, n_refs=2, n_comps=2, n_levels=3, max_distortions=2, seed=1
    )
    assert len(ds) == 3 and all("held_out" not in str(p) for p in ds.paths)
    assert [Path(p).name for p, _ in ds.skipped] == ["broken.png"]
    item = ds[(0, 1)]
    assert item.dist.shape == (4, 2, 3, 3, 32, 32) and item.refs.shape == (4, 3, 32, 32)
    again = ds[(0, 1)]
    assert torch.equal(item.dist, again.dist) and torch.equal(item.indices, again.indices)
    assert not torch.equal(ds[(1, 1)].refs, item.refs)  # another epoch, other crops


def test_dataset_errors(tmp_path) -> None:
    from shamisa.training.data import PristineDataset

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable images"):
        PristineDataset([tmp_path / "empty"])
    with pytest.raises(DatasetError, match="not a folder"):
        PristineDataset([tmp_path / "missing"])
    with pytest.raises(DatasetError):
        PristineDataset([])


def test_item_sampler_shards_each_step_across_ranks() -> None:
    from shamisa.training.data import ItemSampler, epoch_order

    single = list(ItemSampler(11, items_per_rank=4, seed=3, epoch=2))
    r0 = list(ItemSampler(11, items_per_rank=2, seed=3, epoch=2, rank=0, world_size=2))
    r1 = list(ItemSampler(11, items_per_rank=2, seed=3, epoch=2, rank=1, world_size=2))
    assert len(single) == 8 and len(r0) == len(r1) == 4
    for s in range(2):  # step s: rank 0 then rank 1 rebuild the single-process step
        assert r0[2 * s : 2 * s + 2] + r1[2 * s : 2 * s + 2] == single[4 * s : 4 * s + 4]
    assert [i for _, i in single] == epoch_order(11, 3, 2)[:8]
    resumed = list(ItemSampler(11, items_per_rank=4, seed=3, epoch=2, start_step=1))
    assert resumed == single[4:]
    assert epoch_order(11, 3, 2) != epoch_order(11, 3, 3)


def test_cli_pretrain_runs_and_prints_the_run_folder(tmp_path) -> None:
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    data = make_images(tmp_path / "data")
    out = tmp_path / "cli-run"
    res = CliRunner().invoke(
        app, ["pretrain", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", "1"]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "ckpt" / "last.json").read_text())["step"] == 1
    missing = CliRunner().invoke(app, ["pretrain", "--preset", "tiny", "--data", str(tmp_path / "nope"), "--out", str(out)])
    assert missing.exit_code == 2 and "not a folder of images" in missing.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_with_synthesis_on_the_device(tmp_path) -> None:
    from shamisa.training import pretrain

    cfg = tiny_cfg(tmp_path, "run", "device=cuda", "amp=auto", "synth_on_device=true", "max_steps=2", "channels_last=true")
    run = pretrain(cfg)
    record = json.loads((run / "ckpt" / "last.json").read_text())
    assert record["step"] == 2 and record["scaler"] is not None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_encoder_lr_scale_puts_the_encoder_in_its_own_group(tmp_path) -> None:
    from shamisa.training.model import build_model, param_groups

    cfg = tiny_cfg(tmp_path, "run", "encoder_lr_scale=0.1", "lr=0.01")
    model = build_model(cfg)
    groups = param_groups(model, cfg)
    enc = {id(p) for p in model.encoder.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == enc and groups[1]["lr"] == pytest.approx(0.001)
    assert not enc & {id(p) for p in groups[0]["params"]} and "lr" not in groups[0]
    trainable = sum(p.requires_grad for p in model.parameters())
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == trainable
    # one SGD step from zero momentum moves each parameter by lr * grad (weight decay off)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    for g, lr in ((groups[0], 0.01), (groups[1], 0.001)):
        for p in g["params"]:
            b = before[next(i for i, q in enumerate(params) if q is p)]
            torch.testing.assert_close(b - p.detach(), torch.full_like(p, lr))
    # scale 1 keeps the single group of earlier checkpoints
    assert len(param_groups(model, tiny_cfg(tmp_path, "run2"))) == 1
    with pytest.raises(ConfigError, match="encoder_lr_scale"):
        tiny_cfg(tmp_path, "run3", "encoder_lr_scale=0")


def test_encoder_freeze_steps_train_only_the_projector_first(tmp_path) -> None:
    """While frozen the encoder's parameters stay at their initial values (batch-norm statistics may
    still update) and the projector moves; from the first unfrozen step the encoder moves too."""
    from shamisa.training import pretrain
    from shamisa.training.model import build_model

    def params(run: Path, prefix: str) -> dict[str, torch.Tensor]:
        w = load_file(str(run / "ckpt" / "last.safetensors"))
        return {k: w[k] for k in names if k.startswith(prefix)}

    names = {n for n, _ in build_model(tiny_cfg(tmp_path, "probe")).named_parameters()}
    frozen2 = pretrain(tiny_cfg(tmp_path, "f2s2", "max_steps=2", "encoder_freeze_steps=2"))
    frozen1 = pretrain(tiny_cfg(tmp_path, "f1s1", "max_steps=1", "encoder_freeze_steps=1"))
    moving = pretrain(tiny_cfg(tmp_path, "f1s2", "max_steps=2", "encoder_freeze_steps=1"))
    enc2, enc1, enc_moving = (params(r, "encoder.") for r in (frozen2, frozen1, moving))
    assert enc2 and all(torch.equal(enc2[k], enc1[k]) for k in enc2)  # both still the initial encoder
    assert any(not torch.equal(enc2[k], enc_moving[k]) for k in enc2)
    proj2, proj1 = params(frozen2, "projector."), params(frozen1, "projector.")
    assert proj2 and any(not torch.equal(proj2[k], proj1[k]) for k in proj2)
    with pytest.raises(ConfigError, match="encoder_freeze_steps"):
        tiny_cfg(tmp_path, "bad", "encoder_freeze_steps=-1")


def test_pretrain_with_the_jpeg2000_approximation(tmp_path, monkeypatch) -> None:
    """jpeg2000_impl=approx reaches every structured batch pretrain() builds, and pretrain() leaves the
    process as it was: no environment variable set, the engine's default still the real codec."""
    from shamisa.distortions import apply_distortion, builder
    from shamisa.distortions.codecs import has_jpeg2000, jpeg2000_pillow
    from shamisa.training import pretrain

    seen: list[str] = []
    real_build = builder.build_structured_batch

    def spy(*args, **kwargs):
        seen.append(kwargs.get("jpeg2000_impl", "openjpeg"))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(builder, "build_structured_batch", spy)
    env_before = dict(os.environ)
    cfg = tiny_cfg(tmp_path, "run", "max_steps=1", "jpeg2000_impl=approx")
    run = pretrain(cfg)
    assert json.loads((run / "ckpt" / "last.json").read_text())["config"]["jpeg2000_impl"] == "approx"
    assert seen and set(seen) == {"approx"}
    assert dict(os.environ) == env_before
    if has_jpeg2000():
        x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
        v = torch.tensor([45.0, 120.0])
        assert torch.equal(apply_distortion(x, "jpeg2000", v, torch.Generator()), jpeg2000_pillow(x, v))
    with pytest.raises(ConfigError, match="jpeg2000_impl"):
        tiny_cfg(tmp_path, "run2", "jpeg2000_impl=fast")


def test_encoder_frozen_stages_keep_the_stem_and_early_stages(tmp_path) -> None:
    """With encoder_frozen_stages=2 (tiny preset: bn_mode=train) the stem, the first two stages' weights
    and their batch-norm statistics stay exactly at the start values while the later stages move."""
    from shamisa.training import pretrain
    from shamisa.training.checkpoint import seed_everything
    from shamisa.training.model import build_model

    cfg = tiny_cfg(tmp_path, "fz", "max_steps=2", "encoder_frozen_stages=2")
    seed_everything(cfg.seed)  # the same random init as pretrain() builds
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    w = load_file(str(pretrain(cfg) / "ckpt" / "last.safetensors"))
    # Lite0: stage 1 has 1 block, stage 2 has 2 blocks -> blocks 0..2 frozen, block 3 onwards trains
    frozen = [k for k in w if k.startswith(("encoder.backbone._conv_stem", "encoder.backbone._bn0"))
              or any(k.startswith(f"encoder.backbone._blocks.{i}.") for i in range(3))]
    moving = [k for k in w if k.startswith("encoder.backbone._blocks.3.") and "weight" in k]
    assert frozen and moving
    assert all(torch.equal(w[k], start[k]) for k in frozen)  # running stats included
    assert any(not torch.equal(w[k], start[k]) for k in moving)
    with pytest.raises(ConfigError, match="encoder_frozen_stages"):
        tiny_cfg(tmp_path, "bad", "encoder_frozen_stages=-1")
    with pytest.raises(ConfigError, match="stages"):
        build_model(tiny_cfg(tmp_path, "bad2", "encoder_frozen_stages=8"))


def test_pretraining_on_the_multilevel_readout(tmp_path) -> None:
    """With readout=multilevel the projector sees the multilevel features (Lite0: 1904), the relation
    objective moves the middle stages through them, and the exported encoder is a plain encoder file."""
    from shamisa.models import build_encoder, load_encoder
    from shamisa.training import export_encoder, pretrain
    from shamisa.training.checkpoint import seed_everything
    from shamisa.training.model import build_model

    cfg = tiny_cfg(tmp_path, "ml", "max_steps=2", "readout=multilevel", "encoder_frozen_stages=1")
    model = build_model(cfg)
    assert model.encoder.readout == "multilevel" and model.projector.in_dim == 1904
    assert getattr(model.encoder, "frozen_modules", None)  # freezing applies to the readout's backbone
    seed_everything(cfg.seed)
    start = {k: v.clone() for k, v in build_model(cfg).state_dict().items()}
    run = pretrain(cfg)
    w = load_file(str(run / "ckpt" / "last.safetensors"))
    assert json.loads((run / "ckpt" / "last.json").read_text())["config"]["readout"] == "multilevel"
    assert any(not torch.equal(w[k], start[k]) for k in w if k.startswith("encoder.backbone._blocks.9."))
    enc, _ = load_encoder(export_encoder(run, tmp_path / "enc.safetensors"))
    assert enc.readout == "head" and enc.state_dict().keys() == build_encoder("efficientnet_lite0").state_dict().keys()
    with pytest.raises(ConfigError, match="readout"):
        tiny_cfg(tmp_path, "bad", "readout=gem")


def test_logged_step_timings_are_consistent(tiny_run) -> None:
    """Each logged row's timings are non-negative, the step's is the sum of its parts, and no part is
    longer than the run (a sign or sum slip in the step's clock arithmetic breaks one of these)."""
    _, run = tiny_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "t_step" in r]
    assert steps
    for r in steps:
        parts = (r["t_data"], r["t_forward"], r["t_backward"])
        assert all(0.0 <= p < 600.0 for p in parts), r
        assert r["t_step"] == pytest.approx(sum(parts), rel=1e-6, abs=1e-9), r
