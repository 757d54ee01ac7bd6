"""The public scoring API and the model file format, on a tiny randomly initialised model (crop 32)."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shamisa.inference.card import ModelCard, raw_to_score
from shamisa.inference.metric import ShamisaMetric, create_metric
from shamisa.inference.model_file import read_card, read_model_file, save_model
from shamisa.inference.preprocess import prepare_image
from shamisa.inference.quality_model import QualityModel, cpu_has_native_bf16, load
from shamisa.errors import ImageLoadError, ModelFileError
from shamisa.evaluation.metrics import srcc
from shamisa.models import build_encoder, save_encoder
from shamisa.evaluation.ridge import RidgeHead
from conftest import natural_like_image

CROP = 32
REPO = Path(__file__).resolve().parents[2]


def make_tiny_model(path: Path, *, mos_type: str = "mos", score_range=(0.0, 100.0), seed: int = 0,
                    dtype: torch.dtype | None = torch.float16) -> tuple[Path, torch.nn.Module, RidgeHead]:
    """A random EfficientNet-Lite0 + random ridge head at crop 32, written as a model file."""
    torch.manual_seed(seed)
    enc = build_encoder("efficientnet_lite0").eval()
    rng = np.random.default_rng(seed)
    head = RidgeHead(coef=rng.normal(size=2 * enc.feature_dim) * 20.0, intercept=50.0, alpha=1.0)
    card = ModelCard(name="tiny", encoder=enc.name, feature_dim=enc.feature_dim, crop=CROP,
                            dataset="synthetic", mos_type=mos_type, score_range=score_range,
                            metrics={"srcc_median": 0.5, "plcc_median": 0.5, "splits": 10})
    save_model(path, enc, head, card, dtype=dtype)
    return path, enc, head


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, torch.nn.Module, RidgeHead]:
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def _loaded() -> dict[str, QualityModel]:
    return {}


@pytest.fixture
def model(tiny, _loaded, device) -> QualityModel:
    """The tiny model loaded on the test's device (``--device``), once per device and module."""
    if str(device) not in _loaded:
        _loaded[str(device)] = load(tiny[0], device=str(device))
    return _loaded[str(device)]


