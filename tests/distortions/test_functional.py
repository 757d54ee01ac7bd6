"""The distortion functions and their registry: every type keeps shape, dtype and range, is deterministic
under seeds, equals itself per image and in chunks, and changes an image more at higher levels."""

from __future__ import annotations


import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shamisa.distortions import (
    DISTORTION_NAMES,
    DISTORTIONS,
    GROUP_OF,
    GROUPS,
    INT_TYPES_BASIC,
    INT_TYPES_EXTENDED,
    LEVELS,
    UnknownDistortionError,
    apply_distortion,
    severity_to_value,
)
from shamisa.errors import ShamisaError
from conftest import natural_like_image


H, W = 48, 64


def _level_values(name: str, n: int) -> torch.Tensor:
    """n values spread over the level table (severities 0, 1, ..., cycling, plus a fractional one)."""
    s = torch.tensor([(i * 1.37) % 4.0 for i in range(n)], dtype=torch.float64)
    return severity_to_value(name, s)[0]


def test_registry_matches_spec_table():
    assert len(DISTORTION_NAMES) == 26 and len(GROUPS) == 7
    assert tuple(DISTORTIONS) == DISTORTION_NAMES
    assert list(GROUPS) == [
        "blur", "color_distortion", "jpeg", "noise", "brightness_change", "spatial_distortion", "sharpness_contrast"
    ]
    assert sum(len(v) for v in GROUPS.values()) == 26
    for name, spec in DISTORTIONS.items():
        assert spec.group == GROUP_OF[name] and name in GROUPS[spec.group]
        assert len(spec.levels) == 5 and spec.levels == tuple(float(t) for t in LEVELS[name])
        assert spec.integer == (name in INT_TYPES_EXTENDED)
    assert INT_TYPES_BASIC < INT_TYPES_EXTENDED and len(INT_TYPES_EXTENDED) == 11


def test_unknown_type_suggests_close_names(batch):
    with pytest.raises(UnknownDistortionError, match="gaublur") as info:
        apply_distortion(batch, "gausblur", torch.ones(3))
    assert isinstance(info.value, ShamisaError)


def test_bad_shapes_are_rejected(batch):
    with pytest.raises(ValueError, match="parameter values"):
        apply_distortion(batch, "gaublur", torch.ones(2))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        apply_distortion(batch[0], "gaublur", torch.ones(3))


@pytest.mark.parametrize("name", DISTORTION_NAMES)
def test_shape_dtype_range_kept(name, batch):
    v = _level_values(name, 3)
    y = apply_distortion(batch, name, v, torch.Generator().manual_seed(0))
    assert y.shape == batch.shape and y.dtype == batch.dtype and y.device == batch.device
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    # float64 input keeps its dtype as well
    y64 = apply_distortion(batch.double(), name, v, torch.Generator().manual_seed(0))
    assert y64.dtype == torch.float64 and y64.min() >= 0 and y64.max() <= 1


