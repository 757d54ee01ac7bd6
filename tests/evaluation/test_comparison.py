"""Benchmark table assembly, output files and method plumbing (no training, no real dataset)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shamisa.evaluation.comparison import (
    ABLATIONS,
    BenchmarkConfig,
    MethodResult,
    encoder_from_run,
    lml_result_rows,
    markdown_table,
    run_benchmark,
    write_outputs,
)
from shamisa.errors import ConfigError


def _fake(key: str, srcc: list[float], plcc: list[float], **kw: object) -> MethodResult:
    return MethodResult(key=key, label=key.upper(), protocol="probe", srcc=srcc, plcc=plcc,
                        splits=list(range(len(srcc))), **kw)  # type: ignore[arg-type]


def test_medians_and_markdown_table() -> None:
    a = _fake("imagenet", [0.5, 0.7, 0.6], [0.55, 0.75, 0.65], source="ImageNet")
    b = _fake("shamisa", [0.8, 0.9], [0.82, 0.92], train_seconds=600.0, budget_minutes=10.0)
    c = MethodResult(key="arniqa", label="ARNIQA", protocol="probe", status="failed", note="boom")
    assert a.srcc_median == pytest.approx(0.6) and b.plcc_median == pytest.approx(0.87)
    assert a.split_value(1) == 0.7 and math.isnan(b.split_value(5))
    md = markdown_table([a, b, c]).splitlines()
    assert len(md) == 5 and md[0].startswith("| method |")
    assert "| IMAGENET | probe | 0.600 | 0.650 | 3 | 0.500 | 0.550 | - | - | ImageNet |" == md[2]
    assert "10.0 min" in md[3] and "| 10 min |" in md[3]
    assert "failed" in md[4] and "boom" in md[4]
    d = c.to_dict()
    assert d["srcc_median"] is None and json.dumps(d)


def test_write_outputs_json_markdown_and_chart(tmp_path: Path) -> None:
    cfg = BenchmarkConfig(root="x", out=str(tmp_path / "res"), chart=str(tmp_path / "docs" / "bench.png"),
                          command="shamisa benchmark --root x")
    rows = [_fake("imagenet", [0.5, 0.7, 0.6], [0.55, 0.75, 0.65]), _fake("lml", [0.8], [0.85], note="1 split")]
    paths = write_outputs(rows, cfg)
    payload = json.loads(paths["json"].read_text())
    assert payload["command"] == "shamisa benchmark --root x"
    assert [r["srcc_median"] for r in payload["results"]] == pytest.approx([0.6, 0.8])
    md = paths["md"].read_text()
    assert "`shamisa benchmark --root x`" in md and "1 split" in md and "| IMAGENET |" in md
    with Image.open(paths["chart"]) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert not list((tmp_path / "res").glob(".*.tmp"))


class _Splits:
    def __init__(self, n: int) -> None:
        self.train = tuple(np.arange(3) for _ in range(n))
        self.val = self.train
        self.test = self.train


def test_run_benchmark_with_fake_runners_records_failures(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(ctx: object) -> MethodResult:
        calls.append("imagenet")
        return _fake("imagenet", [0.4, 0.5], [0.45, 0.55])

    def bad(ctx: object) -> MethodResult:
        calls.append("brisque")
        raise ValueError("no features")

    cfg = BenchmarkConfig(root="x", methods=("imagenet", "brisque"), n_splits=2, out=str(tmp_path),
                          chart=str(tmp_path / "c.png"))
    logs: list[str] = []
    rows, paths = run_benchmark(cfg, log=logs.append, runners={"imagenet": ok, "brisque": bad},
                                dataset=object(), splits=_Splits(2))
    assert calls == ["imagenet", "brisque"]
    assert [r.status for r in rows] == ["ok", "failed"]
    assert "ValueError: no features" in rows[1].note
    assert paths["chart"].is_file()
    stored = json.loads(paths["json"].read_text())
    assert [r["status"] for r in stored["results"]] == ["ok", "failed"]
    assert any("SRCC 0.450" in m for m in logs)


def test_merge_takes_rows_from_earlier_files(tmp_path: Path) -> None:
    first = BenchmarkConfig(root="x", methods=("imagenet",), out=str(tmp_path / "a"), chart=str(tmp_path / "a.png"))
    write_outputs([_fake("imagenet", [0.4, 0.6], [0.5, 0.7])], first)
    second = BenchmarkConfig(root="x", methods=("shamisa",), out=str(tmp_path / "b"), chart=str(tmp_path / "b.png"))
    write_outputs([_fake("shamisa", [0.7, 0.8], [0.75, 0.85])], second)
    ran: list[str] = []

    def brisque(ctx: object) -> MethodResult:
        ran.append("brisque")
        return _fake("brisque", [0.3], [0.35])

    cfg = BenchmarkConfig(root="x", methods=("imagenet", "brisque", "shamisa"), out=str(tmp_path / "c"),
                          chart=str(tmp_path / "c.png"),
                          merge=(str(tmp_path / "a" / "comparison.json"), str(tmp_path / "b" / "comparison.json")))
    rows, _ = run_benchmark(cfg, log=lambda m: None, runners={"brisque": brisque}, dataset=object(),
                            splits=_Splits(2))
    assert ran == ["brisque"]
    assert [r.key for r in rows] == ["imagenet", "brisque", "shamisa"]
    assert rows[0].srcc == [0.4, 0.6] and rows[2].srcc_median == pytest.approx(0.75)
    assert rows[2].details["merged_from"].endswith("b/comparison.json")
    assert "taken from" in (tmp_path / "c" / "comparison.md").read_text()
    # an explicitly given input (here LML results) wins over a merged row
    write_outputs([_fake("lml", [0.1], [0.1])], BenchmarkConfig(root="x", methods=("lml",), out=str(tmp_path / "d"),
                                                                 chart=str(tmp_path / "d.png")))
    res = tmp_path / "result.json"
    res.write_text(json.dumps({"split": 0, "test_srcc": 0.6, "test_plcc": 0.65, "train_seconds": 60.0, "steps": 9,
                               "epochs_done": 0.5, "config": {"max_minutes": 1.0, "crop": 64, "saliency": "spectral"}}))
    cfg2 = BenchmarkConfig(root="x", methods=("lml",), out=str(tmp_path / "e"), chart=str(tmp_path / "e.png"),
                           merge=(str(tmp_path / "d" / "comparison.json"),), lml_results=(str(res),))
    rows2, _ = run_benchmark(cfg2, log=lambda m: None, dataset=object(), splits=_Splits(10))
    assert rows2[0].srcc == [0.6] and "1 of the 10 splits" in rows2[0].note
    with pytest.raises(ConfigError):
        run_benchmark(BenchmarkConfig(root="x", merge=(str(tmp_path / "nope.json"),)), dataset=object(),
                      splits=_Splits(2), log=lambda m: None)


def test_lml_result_rows_fold_splits() -> None:
    runs = [
        {"split": 1, "test_srcc": 0.7, "test_plcc": 0.72, "train_seconds": 300.0, "eval_seconds": 20.0,
         "config": {"max_minutes": 5.0}, "best_epoch": 2.0, "steps": 50},
        {"split": 0, "test_srcc": 0.8, "test_plcc": 0.81, "train_seconds": 290.0, "eval_seconds": 22.0,
         "config": {"max_minutes": 5.0}, "best_epoch": 1.0, "steps": 48},
    ]
    row = lml_result_rows(runs)
    assert row.splits == [0, 1] and row.srcc == [0.8, 0.7]
    assert row.train_seconds == pytest.approx(590.0) and row.protocol == "fine-tune"
    assert row.split_value(0) == 0.8 and row.srcc_median == pytest.approx(0.75)


def test_lml_note_names_the_steps_once_when_every_split_ran_the_same() -> None:
    from shamisa.evaluation.comparison import _lml_note

    same = [{"split": s, "steps": 81, "epochs_done": 0.797, "config": {"crop": 128, "saliency": "spectral"}}
            for s in range(10)]
    note = _lml_note(same, 10)
    assert "81 steps / 0.80 epochs on each split" in note and note.count("81 steps") == 1
    assert "of the 10 splits" not in note
    mixed = _lml_note([dict(same[0]), dict(same[1], steps=40, epochs_done=0.4)], 10)
    assert "81 steps / 0.80 epochs, 40 steps / 0.40 epochs" in mixed and "2 of the 10 splits" in mixed


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        BenchmarkConfig(root="x", methods=("imagenet", "clip"))
    with pytest.raises(ConfigError):
        BenchmarkConfig(root="x", budget_minutes=0)
    with pytest.raises(ConfigError):
        BenchmarkConfig(root="x", lml_splits=11)


def test_ablation_overrides_build_valid_loss_configs() -> None:
    from shamisa.configs import apply_overrides, preset

    base = preset("cpu")
    for name, overrides in ABLATIONS.items():
        cfg = apply_overrides(base, [f"loss.{k}={v}" for k, v in overrides.items()])
        active = cfg.loss.active_branches()
        if name == "metadata_only":
            assert "knn" not in active and "transport" not in active and "ref_dist" in active
        elif name == "features_only":
            assert set(active) == {"knn", "transport"}
        elif name == "no_transport":
            assert "transport" not in active and "knn" in active
        else:
            assert cfg.loss.binary is True


def test_arniqa_loss_is_in_the_registry() -> None:
    from shamisa.configs import apply_overrides, preset
    from shamisa.objectives import build_loss
    from shamisa.objectives.arniqa import ArniqaObjective

    cfg = apply_overrides(preset("tiny"), ["method=arniqa"])
    assert isinstance(build_loss(cfg, 16, 8), ArniqaObjective)


def test_encoder_from_file_and_checkpoint_folder(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from shamisa.models import build_encoder, save_encoder
    from shamisa.training.checkpoint import CHECKPOINT_FORMAT

    enc = build_encoder("efficientnet_lite0")
    f = save_encoder(tmp_path / "enc.safetensors", enc, {"method": "shamisa"})
    loaded, info = encoder_from_run(f)
    assert info["meta"]["method"] == "shamisa"
    # a run folder holding only a pretraining checkpoint (keys encoder.*, projector.*)
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    tensors = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    tensors["projector.w"] = torch.zeros(2)
    save_file(tensors, str(run / "ckpt" / "w.safetensors"))
    save_file({"x": torch.zeros(1)}, str(run / "ckpt" / "o.safetensors"))
    record = {"format": CHECKPOINT_FORMAT, "step": 7, "files": {"weights": "w.safetensors", "optimizer": "o.safetensors"}}
    (run / "ckpt" / "last.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps({"encoder": "efficientnet_lite0"}))
    (run / "metrics.jsonl").write_text('{"step": 5, "elapsed_s": 12.5}\n{"step": 7, "elapsed_s": 20.0}\n')
    from_ckpt, info2 = encoder_from_run(run)
    assert info2["step"] == 7 and info2["train_seconds"] == 20.0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(from_ckpt.eval()(x), enc.eval()(x), atol=1e-6)


def test_cli_rejects_unknown_method(tmp_path: Path) -> None:
    from shamisa.cli.app import app

    result = CliRunner().invoke(app, ["benchmark", "--root", str(tmp_path), "--methods", "imagenet,clip",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError)


def test_ablation_subset_runs_only_the_named_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shamisa.evaluation.comparison as bm

    ran: list[str] = []

    def fake_ablation(ctx: object, name: str) -> MethodResult:
        ran.append(name)
        return _fake(f"ablation:{name}", [0.5], [0.5])

    monkeypatch.setattr(bm, "run_ablation", fake_ablation)
    cfg = BenchmarkConfig(root="x", methods=(), ablation_names=("binary_relations", "no_transport"),
                          out=str(tmp_path), chart=str(tmp_path / "c.png"))
    rows, _ = run_benchmark(cfg, log=lambda m: None, dataset=object(), splits=_Splits(1))
    assert ran == ["no_transport", "binary_relations"]  # table order of ABLATIONS
    assert [r.key for r in rows] == ["ablation:no_transport", "ablation:binary_relations"]
    with pytest.raises(ConfigError, match="unknown ablation"):
        BenchmarkConfig(root="x", ablation_names=("no_knn",))


def test_budget_phrase_and_tick_labels() -> None:
    from shamisa.evaluation.comparison import _tick_label, budget_phrase

    cfg = BenchmarkConfig(root="x", budget_minutes=15)
    trained = _fake("shamisa", [0.7], [0.7], train_seconds=900.0, budget_minutes=15.0)
    reused = _fake("arniqa", [0.7], [0.7], train_seconds=1200.0, budget_minutes=None)
    frozen = _fake("imagenet", [0.7], [0.7])
    assert budget_phrase([frozen, trained], cfg) == "15 min per trained method"
    assert budget_phrase([frozen, trained, reused], cfg) == "training time and budget per row"
    assert budget_phrase([frozen], cfg) == "no trained method"
    label = _tick_label("SHAMISA, metadata branches only")
    assert all(len(line) <= 18 for line in label.split("\n")) and label.replace("\n", " ") == "SHAMISA, metadata branches only"
    assert _tick_label("BRISQUE + SVR") == "BRISQUE\n+ SVR"


def test_describe_paths_shortens_many_result_files(tmp_path) -> None:
    from shamisa.evaluation.comparison import describe_paths

    assert describe_paths(["a/r.json", "b/r.json"]) == "a/r.json, b/r.json"
    many = [str(tmp_path / f"clive-s{s}" / "result.json") for s in range(10)]
    assert describe_paths(many) == f"10 result files under {tmp_path.resolve()}"