def _png(tmp_path: Path, name: str, seed: int, h: int = 70, w: int = 90) -> Path:
    arr = (natural_like_image(h, w, seed=seed).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    p = tmp_path / name
    Image.fromarray(arr).save(p)
    return p


# ----------------------------------------------------------------------------------------- file format


def test_roundtrip_card_and_tensors(tiny, model):
    path, enc, head = tiny
    card = read_card(path)
    assert card.encoder == "efficientnet_lite0" and card.crop == CROP and card.feature_dim == 1280
    assert card.mos_type == "mos" and card.score_range == (0.0, 100.0)
    assert card.metrics["splits"] == 10
    meta_card, enc_t, head_t = read_model_file(path)
    assert all(v.dtype == torch.float16 for v in enc_t.values() if v.is_floating_point())
    assert set(enc_t) == set(enc.backbone.state_dict())
    np.testing.assert_allclose(model.coef.cpu().numpy(), head.coef.astype(np.float32), rtol=1e-6)
    assert path.stat().st_size < 30e6


def test_fp16_file_scores_close_to_fp32(tmp_path, tiny):
    p32, _, _ = make_tiny_model(tmp_path / "m32.safetensors", dtype=None)
    imgs = torch.stack([natural_like_image(64, 80, seed=s) for s in range(6)])
    s16 = load(tiny[0]).score(imgs, return_raw=True)
    s32 = load(p32).score(imgs, return_raw=True)
    assert np.abs(s16.score - s32.score).max() < 2e-3
    assert srcc(s16.raw, s32.raw) > 0.9


def test_fp32_file_is_exact(tmp_path):
    p, enc, head = make_tiny_model(tmp_path / "exact.safetensors", dtype=None)
    m = load(p)
    for k, v in enc.backbone.state_dict().items():
        assert torch.equal(m.encoder.backbone.state_dict()[k], v)


def test_scores_match_the_evaluation_protocol(tmp_path, tiny, model):
    """The scorer's raw score equals probe features + head.predict_images (what `evaluate` uses)."""
    from shamisa.evaluation.features import extract_features

    paths = [str(_png(tmp_path, f"p{i}.png", i)) for i in range(4)]
    feats = extract_features(model.encoder, paths, crop=CROP, num_workers=0, progress=False)
    expected = model.head.predict_images(feats)
    got = model.score(paths, return_raw=True).raw
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "corrupt,match",
    [
        ("truncate", "truncated|corrupt"),
        ("flip", "checksum"),
        ("pickle", "pickle"),
        ("torch_save", "zip|PyTorch"),
        ("empty", "empty"),
        ("encoder_file", "not a shamisa model file"),
        ("version", "version"),
        ("garbage", "not a safetensors"),
    ],
)
def test_bad_model_files(tmp_path, tiny, corrupt, match):
    src = tiny[0].read_bytes()
    bad = tmp_path / "bad.safetensors"
    if corrupt == "truncate":
        bad.write_bytes(src[: len(src) // 2])
    elif corrupt == "flip":
        b = bytearray(src)
        b[-100] ^= 0xFF
        bad.write_bytes(bytes(b))
    elif corrupt == "pickle":
        bad.write_bytes(pickle.dumps({"a": 1}))
    elif corrupt == "torch_save":
        torch.save({"w": torch.zeros(2)}, bad)
    elif corrupt == "empty":
        bad.write_bytes(b"")
    elif corrupt == "encoder_file":
        save_encoder(bad, build_encoder("efficientnet_lite0"))
    elif corrupt == "version":
        (n,) = struct.unpack("<Q", src[:8])
        header = json.loads(src[8 : 8 + n])
        header["__metadata__"]["format_version"] = "99"
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (n - len(raw)) if len(raw) <= n else b""
        assert len(raw) == n
        bad.write_bytes(src[:8] + raw + src[8 + n :])
    elif corrupt == "garbage":
        bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all" + b"x" * 64)
    with pytest.raises(ModelFileError, match=match):
        load(bad)


def test_missing_model_and_unknown_name(tmp_path):
    with pytest.raises(ModelFileError, match="no such model"):
        load(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="directory"):
        load(tmp_path)


def test_head_size_must_match_card(tmp_path):
    enc = build_encoder("efficientnet_lite0")
    card = ModelCard(name="x", encoder=enc.name, feature_dim=1280, crop=CROP, dataset="d", mos_type="mos",
                            score_range=(0, 1))
    with pytest.raises(ModelFileError, match="coefficients"):
        save_model(tmp_path / "x.safetensors", enc, RidgeHead(np.zeros(10), 0.0, 1.0), card)


@pytest.mark.parametrize("field,value", [("mos_type", "zscore"), ("score_range", (5, 5)), ("crop", 4)])
def test_card_validation(field, value):
    kw = dict(name="x", encoder="efficientnet_lite0", feature_dim=1280, crop=CROP, dataset="d", mos_type="mos",
              score_range=(0, 1))
    kw[field] = value
    with pytest.raises(ModelFileError):
        ModelCard(**kw)


# ----------------------------------------------------------------------------------------- score mapping


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=20),
    lo=st.floats(-100, 100),
    width=st.floats(0.1, 200),
    dmos=st.booleans(),
)
def test_raw_to_score_properties(raw, lo, width, dmos):
    rng = (lo, lo + width)
    s = raw_to_score(np.array(raw), rng, "dmos" if dmos else "mos")
    assert ((s >= 0) & (s <= 1)).all()
    order = np.argsort(raw, kind="stable")
    diffs = np.diff(s[order])
    assert (diffs <= 1e-12).all() if dmos else (diffs >= -1e-12).all()  # monotone, flipped for DMOS


def test_raw_to_score_endpoints():
    assert raw_to_score(0.0, (0, 100), "mos") == 0.0
    assert raw_to_score(100.0, (0, 100), "mos") == 1.0
    assert raw_to_score(25.0, (0, 100), "mos") == 0.25
    assert raw_to_score(25.0, (0, 100), "dmos") == 0.75


def test_dmos_model_flips_direction(tmp_path):
    p_mos, _, _ = make_tiny_model(tmp_path / "mos.safetensors", seed=3)
    p_dmos, _, _ = make_tiny_model(tmp_path / "dmos.safetensors", seed=3, mos_type="dmos")
    x = torch.stack([natural_like_image(64, 64, seed=s) for s in range(3)])
    a, b = load(p_mos).score(x, return_raw=True), load(p_dmos).score(x, return_raw=True)
    np.testing.assert_allclose(a.raw, b.raw, rtol=1e-6)
    np.testing.assert_allclose(a.score, 1.0 - b.score, atol=1e-9)