@pytest.mark.parametrize("name", DISTORTION_NAMES)
def test_deterministic_under_seeded_generator(name, batch):
    v = _level_values(name, 3)
    a = apply_distortion(batch, name, v, torch.Generator().manual_seed(7))
    b = apply_distortion(batch, name, v, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    if DISTORTIONS[name].stochastic:
        c = apply_distortion(batch, name, v, torch.Generator().manual_seed(8))
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", DISTORTION_NAMES)
def test_batch_equals_per_image(name, batch):
    v = _level_values(name, 3)
    seeds = torch.tensor([11, 22, 33])
    whole = apply_distortion(batch, name, v, seeds=seeds)
    for i in range(3):
        one = apply_distortion(batch[i : i + 1], name, v[i : i + 1], seeds=seeds[i : i + 1])
        torch.testing.assert_close(whole[i : i + 1], one, atol=2e-5, rtol=0)


@pytest.mark.parametrize("name", ["jpeg2000", "jitter", "colordiff"])
def test_chunked_batches_equal_one_call(name, monkeypatch):
    """On the CPU a batch is processed in chunks of CHUNK_SIZE images: the result is that of one call on the
    whole batch."""
    from shamisa.distortions import registry

    x = torch.rand(7, 3, 40, 36, generator=torch.Generator().manual_seed(5))
    v = torch.tensor([LEVELS[name][i % 5] for i in range(7)], dtype=torch.float64)
    seeds = torch.arange(100, 107)
    monkeypatch.setattr(registry, "CHUNK_SIZE", 64)
    whole = apply_distortion(x, name, v, seeds=seeds, jpeg2000_impl="approx")
    monkeypatch.setattr(registry, "CHUNK_SIZE", 3)
    chunked = apply_distortion(x, name, v, seeds=seeds, jpeg2000_impl="approx")
    torch.testing.assert_close(chunked, whole, atol=2e-5, rtol=0)


def _agree_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding: different batch shapes may round a matrix product differently, which can
    flip an 8-bit rounding (1/255) for a rare value."""
    diff = (a - b).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-6
    assert float((diff > 2e-5).float().mean()) < 1e-3


@pytest.mark.parametrize(
    ("name", "jpeg2000"), [(n, "openjpeg") for n in DISTORTION_NAMES] + [("jpeg2000", "approx")]
)
def test_levels_of_shared_images_equal_the_repeated_batch(name, jpeg2000, batch):
    """apply_levels (the varying slot: image-only work done once) gives what apply_distortion gives on the
    batch repeated once per level, and draws the same seeds."""
    from shamisa.distortions import apply_levels

    values = torch.tensor(LEVELS[name], dtype=torch.float64)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    levels = apply_levels(batch, name, values, g1, jpeg2000_impl=jpeg2000)
    repeated = apply_distortion(batch.repeat(5, 1, 1, 1), name, values.repeat_interleave(3), g2, jpeg2000_impl=jpeg2000)
    assert levels.shape == (15, 3, H, W) and levels.dtype == batch.dtype
    _agree_up_to_rounding(levels, repeated)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.mark.parametrize("name", ["colorsat2", "jitter", "gaublur"])
def test_results_written_into_a_given_output(name, batch, monkeypatch):
    """``out=`` (e.g. a strided slice of an item's output) gets exactly the returned result, for one call and
    for the chunked path; apply_levels fills an (L, B, ...) view, for a type with and one without shared stages."""
    from shamisa.distortions import apply_levels, registry

    values = _level_values(name, 3)
    seeds = torch.tensor([11, 12, 13])
    plain = apply_distortion(batch, name, values, seeds=seeds)
    for chunk in (8, 2):
        monkeypatch.setattr(registry, "CHUNK_SIZE", chunk)
        big = torch.zeros(2, 3, 3, H, W, device=batch.device)
        got = apply_distortion(batch, name, values, seeds=seeds, out=big[1])
        assert got.data_ptr() == big[1].data_ptr() and torch.equal(big[1], plain) and (big[0] == 0).all()
    lv = torch.tensor(LEVELS[name][1:4], dtype=torch.float64)
    lseeds = torch.arange(9) + 100
    flat = apply_levels(batch, name, lv, seeds=lseeds)
    item = torch.zeros(3, 2, 3, 3, H, W, device=batch.device)  # (views, compositions, levels, ...) as a builder's output
    dst = item[:, 1].transpose(0, 1)
    assert apply_levels(batch, name, lv, seeds=lseeds, out=dst) is dst
    assert torch.equal(dst, flat.view(3, 3, 3, H, W)) and (item[:, 0] == 0).all()
    with pytest.raises(ValueError, match="out must be"):
        apply_distortion(batch, name, values, seeds=seeds, out=torch.zeros(2, 3, H, W))
    with pytest.raises(ValueError, match="out must be"):
        apply_levels(batch, name, lv, seeds=lseeds, out=torch.zeros(9, 3, H, W))
    with pytest.raises(ValueError, match="out must be"):
        apply_distortion(batch, name, values, seeds=seeds, out=torch.zeros(3, 3, H, W, dtype=torch.float64))


def test_apply_levels_checks_its_inputs(batch):
    from shamisa.distortions import apply_levels

    with pytest.raises(ValueError, match="seeds"):
        apply_levels(batch, "colorsat2", torch.tensor([0.5, 1.5]), seeds=torch.arange(5))
    with pytest.raises(ValueError, match="shape"):
        apply_levels(batch[0], "colorsat2", torch.tensor([0.5]))
    with pytest.raises(UnknownDistortionError):
        apply_levels(batch, "colourstat", torch.tensor([0.5]))


def test_generator_consumes_one_seed_per_sample(batch):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    apply_distortion(batch, "gaublur", torch.ones(3), g1)
    torch.randint(0, 2**62, (3,), generator=g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def _step_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A diagonal colour step (for colorshift, whose effect is a displacement at edges)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    off = seed % 7
    mask = (yy + xx > (h + w) // 2 + off).float()
    return torch.stack([0.2 + 0.6 * mask, 0.8 - 0.6 * mask, 0.5 * torch.ones(h, w)])


def _change(name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """The per-type change measure used for the monotonicity test.

    * colorblock, noneccpatch: fraction of pixels changed (the draws are nested, so this is monotone).
    * pixelate: fraction of horizontally repeated pixels (block size), since nearest resampling of a
      smooth synthetic image aliases and its MSE is not monotone at small sizes.
    * all others: MSE.
    """
    if name in ("colorblock", "noneccpatch"):
        return ((y - x).abs().amax(1) > 1e-6).float().mean().item()
    if name == "pixelate":
        return (y[..., 1:] == y[..., :-1]).all(1).float().mean().item()
    return ((y - x) ** 2).mean().item()


LARGER = ("colorblock", "jpeg2000")


LARGEST = ("noneccpatch",)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_change_is_non_decreasing_over_levels(seed, device):
    for name, spec in DISTORTIONS.items():
        if name == "colorshift":
            x = _step_image(H, W, seed)
        elif name in LARGEST:
            x = natural_like_image(4 * H, 4 * W, seed=seed)
        elif name in LARGER:
            x = natural_like_image(2 * H, 2 * W, seed=seed)
        else:
            x = natural_like_image(H, W, seed=seed)
        x = x.to(device)
        xb = x[None].expand(5, -1, -1, -1).contiguous()
        y = apply_distortion(xb, name, torch.tensor(spec.levels), seeds=torch.full((5,), seed))
        ch = [_change(name, x, y[i]) for i in range(5)]
        scale = max(ch) + 1e-12
        for a, b in zip(ch, ch[1:], strict=False):
            assert b >= a - 1e-3 * scale - 1e-7, f"{name}: {ch}"
        assert ch[-1] > ch[0] or name in ("jpeg2000",), f"{name} does not change with the level: {ch}"


@pytest.mark.parametrize("name", ["meanshiftneg", "meanshiftpos", "lincontrchangeneg", "lincontrchangepos"])
def test_zero_levels_are_identity(name, batch):
    y = apply_distortion(batch, name, torch.zeros(3))
    torch.testing.assert_close(y, batch, atol=1e-6, rtol=0)


def test_small_hand_computed_cases(device):
    x = torch.tensor([0.0, 0.3, 0.5, 1.0], device=device).view(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous()
    y = apply_distortion(x, "nonlincontrchange", torch.tensor([0.25])).cpu()  # [0, 1] -> [0.25, 0.75]
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.25, 0.4, 0.5, 0.75]))
    y = apply_distortion(x, "darken", torch.tensor([0.5])).cpu()  # x - 2a x (1 - x)
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.09, 0.25, 1.0]))
    y = apply_distortion(x, "quantization", torch.tensor([3.0])).cpu()
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.5, 0.5, 1.0]))
    y = apply_distortion(x, "meanshiftpos", torch.tensor([0.1])).cpu()
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.1, 0.4, 0.6, 1.0]))
    grey = torch.full((1, 3, 8, 8), 0.4, device=device)  # saturation changes leave grey untouched
    torch.testing.assert_close(apply_distortion(grey, "colorsat1", torch.tensor([-0.4])), grey)


def test_blur_preserves_constant_images(device):
    c = torch.full((2, 3, 20, 24), 0.3, device=device)
    for name in ("gaublur", "lensblur", "motionblur", "highsharpen", "colordiff"):
        v = torch.tensor(LEVELS[name][3:5], dtype=torch.float64)
        torch.testing.assert_close(apply_distortion(c, name, v, torch.Generator().manual_seed(0)), c, atol=6e-3, rtol=0)


def test_jpeg_is_the_real_codec(batch):
    import io

    import numpy as np
    from PIL import Image

    y = apply_distortion(batch[:1], "jpeg", torch.tensor([24.0]))
    arr = (batch[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=24)
    ref = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(y[0].cpu(), ref)
