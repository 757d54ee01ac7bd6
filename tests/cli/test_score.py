"""``shamisa score`` and ``shamisa models`` end to end, on generated images and a tiny random model."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import natural_like_image
from PIL import Image
from typer.testing import CliRunner

from shamisa.inference.card import ModelCard
from shamisa.inference.model_file import list_models, save_model
from shamisa.cli.app import app
from shamisa.cli.score_cmd import expand_inputs
from shamisa.models import build_encoder
from shamisa.evaluation.ridge import RidgeHead

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    enc = build_encoder("efficientnet_lite0").eval()
    head = RidgeHead(coef=np.random.default_rng(0).normal(size=2560) * 20, intercept=50.0, alpha=1.0)
    card = ModelCard(name="tiny", encoder=enc.name, feature_dim=1280, crop=32, dataset="synthetic",
                            mos_type="mos", score_range=(0.0, 100.0), description="a test model",
                            metrics={"srcc_median": 0.5, "plcc_median": 0.4, "splits": 10})
    return save_model(tmp_path_factory.mktemp("m") / "tiny.safetensors", enc, head, card)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        arr = (natural_like_image(60 + 10 * i, 80, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"im{i}.png")
    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(folder / "sub" / "deep.jpg")
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def run(*args: str, input: str | None = None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def _csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_stream_and_columns(images, model_file):
    r = run("score", images, "--model", model_file, "-f", "csv", "-q")
    assert r.exit_code == 0, r.output
    rows = _csv_rows(r.stdout)
    assert [Path(x["path"]).name for x in rows] == ["im0.png", "im1.png", "im2.png"]  # sorted, not recursive
    assert list(rows[0]) == ["path", "score", "raw", "width", "height", "flags", "error"]
    for x in rows:
        assert 0.0 <= float(x["score"]) <= 1.0 and x["error"] == ""
        assert abs(float(x["score"]) - float(x["raw"]) / 100) < 1e-5
    assert rows[1]["height"] == "70" and rows[1]["width"] == "80"


def test_recursive_and_summary(images, model_file):
    r = run("score", images, "-r", "--model", model_file, "-f", "jsonl")
    assert r.exit_code == 0
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [Path(x["path"]).name for x in recs] == ["im0.png", "im1.png", "im2.png", "deep.jpg"]
    assert "scored 4 of 4" in r.stderr


def test_json_output_file_is_atomic_and_complete(images, model_file, tmp_path):
    out = tmp_path / "res" / "scores.json"
    r = run("score", images, "--model", model_file, "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    doc = json.loads(out.read_text())
    assert doc["model"]["dataset"] == "synthetic" and doc["summary"]["scored"] == 3
    assert len(doc["results"]) == 3 and all(x["error"] is None for x in doc["results"])
    assert not [p for p in out.parent.iterdir() if p.name != "scores.json"]  # no temporary left over


def test_output_format_from_suffix(images, model_file, tmp_path):
    out = tmp_path / "s.csv"
    assert run("score", images / "im0.png", "--model", model_file, "-o", out).exit_code == 0
    assert out.read_text().startswith("path,score,raw")


def test_table_format(images, model_file):
    r = run("score", images, "--model", model_file, "-f", "table")
    assert r.exit_code == 0
    assert "im0.png" in r.stdout and "score" in r.stdout


def test_glob_and_stdin(images, model_file):
    r = run("score", str(images / "im*.png"), "--model", model_file, "-f", "csv")
    assert len(_csv_rows(r.stdout)) == 3
    listing = f"{images / 'im2.png'}\n\n{images / 'im0.png'}\n"
    r = run("score", "-", "--model", model_file, "-f", "csv", input=listing)
    assert r.exit_code == 0
    assert [Path(x["path"]).name for x in _csv_rows(r.stdout)] == ["im2.png", "im0.png"]


def test_bad_items_reported_rest_scored(images, model_file):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 40)
    r = run("score", images, images / "missing.png", images / "notes.txt", "--model", model_file, "-f", "csv")
    assert r.exit_code == 1
    rows = {Path(x["path"]).name: x for x in _csv_rows(r.stdout)}
    assert set(rows) == {"broken.jpg", "im0.png", "im1.png", "im2.png", "missing.png", "notes.txt"}
    assert rows["missing.png"]["error"] == "no such file" and rows["missing.png"]["score"] == ""
    assert rows["notes.txt"]["error"] == "not a recognised image format"
    assert rows["broken.jpg"]["error"]
    assert all(rows[f"im{i}.png"]["score"] for i in range(3))
    assert "3 failed" in r.stderr and "missing.png: no such file" in r.stderr
    assert "Traceback" not in r.output


def test_fail_fast_stops(images, model_file):
    (images / "a_bad.png").write_bytes(b"garbage")
    r = run("score", images, "--model", model_file, "-f", "csv", "--fail-fast", "--batch-size", "1")
    assert r.exit_code == 1
    rows = _csv_rows(r.stdout)
    assert rows[-1]["error"] and len(rows) == 1  # a_bad.png sorts first
    assert "--fail-fast" in r.stderr


def test_small_image_flagged(tmp_path, model_file):
    Image.fromarray(np.full((20, 25, 3), 90, np.uint8)).save(tmp_path / "small.png")
    r = run("score", tmp_path / "small.png", "--model", model_file, "-f", "jsonl")
    assert r.exit_code == 0
    assert json.loads(r.stdout)["flags"] == ["enlarged"]


@pytest.mark.parametrize("content", [b"", b"\x80\x04K\x01.", b"PK\x03\x04 not a model"])
def test_bad_model_file_is_one_line_error(tmp_path, images, content):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    r = run("score", images, "--model", bad)
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output


def test_no_images_found(tmp_path, model_file):
    (tmp_path / "empty").mkdir()
    r = run("score", tmp_path / "empty", "--model", model_file)
    assert r.exit_code == 2 and "no images found" in r.stderr


def test_models_command_on_file(model_file):
    r = run("models", model_file)
    assert r.exit_code == 0
    assert "a test model" in r.stdout and "SRCC 0.500" in r.stdout
    r = run("models", model_file, "--json")
    assert json.loads(r.stdout)[0]["encoder"] == "efficientnet_lite0"


def test_models_command_lists_bundled():
    r = run("models", "--json")
    names = [d["name"] for d in json.loads(r.stdout)] if r.exit_code == 0 else []
    assert names == list_models()


def test_expand_inputs_order_and_missing(images):
    got = list(expand_inputs([str(images), str(images / "nope.png"), str(images / "*.jpg")], recursive=False))
    assert [Path(g).name for g in got] == ["im0.png", "im1.png", "im2.png", "nope.png", "*.jpg"]


def test_output_errors_are_one_line(images, model_file, tmp_path):
    r = run("score", images, "--model", model_file, "-o", tmp_path)
    assert r.exit_code == 2 and "is a folder" in r.stderr
    r = run("score", images, "--model", model_file, "--device", "cuda:7")
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output


def test_bf16_precision_option(images, model_file):
    r32 = run("score", images, "--model", model_file, "-f", "csv", "-q")
    r16 = run("score", images, "--model", model_file, "-f", "csv", "-q", "--precision", "bf16")
    assert r32.exit_code == 0 and r16.exit_code == 0, r16.output
    a, b = _csv_rows(r32.stdout), _csv_rows(r16.stdout)
    assert [x["path"] for x in a] == [x["path"] for x in b]
    assert all(abs(float(x["score"]) - float(y["score"])) < 0.1 for x, y in zip(a, b, strict=True))


def test_unknown_precision_exits_2(images, model_file):
    r = run("score", images, "--model", model_file, "--precision", "fp16")
    assert r.exit_code == 2
    assert "unknown precision 'fp16'" in r.stderr and "Traceback" not in r.output