# ----------------------------------------------------------------------------------------- inputs


def test_input_types_agree(tmp_path, model):
    p = _png(tmp_path, "a.png", 1)
    arr = np.array(Image.open(p).convert("RGB"))
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    values = [
        model.score(p),
        model.score(str(p)),
        model.score(Image.open(p)),
        model.score(arr),
        model.score(arr.astype(np.float32) / 255),
        model.score(t),
        float(model.score(t[None])[0]),
    ]
    assert all(isinstance(v, float) for v in values)
    np.testing.assert_allclose(values, values[0], atol=1e-6)


def test_optimized_encoder_matches_eager(tiny):
    x = torch.stack([natural_like_image(64, 72, seed=s) for s in range(3)])
    fast = load(tiny[0], optimize=True).score(x, return_raw=True).raw
    eager = load(tiny[0], optimize=False).score(x, return_raw=True).raw
    np.testing.assert_allclose(fast, eager, rtol=1e-5, atol=1e-4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bf16_precision_close_to_fp32_and_keeps_weights(tiny):
    """bf16 inference: features and raw predictions within a few per cent of fp32, and the model's own
    encoder weights untouched (the bf16 copy is separate)."""
    x = torch.stack([natural_like_image(64, 72, seed=s) for s in range(8)])
    crops = torch.stack([prepare_image(img, CROP).crops for img in x])
    m32 = load(tiny[0], optimize=False)
    with torch.inference_mode():
        f32 = m32.features(crops)
    for optimize in (False, True):
        m16 = load(tiny[0], precision="bf16", optimize=optimize)
        assert m16.precision == "bf16"
        with torch.inference_mode():
            f16 = m16.features(crops)
        assert f16.dtype == torch.float32 and f16.shape == f32.shape
        assert 0.0 < _rel(f16, f32) < 0.1  # bf16 really ran (not identical), and stayed close
        r16, r32 = m16.raw_from_crops(crops).numpy(), m32.raw_from_crops(crops).numpy()
        assert np.abs(r16 - r32).max() < 0.03 * np.abs(r32).mean()
        assert all(p.dtype == torch.float32 for p in m16.encoder.parameters())


def test_bf16_batch_equals_per_image(tiny):
    m16 = load(tiny[0], precision="bf16")
    x = torch.stack([natural_like_image(64, 72, seed=s) for s in range(3)])
    together = m16.score(x, batch_size=3, return_raw=True).raw
    alone = np.array([m16.score(img, return_raw=True).raw for img in x])
    np.testing.assert_allclose(together, alone, atol=0.05 * np.abs(alone).max())


def test_unknown_precision_is_a_config_error(tiny):
    from shamisa.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        load(tiny[0], precision="fp16")


def test_cpu_has_native_bf16_reads_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    for flags, expected in (("fpu avx2 avx512_bf16", True), ("fpu amx_bf16 sse", True), ("fpu avx2 avx512f", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert cpu_has_native_bf16(info) is expected
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_no_tracer_warnings_leak(tmp_path, tiny, recwarn):
    """The optimised encoder is traced before decoding threads start, so its warnings stay silenced."""
    m = load(tiny[0])
    paths = [_png(tmp_path, f"w{i}.png", i) for i in range(4)]
    assert all(r.ok for r in m.score_paths(paths, batch_size=1, workers=2))
    assert not [w for w in recwarn if "trace" in str(w.message).lower()]


def test_batched_equals_one_by_one(tmp_path, model):
    paths = [_png(tmp_path, f"b{i}.png", i, 60 + 7 * i, 90 - 5 * i) for i in range(5)]
    batched = model.score(paths, batch_size=2, workers=2)
    single = np.array([model.score(p) for p in paths])
    assert batched.shape == (5,)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert len(set(np.round(batched, 8))) > 1  # the images differ, so must their scores


def test_return_raw_and_range(model):
    x = torch.stack([natural_like_image(48, 64, seed=s) for s in range(3)])
    r = model.score(x, return_raw=True)
    assert r.score.shape == r.raw.shape == (3,)
    assert ((r.score >= 0) & (r.score <= 1)).all()
    np.testing.assert_allclose(r.score, raw_to_score(r.raw, (0, 100), "mos"))


@pytest.mark.parametrize(
    "bad,exc",
    [
        (torch.rand(3, 40, 40) * 3, ValueError),
        (torch.full((3, 40, 40), float("nan")), ValueError),
        (torch.rand(5, 40, 40), ValueError),
        (np.zeros((40, 40, 7), np.uint8), ValueError),
        (np.zeros((40, 40, 3), np.int64), ValueError),
        (12345, TypeError),
    ],
)
def test_invalid_arrays(model, bad, exc):
    with pytest.raises(exc):
        model.score(bad)


def test_bad_path_raises_image_error(tmp_path, model):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="x.jpg"):
        model.score(tmp_path / "x.jpg")


def test_score_paths_collects_errors_in_order(tmp_path, model):
    good = [_png(tmp_path, f"g{i}.png", i) for i in range(3)]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    items = [good[0], tmp_path / "bad.png", good[1], tmp_path / "missing.png", good[2]]
    recs = list(model.score_paths(items, batch_size=2, workers=2))
    assert [r.path for r in recs] == [str(p) for p in items]
    assert [r.ok for r in recs] == [True, False, True, False, True]
    assert "no such file" in recs[3].error


def test_size_policy_flags(tmp_path, model):
    small = _png(tmp_path, "small.png", 0, 20, 24)
    big = _png(tmp_path, "big.png", 0, 300, 200)
    normal = _png(tmp_path, "normal.png", 0, 80, 80)
    recs = {Path(r.path).name: r for r in model.score_paths([small, big, normal])}
    assert recs["small.png"].flags == ("enlarged",)
    assert recs["normal.png"].flags == ()
    assert recs["big.png"].flags == ()
    prep = prepare_image(natural_like_image(300, 200), CROP, max_side=128)
    assert "downscaled" in prep.flags and prep.crops.shape == (10, 3, CROP, CROP)


def test_elongated_image_refused():
    with pytest.raises(ValueError, match="elongated"):
        prepare_image(torch.rand(3, 8, 1000), CROP)


# ----------------------------------------------------------------------------------------- pyiqa-style


def test_metric_module(tiny):
    metric = ShamisaMetric(load(tiny[0]))
    assert metric.lower_better is False and metric.score_range == "0, 1" and metric.metric_mode == "NR"
    x = torch.stack([natural_like_image(48, 48, seed=s) for s in range(2)])
    out = metric(x)
    assert out.shape == (2,) and out.dtype == torch.float32
    assert ((out >= 0) & (out <= 1)).all()
    x.requires_grad_(True)
    out = metric(x)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_create_metric_with_file(tiny):
    metric = create_metric(str(tiny[0]), device="cpu")
    assert isinstance(metric, torch.nn.Module)
    assert metric(torch.rand(1, 3, 40, 40)).shape == (1,)


def test_top_level_exports():
    import shamisa

    assert shamisa.load is load and shamisa.create_metric is create_metric
    assert isinstance(shamisa.list_models(), list)


# ----------------------------------------------------------------------------------------- bundled model


BUNDLED = REPO / "src" / "shamisa" / "assets" / "default.safetensors"
EXAMPLES = REPO / "examples" / "images"


@pytest.mark.skipif(not BUNDLED.is_file(), reason="bundled default model not built")
def test_bundled_default_scores_examples():
    """End to end: the bundled model loads, scores the example images, and ranks them like their MOS."""
    import shamisa

    assert "default" in shamisa.list_models()
    model = shamisa.load("default", device="cpu")
    assert model.card.dataset == "clive" and model.card.crop == 224
    paths = sorted(EXAMPLES.glob("*.jpg"))
    notice = (EXAMPLES / "NOTICE.txt").read_text()
    mos = {}
    for line in notice.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(".jpg"):
            mos[parts[0]] = float(parts[2])
    r = model.score(paths, return_raw=True)
    assert ((r.score >= 0) & (r.score <= 1)).all()
    truth = np.array([mos[p.name] for p in paths])
    assert srcc(r.raw, truth) > 0.5
