"""Tests of the distortion engine: the 26 functions, severity mapping, composition sampler, batch builder, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

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
    build_structured_batch,
    collate_structured,
    sample_compositions,
    sample_views,
    severity_to_value,
    value_to_severity,
)
from shamisa.errors import ConfigError, ShamisaError
from conftest import natural_like_image

H, W = 48, 64


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.stack([natural_like_image(H, W, seed=s) for s in range(3)])


def _level_values(name: str, n: int) -> torch.Tensor:
    """n values spread over the level table (severities 0, 1, ..., cycling, plus a fractional one)."""
    s = torch.tensor([(i * 1.37) % 4.0 for i in range(n)], dtype=torch.float64)
    return severity_to_value(name, s)[0]


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# every type: shape, dtype, range, determinism, batch == per image
# --------------------------------------------------------------------------------------------------


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
    from shamisa.distortions.codecs import set_jpeg2000_impl

    monkeypatch.delenv("SHAMISA_JPEG2000", raising=False)
    set_jpeg2000_impl("approx")
    try:
        x = torch.rand(7, 3, 40, 36, generator=torch.Generator().manual_seed(5))
        v = torch.tensor([LEVELS[name][i % 5] for i in range(7)], dtype=torch.float64)
        seeds = torch.arange(100, 107)
        monkeypatch.setattr(registry, "CHUNK_SIZE", 64)
        whole = apply_distortion(x, name, v, seeds=seeds)
        monkeypatch.setattr(registry, "CHUNK_SIZE", 3)
        torch.testing.assert_close(apply_distortion(x, name, v, seeds=seeds), whole, atol=2e-5, rtol=0)
    finally:
        set_jpeg2000_impl("openjpeg")


def _agree_up_to_rounding(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal up to float rounding: different batch shapes may round a matrix product differently, which can
    flip an 8-bit rounding (1/255) for a rare value."""
    diff = (a - b).abs()
    assert float(diff.max()) <= 1 / 255 + 1e-6
    assert float((diff > 2e-5).float().mean()) < 1e-3


@pytest.mark.parametrize(
    ("name", "jpeg2000"), [(n, "openjpeg") for n in DISTORTION_NAMES] + [("jpeg2000", "approx")]
)
def test_levels_of_shared_images_equal_the_repeated_batch(name, jpeg2000, batch, monkeypatch):
    """apply_levels (the varying slot: image-only work done once) gives what apply_distortion gives on the
    batch repeated once per level, and draws the same seeds."""
    from shamisa.distortions import apply_levels
    from shamisa.distortions.codecs import set_jpeg2000_impl

    monkeypatch.delenv("SHAMISA_JPEG2000", raising=False)
    set_jpeg2000_impl(jpeg2000)
    try:
        values = torch.tensor(LEVELS[name], dtype=torch.float64)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        levels = apply_levels(batch, name, values, g1)
        repeated = apply_distortion(batch.repeat(5, 1, 1, 1), name, values.repeat_interleave(3), g2)
        assert levels.shape == (15, 3, H, W) and levels.dtype == batch.dtype
        _agree_up_to_rounding(levels, repeated)
        assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    finally:
        set_jpeg2000_impl("openjpeg")


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
        big = torch.zeros(2, 3, 3, H, W)
        got = apply_distortion(batch, name, values, seeds=seeds, out=big[1])
        assert got.data_ptr() == big[1].data_ptr() and torch.equal(big[1], plain) and (big[0] == 0).all()
    lv = torch.tensor(LEVELS[name][1:4], dtype=torch.float64)
    lseeds = torch.arange(9) + 100
    flat = apply_levels(batch, name, lv, seeds=lseeds)
    item = torch.zeros(3, 2, 3, 3, H, W)  # (views, compositions, levels, ...) as a builder's output
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


# --------------------------------------------------------------------------------------------------
# severity grows with the level
# --------------------------------------------------------------------------------------------------


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


#: Types whose effect saturates on a 48x64 image (16x16 / 32x32 patches, codec header overhead): tested at
#: twice the size. noneccpatch copies 20..100 patches of 16x16, which can cover every reachable pixel of a
#: 96x128 image already at level 0 (seed 350), so it is tested at four times the size.
LARGER = ("colorblock", "jpeg2000")
LARGEST = ("noneccpatch",)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000))
def test_change_is_non_decreasing_over_levels(seed):
    for name, spec in DISTORTIONS.items():
        if name == "colorshift":
            x = _step_image(H, W, seed)
        elif name in LARGEST:
            x = natural_like_image(4 * H, 4 * W, seed=seed)
        elif name in LARGER:
            x = natural_like_image(2 * H, 2 * W, seed=seed)
        else:
            x = natural_like_image(H, W, seed=seed)
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


def test_small_hand_computed_cases():
    x = torch.tensor([0.0, 0.3, 0.5, 1.0]).view(1, 1, 1, 4).expand(1, 3, 1, 4).contiguous()
    y = apply_distortion(x, "nonlincontrchange", torch.tensor([0.25]))  # [0, 1] -> [0.25, 0.75]
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.25, 0.4, 0.5, 0.75]))
    y = apply_distortion(x, "darken", torch.tensor([0.5]))  # x - 2a x (1 - x)
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.09, 0.25, 1.0]))
    y = apply_distortion(x, "quantization", torch.tensor([3.0]))
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.0, 0.5, 0.5, 1.0]))
    y = apply_distortion(x, "meanshiftpos", torch.tensor([0.1]))
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.1, 0.4, 0.6, 1.0]))
    grey = torch.full((1, 3, 8, 8), 0.4)  # saturation changes leave grey untouched
    torch.testing.assert_close(apply_distortion(grey, "colorsat1", torch.tensor([-0.4])), grey)


def test_blur_preserves_constant_images():
    c = torch.full((2, 3, 20, 24), 0.3)
    for name in ("gaublur", "lensblur", "motionblur", "highsharpen", "colordiff"):
        v = torch.tensor(LEVELS[name][3:5], dtype=torch.float64)
        torch.testing.assert_close(apply_distortion(c, name, v, torch.Generator().manual_seed(0)), c, atol=6e-3, rtol=0)


def test_jpeg_is_the_real_codec(batch):
    import io

    import numpy as np
    from PIL import Image

    y = apply_distortion(batch[:1], "jpeg", torch.tensor([24.0]))
    arr = (batch[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=24)
    ref = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(y[0], ref)


# --------------------------------------------------------------------------------------------------
# severity mapping
# --------------------------------------------------------------------------------------------------


def test_severity_interpolation_continuous():
    v, s2 = severity_to_value("gaublur", torch.tensor([0.0, 1.5, 3.25, 4.0]))
    torch.testing.assert_close(v, torch.tensor([0.1, 0.75, 2.75, 5.0], dtype=torch.float64))
    torch.testing.assert_close(s2, torch.tensor([0.0, 1.5, 3.25, 4.0], dtype=torch.float64))


def test_severity_integer_rounding_and_rederived_index():
    # jpeg2000 table 16, 32, 45, 120, 170: s = 2.35 -> 45 + 0.35 * 75 = 71.25 -> 71 -> s' = 2 + 26/75
    v, s2 = severity_to_value("jpeg2000", torch.tensor([2.35]))
    assert v.item() == 71.0
    assert math.isclose(s2.item(), 2 + 26 / 75)
    # decreasing table: jpeg 43, 36, 24, 7, 4: s = 0.5 -> 39.5 -> 40 (round half to even) -> s' = 3/7
    v, s2 = severity_to_value("jpeg", torch.tensor([0.5]))
    assert v.item() == 40.0 and math.isclose(s2.item(), 3 / 7)
    # the non-extended set leaves colordiff continuous
    v, _ = severity_to_value("colordiff", torch.tensor([0.25]), extended_int_distortions=False)
    assert v.item() == pytest.approx(1.5)
    v, _ = severity_to_value("colordiff", torch.tensor([0.25]))
    assert v.item() == 2.0


@given(s=st.floats(0.0, 4.0), name=st.sampled_from(DISTORTION_NAMES))
@settings(max_examples=60, deadline=None)
def test_severity_roundtrip_properties(s, name):
    v, s2 = severity_to_value(name, torch.tensor([s]))
    table = LEVELS[name]
    lo, hi = math.floor(s), math.ceil(s)
    assert min(table[lo], table[hi]) - 1e-9 <= v.item() <= max(table[lo], table[hi]) + 1e-9
    assert lo - 1e-9 <= s2.item() <= hi + 1e-9
    if DISTORTIONS[name].integer:
        assert v.item() == round(v.item())
    else:
        assert s2.item() == pytest.approx(s)
    # re-derived severity maps back to the same value
    v3, _ = severity_to_value(name, s2)
    assert v3.item() == pytest.approx(v.item(), abs=1e-9)
    assert value_to_severity(name, v).item() == pytest.approx(s2.item(), abs=1e-9)


def test_severity_out_of_range():
    with pytest.raises(ValueError, match="severity"):
        severity_to_value("jpeg", torch.tensor([4.5]))


# --------------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["gaussian", "uniform"])
def test_sampler_metadata_consistent(dist):
    comps = sample_compositions(64, generator=torch.Generator().manual_seed(1), severity_dist=dist)
    f, l_, s = comps.indices.shape
    assert (f, l_, s) == (64, 5, 7) and comps.type_ids.shape == (64, 7)
    assert ((comps.n_dist >= 1) & (comps.n_dist <= 7)).all()
    for i in range(f):
        n, vs = int(comps.n_dist[i]), int(comps.var_slot[i])
        assert 0 <= vs < n
        ids = comps.type_ids[i]
        assert (ids[:n] >= 0).all() and (ids[n:] == -1).all()
        groups = [GROUP_OF[DISTORTION_NAMES[int(t)]] for t in ids[:n]]
        assert len(set(groups)) == n
        assert (comps.indices[i, :, n:] == -1).all() and (comps.values[i, :, n:] == -1).all()
        for j in range(n):
            col_i, col_v = comps.indices[i, :, j], comps.values[i, :, j]
            assert ((col_i >= 0) & (col_i <= 4)).all()
            if j != vs:
                assert (col_i == col_i[0]).all() and (col_v == col_v[0]).all()
            name = DISTORTION_NAMES[int(ids[j])]
            v_expected, s_expected = severity_to_value(name, col_i)
            torch.testing.assert_close(col_v, v_expected)
            torch.testing.assert_close(col_i, s_expected)
    # all seven lengths and every type appear in a large sample
    big = sample_compositions(400, generator=torch.Generator().manual_seed(2))
    assert set(big.n_dist.tolist()) == set(range(1, 8))
    assert set(big.type_ids[big.type_ids >= 0].tolist()) == set(range(26))


def test_sampler_severity_distribution():
    comps = sample_compositions(1000, generator=torch.Generator().manual_seed(4))
    base = torch.stack([comps.indices[i, 0, j] for i in range(300) for j in range(int(comps.n_dist[i]))])
    # half-normal sigma 2.5 clipped at 4: P(s = 4) = 2 (1 - Phi(1.6)) ~ 0.11
    vs = comps.indices[torch.arange(1000), :, comps.var_slot].flatten()
    frac_max = (vs == 4).float().mean().item()
    assert 0.07 < frac_max < 0.15
    assert base.min() >= 0 and base.max() <= 4


def test_sampler_is_deterministic_and_options():
    a = sample_compositions(8, generator=torch.Generator().manual_seed(5))
    b = sample_compositions(8, generator=torch.Generator().manual_seed(5))
    for field in ("type_ids", "indices", "values", "n_dist", "var_slot"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    d = sample_compositions(16, generator=torch.Generator().manual_seed(5), discrete=True, max_distortions=3)
    assert d.type_ids.shape == (16, 3) and (d.n_dist <= 3).all()
    act = d.indices[d.indices >= 0]
    assert torch.equal(act, act.round())
    fo = sample_compositions(16, generator=torch.Generator().manual_seed(5), fixed_order=True)
    firsts = {members[0] for members in GROUPS.values()}
    gnames = list(GROUPS)
    for i in range(16):
        names = fo.names(i)
        assert set(names) <= firsts
        order = [gnames.index(GROUP_OF[nm]) for nm in names]
        assert order == sorted(order, key=lambda g: gnames[g])
    with pytest.raises(ConfigError):
        sample_compositions(2, generator=torch.Generator(), max_distortions=8)
    with pytest.raises(ConfigError):
        sample_compositions(2, generator=torch.Generator(), severity_dist="cauchy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# views and builder
# --------------------------------------------------------------------------------------------------


def test_sample_views_shapes_and_padding():
    img = natural_like_image(60, 80, seed=1)
    full, half = sample_views(img, 32, torch.Generator().manual_seed(0))
    assert full.shape == half.shape == (3, 32, 32)
    small = natural_like_image(20, 30, seed=1)
    full, half = sample_views(small, 32, torch.Generator().manual_seed(0))
    assert full.shape == (3, 32, 32) and (full[:, 20:] == 0).all() and (full[:, :, 30:] == 0).all()
    assert (half[:, 10:] == 0).all() and half[:, :10, :15].abs().sum() > 0
    # the full crop is a window of the image
    full, _ = sample_views(img, 32, torch.Generator().manual_seed(3))
    hits = [
        (t, l_) for t in range(60 - 31) for l_ in range(80 - 31) if torch.equal(img[:, t : t + 32, l_ : l_ + 32], full)
    ]
    assert hits


def _chain_full(x: torch.Tensor, comps, f: int, level: int) -> torch.Tensor:
    names = comps.names(f)
    for j, name in enumerate(names):
        x = apply_distortion(x, name, comps.values[f, level, j].expand(x.shape[0]), torch.Generator().manual_seed(0))
    return x


def _deterministic_comps(n: int, seed: int):
    """Compositions restricted to deterministic types (re-sampled until every chain qualifies)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        c = sample_compositions(n, generator=g, max_distortions=4)
        if all(not DISTORTIONS[nm].stochastic for f in range(n) for nm in c.names(f)):
            return c


def test_builder_layout_and_prefix_sharing():
    r, p = 2, 24
    full = torch.stack([natural_like_image(p, p, seed=10 + i) for i in range(r)])
    half = torch.stack([natural_like_image(p, p, seed=20 + i) for i in range(r)])
    comps = _deterministic_comps(3, seed=0)
    sb = build_structured_batch(full, half, comps, torch.Generator().manual_seed(0))
    assert sb.dist.shape == (2 * r, 3, 5, 3, p, p) and sb.refs.shape == (2 * r, 3, p, p)
    assert torch.equal(sb.refs[:r], full) and torch.equal(sb.refs[r:], half)
    for name in ("indices", "values", "n_dist", "var_slot", "type_ids"):
        assert torch.equal(getattr(sb, name), getattr(comps, name))
    for f in range(3):
        for lv in range(5):
            expected = _chain_full(sb.refs, comps, f, lv)
            torch.testing.assert_close(sb.dist[:, f, lv], expected, atol=1e-5, rtol=0)
    vi = sb.var_indices
    assert vi.shape == (3, 5)
    assert torch.equal(vi[1], comps.indices[1, :, int(comps.var_slot[1])])


def test_builder_stochastic_is_reproducible_and_collates():
    r, p = 1, 20
    full = natural_like_image(p, p, seed=1)[None]
    half = natural_like_image(p, p, seed=2)[None]
    comps = sample_compositions(2, generator=torch.Generator().manual_seed(9))
    a = build_structured_batch(full, half, comps, torch.Generator().manual_seed(1))
    b = build_structured_batch(full, half, comps, torch.Generator().manual_seed(1))
    assert torch.equal(a.dist, b.dist)
    assert a.dist.min() >= 0 and a.dist.max() <= 1
    batch = collate_structured([a, b])
    assert batch.dist.shape == (2, 2 * r, 2, 5, 3, p, p)
    assert batch.refs.shape == (2, 2, 3, p, p)
    assert batch.indices.shape == (2, 2, 5, 7) and batch.var_slot.shape == (2, 2)
    assert batch.type_ids.shape == (2, 2, 7) and batch.n_dist.shape == (2, 2)
    assert batch.var_indices.shape == (2, 2, 5)
    moved = batch.to("cpu")
    assert torch.equal(moved.dist, batch.dist) and torch.equal(moved.type_ids, batch.type_ids)
    # row-major flattening over (b, v, f, l)
    flat = batch.dist.reshape(-1, 3, p, p)
    assert torch.equal(flat[((1 * 2 + 1) * 2 + 1) * 5 + 3], batch.dist[1, 1, 1, 3])


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def png(tmp_path):
    from shamisa.images import save_image

    path = tmp_path / "in.png"
    save_image(natural_like_image(64, 80, seed=3), path)
    return path


def _run(args):
    from typer.testing import CliRunner

    from shamisa.cli.app import app

    return CliRunner().invoke(app, args)


def test_cli_list():
    res = _run(["distort", "--list"])
    assert res.exit_code == 0, res.output
    for name in DISTORTION_NAMES:
        assert name in res.output
    res = _run(["distort", "--list", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert [d["name"] for d in data] == list(DISTORTION_NAMES)
    assert data[8]["levels"] == [43.0, 36.0, 24.0, 7.0, 4.0] and data[8]["integer"] is True


def test_cli_single_distortion(png, tmp_path):
    from shamisa.images import load_image

    out = tmp_path / "out.png"
    res = _run(["distort", str(png), "--type", "gaublur", "--severity", "3", "-o", str(out), "--seed", "1"])
    assert res.exit_code == 0, res.output
    y, x = load_image(out), load_image(png)
    assert y.shape == x.shape and ((y - x) ** 2).mean() > 1e-4
    out2 = tmp_path / "out2.png"
    res = _run(["distort", str(png), "--type", "whitenoise", "--value", "0.01", "-o", str(out2), "--seed", "1"])
    assert res.exit_code == 0, res.output
    out3 = tmp_path / "out3.png"
    res = _run(["distort", str(png), "--type", "whitenoise", "--value", "0.01", "-o", str(out3), "--seed", "1"])
    assert torch.equal(load_image(out2), load_image(out3))


def test_cli_error_messages(png, tmp_path, capsys):
    from shamisa.cli.app import main

    for args, message in [
        ([str(png), "--type", "gausblur", "--severity", "1"], "did you mean gaublur"),
        ([str(png), "--type", "gaublur", "--severity", "5"], "severity"),
        ([str(tmp_path / "missing.png"), "--type", "gaublur", "--severity", "1"], "no such file"),
        ([str(png), "--type", "gaublur"], "--severity or --value"),
        ([str(png), "--type", "gaublur", "--severity", "1", "--value", "2"], "not both"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["distort", *args, "-o", str(tmp_path / "o.png")])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_cli_sheet(png, tmp_path):
    from PIL import Image

    out = tmp_path / "sheet.png"
    res = _run(["distort", str(png), "--sheet", str(out), "--cell", "48", "--seed", "0"])
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        w, h = im.size
    assert w > 5 * 48 and h > 26 * 48


# --------------------------------------------------------------------------------------------------
# fast paths against straightforward references
# --------------------------------------------------------------------------------------------------


def test_contrast_curve_matches_the_not_a_knot_spline():
    """The elementwise closed form equals scipy's not-a-knot spline through the knots (random inputs)."""
    import numpy as np
    from scipy.interpolate import CubicSpline

    from shamisa.distortions.functional import CONTRAST_KNOTS, contrast_curve

    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 9, 11, generator=g)
    x[0, 0, 0, :4] = torch.tensor([0.0, 0.25, 0.5, 1.0])  # knots and ends
    amount = torch.tensor([-0.7, -0.2, 0.0, 0.1, 0.45, 0.9], dtype=torch.float64)
    y = contrast_curve(x, amount)
    xs = np.array([0.0, *CONTRAST_KNOTS, 1.0])
    for i, a in enumerate(amount.tolist()):
        ys = [0.0, CONTRAST_KNOTS[0] - a / 4, 0.5, CONTRAST_KNOTS[2] + a / 4, 1.0]
        cs = CubicSpline(xs, ys, bc_type="not-a-knot")
        ref = torch.from_numpy(np.clip(cs(x[i].double().numpy()), 0, 1)).float()
        torch.testing.assert_close(y[i], ref, atol=2e-6, rtol=0)


def test_contrast_curve_keeps_the_jump_term_for_asymmetric_knots(monkeypatch):
    """With knots where the two cubics differ, the max(x - k, 0)^3 term reproduces the spline."""
    import numpy as np
    from scipy.interpolate import CubicSpline

    from shamisa.distortions import functional as fn

    knots = (0.2, 0.45, 0.8)
    monkeypatch.setattr(fn, "CONTRAST_KNOTS", knots)
    fn._contrast_spline_coefs.cache_clear()

    def coefs(amount: float):
        xs = np.array([0.0, *knots, 1.0])
        cs = CubicSpline(xs, [0.0, knots[0] - amount / 4, 0.5, knots[2] + amount / 4, 1.0], bc_type="not-a-knot")
        return tuple(tuple(float(c) for c in cs.c[:, i]) for i in range(4)), cs

    monkeypatch.setattr(fn, "_contrast_spline_coefs", lambda a: coefs(a)[0])
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(4))
    amount = torch.tensor([-0.4, 0.6], dtype=torch.float64)
    y = fn.contrast_curve(x, amount)
    for i, a in enumerate(amount.tolist()):
        ref = torch.from_numpy(np.clip(coefs(a)[1](x[i].double().numpy()), 0, 1)).float()
        torch.testing.assert_close(y[i], ref, atol=2e-6, rtol=0)


def test_keep_heap_is_idempotent_and_can_be_disabled(monkeypatch):
    from shamisa.distortions import memory

    monkeypatch.setattr(memory, "_done", set())
    monkeypatch.setenv("SHAMISA_KEEP_HEAP", "0")
    assert memory.keep_heap() is False
    monkeypatch.delenv("SHAMISA_KEEP_HEAP")
    first = memory.keep_heap()
    assert memory.keep_heap() is first
    import os
    import platform

    assert (os.getpid() in memory._done) is first
    if platform.libc_ver()[0] == "glibc":
        assert first, "glibc's mallopt should accept the thresholds"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y1 = apply_distortion(x, "colorsat2", torch.tensor([0.5, 1.5]))
    assert torch.equal(y1, apply_distortion(x, "colorsat2", torch.tensor([0.5, 1.5])))


@pytest.mark.parametrize("kk", [3, 13, 25, 27, 41])
@pytest.mark.parametrize("shared", [True, False])
def test_sep_filter_paths_agree(kk, shared, monkeypatch):
    """Shift-and-add and banded matrix products give the same separable filter (replicate borders)."""
    from shamisa.distortions import functional as fn

    g = torch.Generator().manual_seed(kk)
    x = torch.rand(4, 2, 30, 37, generator=g)
    sigma = torch.rand(4, generator=g, dtype=torch.float64) * 4 + 1
    if shared:
        sigma = sigma[:1].expand(4)
    k = fn.gaussian_kernels(sigma, torch.full((4,), kk // 2))
    monkeypatch.setattr(fn, "SEP_DIRECT_MAX_K", 1)
    by_matrix = fn.sep_filter(x, k)
    monkeypatch.setattr(fn, "SEP_DIRECT_MAX_K", 99)
    direct = fn.sep_filter(x, k)
    torch.testing.assert_close(direct, by_matrix, atol=2e-6, rtol=0)
    # replicate-border reference: pad, then a depthwise correlation per sample
    import torch.nn.functional as F

    p = kk // 2
    rows = []
    for i in range(4):
        ki = k[i].float()
        xi = F.pad(x[i : i + 1], (p, p, p, p), mode="replicate")
        xi = F.conv2d(xi, ki.view(1, 1, 1, -1).expand(2, 1, 1, -1), groups=2)
        rows.append(F.conv2d(xi, ki.view(1, 1, -1, 1).expand(2, 1, -1, 1), groups=2)[0])
    ref = torch.stack(rows)
    torch.testing.assert_close(direct, ref, atol=2e-6, rtol=0)


def test_patch_and_block_painters_agree_across_paths():
    """The CPU slice painters (noneccpatch, colorblock) equal the batched paths used on other devices, with
    overlapping, out-of-order and empty (count 0) samples."""
    from shamisa.distortions import functional as fn

    g = torch.Generator().manual_seed(4)
    x = torch.rand(4, 3, 40, 50, generator=g)
    counts = [0, 3, 25, 9]
    n = max(counts)
    src = (torch.randint(0, 40 - 16 + 1, (4, n), generator=g), torch.randint(0, 50 - 16 + 1, (4, n), generator=g))
    dst = [(s + torch.randint(-8, 9, (4, n), generator=g)).clamp(0, lim - 16) for s, lim in zip(src, (40, 50))]
    past = torch.arange(n)[None] >= torch.tensor(counts)[:, None]  # the batched path copies those onto themselves
    dst = tuple(torch.where(past, s, d) for s, d in zip(src, dst))
    sliced, indexed = x.clone(), x.clone()
    fn._copy_patches_sliced(sliced, src, dst, counts, (16, 16))
    fn._copy_patches_indexed(indexed, src, dst, counts, (16, 16))
    assert torch.equal(sliced, indexed) and not torch.equal(sliced, x)
    assert torch.equal(sliced[0], x[0])
    top, left = torch.randint(0, 40 - 8, (4, n), generator=g), torch.randint(0, 50 - 8, (4, n), generator=g)
    color = torch.rand(4, n, 3, generator=g)
    painted = fn._paint_blocks_sliced(x, top, left, color, counts, (8, 8))
    assert torch.equal(painted, fn._paint_blocks_masked(x, top, left, color, counts, (8, 8)))
    assert torch.equal(painted[0], x[0]) and not torch.equal(painted, x)
    # the last square of a sample is on top
    i, k = 2, counts[2] - 1
    t, l_ = int(top[i, k]), int(left[i, k])
    assert torch.equal(painted[i, :, t : t + 8, l_ : l_ + 8], color[i, k, :, None, None].expand(3, 8, 8))


def test_impulsenoise_matches_its_definition():
    """Each value is replaced by 0 where u < d/2 and by 1 where d/2 <= u < d, u the sample's uniform draws."""
    from shamisa.distortions import functional as fn

    x = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    seeds = torch.arange(6) * 7919
    d = torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 0.3], dtype=torch.float64)
    u = fn._rand(seeds, (3, 20, 24), x)
    dc = d.float().view(-1, 1, 1, 1)
    ref = torch.where(u < dc / 2, 0.0, torch.where(u < dc, 1.0, x))
    y = fn.impulsenoise(x, d, seeds)
    assert torch.equal(y, ref)
    assert torch.equal(y[0], x[0]) and ((y[4] == 0) | (y[4] == 1)).all()


def test_builder_suffix_by_level_equals_the_whole_batch_chain():
    """The builder applies the slots after the varying one level by level; with the seeds drawn in the same
    order that equals chaining them over the whole (L * 2R) batch, for stochastic types too."""
    from shamisa.distortions import apply_levels

    r, p = 2, 24
    full = torch.stack([natural_like_image(p, p, seed=30 + i) for i in range(r)])
    half = torch.stack([natural_like_image(p, p, seed=40 + i) for i in range(r)])
    comps = sample_compositions(4, generator=torch.Generator().manual_seed(3))
    # every composition has a suffix of two or more slots, a stochastic one among them
    for f in range(4):
        suffix = comps.names(f)[int(comps.var_slot[f]) + 1 :]
        assert len(suffix) >= 2 and any(DISTORTIONS[nm].stochastic for nm in suffix)
    sb = build_structured_batch(full, half, comps, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    views = torch.cat([full, half])
    v = views.shape[0]
    for f in range(4):
        names, vs, vals = comps.names(f), int(comps.var_slot[f]), comps.values[f]
        x = views
        for j in range(vs):
            x = apply_distortion(x, names[j], vals[0, j].expand(v), g)
        x = apply_levels(x, names[vs], vals[:, vs], g)
        for j in range(vs + 1, len(names)):
            x = apply_distortion(x, names[j], vals[:, j].repeat_interleave(v), g)
        expected = x.view(5, v, 3, p, p).transpose(0, 1)
        # batch shape may move a value by one 8-bit level through matrix-product rounding, rarely
        torch.testing.assert_close(sb.dist[:, f], expected, atol=1 / 255 + 1e-6, rtol=0)
        assert (sb.dist[:, f] == expected).float().mean() > 0.999


def test_normal_draws_are_standard_normal_and_per_seed():
    """The table-driven normal deviates: unit variance, symmetric, close to N(0, 1) in distribution, a function
    of the sample's seed alone (negative seeds accepted)."""
    from scipy import stats

    from shamisa.distortions import functional as fn

    like = torch.empty(3, 1)
    seeds = torch.tensor([5, -7, 2**62 - 1])
    z = fn._randn(seeds, (400_000,), like)
    assert z.shape == (3, 400_000) and z.dtype == torch.float32
    flat = z.double().flatten()
    assert abs(float(flat.mean())) < 0.005 and abs(float(flat.var()) - 1) < 0.01
    assert stats.kstest(flat[::7].numpy(), "norm").statistic < 0.004
    table = fn._normal_table()
    assert table.shape == (2**fn.NORMAL_TABLE_BITS,) and (table[::-1] == -table).all() and (abs(table.max() - 4.325) < 1e-3)
    assert torch.equal(fn._randn(seeds[1:2], (400_000,), like[:1])[0], z[1])
    assert not torch.equal(z[0], z[1])
    with pytest.raises(ValueError, match="seeds"):
        fn._randn(None, (4,), like)


def test_lab_conversions_match_kornia_and_their_torch_route():
    """The Lab round trip of the Lab-based types: close to kornia.color's, and the CPU route through numpy's
    log2 / cbrt equal to the torch route other devices take (forced here with a tensor that requires grad)."""
    import kornia

    from shamisa.distortions import functional as fn

    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.rand(2, 3, 16, 16, generator=g), natural_like_image(16, 16, seed=1)[None]])
    x[0, :, 0, :4] = torch.tensor([0.0, 0.02, 0.04045, 1.0])  # both sides of the sRGB branch point
    lab = fn.rgb_to_lab(x)
    torch.testing.assert_close(lab, kornia.color.rgb_to_lab(x), atol=3e-4, rtol=0)
    torch.testing.assert_close(fn.lab_to_rgb(lab), kornia.color.lab_to_rgb(lab, clip=True), atol=2e-5, rtol=0)
    torch.testing.assert_close(fn.lab_to_rgb(lab), x, atol=2e-5, rtol=0)
    t = torch.rand(4096, generator=g) * 2 + 1e-6
    torch.testing.assert_close(fn._log2_(t.clone()), torch.log2(t), atol=0, rtol=2e-6)
    torch.testing.assert_close(fn._cbrt_(t.clone()), t.pow(1 / 3), atol=0, rtol=2e-6)
    with torch.no_grad():  # the torch route (in place on a leaf that requires grad: allowed under no_grad)
        torch.testing.assert_close(fn._cbrt_(t.clone().requires_grad_()), t.pow(1 / 3), atol=0, rtol=2e-6)
        torch.testing.assert_close(fn._log2_(t.clone().requires_grad_()), torch.log2(t), atol=0, rtol=2e-6)


def test_colour_matrix_numpy_route_equals_torch_route():
    """mix3 on CPU tensors (numpy's matmul) equals the torch route other devices take, with and without a bias,
    for float32 and float64, on a non-contiguous input; bad shapes are refused."""
    from shamisa.distortions.colour_matrix import mix3

    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(2, 3, 9, 14, generator=g, dtype=torch.float64).to(dtype).transpose(2, 3)  # (2, 3, 14, 9) strided
        want = torch.einsum("rc,bchw->brhw", m.to(dtype), x)
        torch.testing.assert_close(mix3(x, m), want)
        torch.testing.assert_close(mix3(x, m, bias), want + bias.to(dtype).view(1, 3, 1, 1))
        with torch.no_grad():
            torch.testing.assert_close(mix3(x.clone().requires_grad_(), m, bias), want + bias.to(dtype).view(1, 3, 1, 1))
        assert mix3(x, m).dtype == dtype
    with pytest.raises(ValueError, match="3x3"):
        mix3(torch.rand(1, 4, 2, 2), m)


@pytest.mark.parametrize("shared", [True, False])
def test_fft_filtering_equals_direct_correlation(shared):
    """filter2d's FFT path (kernels over 7x7; one image at a time on the CPU, the whole batch elsewhere) equals a
    direct correlation of the replicate-padded images, whatever the number of images per transform."""
    import torch.nn.functional as F

    from shamisa.distortions import functional as fn

    g = torch.Generator().manual_seed(4)
    x = torch.rand(3, 3, 20, 27, generator=g)
    k = torch.rand(1 if shared else 3, 9, 9, generator=g, dtype=torch.float64).expand(3, 9, 9).contiguous()
    k = k / k.sum(dim=(1, 2), keepdim=True)
    xp = F.pad(x, (4, 4, 4, 4), mode="replicate")
    want = torch.cat([F.conv2d(xp[i : i + 1].transpose(0, 1), k[i].float()[None, None]).transpose(0, 1) for i in range(3)])
    torch.testing.assert_close(fn.filter2d(x, k), want, atol=2e-6, rtol=0)
    kk = k[:1] if shared else k
    for step in (1, 2, 3):
        torch.testing.assert_close(fn._fft_filter(x, kk, step), want, atol=2e-6, rtol=0)


def test_lab_round_trip_in_half_precision_takes_the_torch_route():
    """bfloat16 / float16 CPU tensors (no numpy view) go through torch's log2 and cube root."""
    from shamisa.distortions import functional as fn

    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for dtype, tol in ((torch.bfloat16, 4.0), (torch.float16, 0.6)):  # a* = 500 (fx - fy) magnifies rounding
        lab = fn.rgb_to_lab(x.to(dtype))
        assert lab.dtype == dtype
        torch.testing.assert_close(lab.float(), fn.rgb_to_lab(x), atol=tol, rtol=0)


def test_level_sources_name_the_first_level_of_each_repeated_value():
    from shamisa.distortions.registry import level_sources

    vals = torch.tensor([30.0, 10.0, 30.0, 10.0, 5.0], dtype=torch.float64)
    assert level_sources("jpeg", vals) == [0, 1, 0, 1, 4]
    assert level_sources("colorsat2", vals) == [0, 1, 0, 1, 4]
    assert level_sources("jitter", vals) == [0, 1, 2, 3, 4]  # stochastic: fresh draws per level
    assert level_sources("gaublur", torch.tensor([1.0, 2.0, 3.0])) == [0, 1, 2]


@pytest.mark.parametrize("name", ["colorsat2", "quantization", "jitter"])
def test_repeated_level_values_are_computed_once(name, batch, monkeypatch):
    """A deterministic type's level that repeats an earlier value is copied from it (the type runs once per
    distinct value); every level still equals the type applied on its own with that level's seeds."""
    from shamisa.distortions import apply_levels, registry
    from shamisa.distortions import functional as fn

    lv = torch.tensor(LEVELS[name], dtype=torch.float64)[[1, 3, 1, 1, 3]]
    seeds = torch.arange(15) + 500
    calls: list[int] = []
    spec = registry.DISTORTIONS[name]
    stages = fn.SHARED_STAGES.get(name)
    if stages is None:
        monkeypatch.setitem(registry.DISTORTIONS, name, dataclasses.replace(
            spec, fn=lambda x, v, s, _f=spec.fn: calls.append(1) or _f(x, v, s)))
    else:
        prepare, finish = stages
        monkeypatch.setitem(fn.SHARED_STAGES, name, (prepare, lambda *a, _f=finish: calls.append(1) or _f(*a)))
    got = apply_levels(batch, name, lv, seeds=seeds).view(5, 3, 3, H, W)
    assert len(calls) == (5 if spec.stochastic else 2)
    monkeypatch.undo()
    for lev in range(5):
        alone = apply_distortion(batch, name, lv[lev].expand(3), seeds=seeds[lev * 3 : (lev + 1) * 3])
        assert torch.equal(got[lev], alone)
    if spec.stochastic:
        assert not torch.equal(got[0], got[2])
    else:
        assert torch.equal(got[0], got[2]) and torch.equal(got[1], got[4])


@pytest.mark.parametrize("suffix", [["quantization", "gaublur"], ["quantization", "whitenoise"]])
def test_builder_repeated_levels_equal_the_chain(suffix):
    """A composition whose deterministic varying slot repeats a value: with a deterministic suffix the level's
    whole result is copied, with a stochastic one the suffix runs with the level's own draws; either way the
    item equals the chain applied level by level."""
    from shamisa.distortions import apply_levels
    from shamisa.distortions.levels import DISTORTION_NAMES
    from shamisa.distortions.sampler import Compositions

    r, p = 2, 24
    full = torch.stack([natural_like_image(p, p, seed=50 + i) for i in range(r)])
    half = torch.stack([natural_like_image(p, p, seed=60 + i) for i in range(r)])
    names = ["gaublur", "jpeg", *suffix]
    ids = torch.tensor([[DISTORTION_NAMES.index(nm) for nm in names]])
    values = torch.tensor([[LEVELS[nm][2] for nm in names]], dtype=torch.float64).repeat(5, 1)[None].clone()
    values[0, :, 1] = torch.tensor([LEVELS["jpeg"][j] for j in (4, 1, 4, 1, 0)], dtype=torch.float64)
    comps = Compositions(ids, values.clone(), values, torch.tensor([4]), torch.tensor([1]))
    sb = build_structured_batch(full, half, comps, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    views = torch.cat([full, half])
    x = apply_distortion(views, names[0], values[0, 0, 0].expand(4), g)
    x = apply_levels(x, names[1], values[0, :, 1], g)
    for j in (2, 3):
        x = apply_distortion(x, names[j], values[0, :, j].repeat_interleave(4), g)
    expected = x.view(5, 4, 3, p, p).transpose(0, 1)
    torch.testing.assert_close(sb.dist[:, 0], expected, atol=1 / 255 + 1e-6, rtol=0)
    assert (sb.dist[:, 0] == expected).float().mean() > 0.999
    assert torch.equal(sb.dist[:, 0, 0], sb.dist[:, 0, 2]) == (suffix[-1] == "gaublur")


def test_upper_order_statistic_is_exact():
    """colorshift's percentiles on the CPU (a sampled threshold, then an order statistic of the values kept)
    equal a full sort's, for spread, tied, constant and tiny rows, and the torch (topk) route."""
    import numpy as np

    from shamisa.distortions import functional as fn

    rng = np.random.default_rng(0)
    rows = [rng.random(5000, dtype=np.float32) ** 4, np.full(3000, 0.25, np.float32), rng.random(7).astype(np.float32),
            np.concatenate([np.zeros(4000, np.float32), rng.random(1000, dtype=np.float32)]),
            np.concatenate([rng.random(100, dtype=np.float32), np.ones(900, np.float32)])]
    for a in rows:
        for rank in {a.shape[0] // 2, int(a.shape[0] * 0.99) - 1, a.shape[0] - 1}:
            assert fn._upper_order_statistic(a, rank) == np.sort(a)[rank]
    e = torch.from_numpy(np.stack([rng.random(4096, dtype=np.float32) ** 3 for _ in range(3)]))
    via_topk = fn._percentile_lower(e.requires_grad_(), 0.99).detach()  # grad: the topk route
    assert torch.equal(fn._percentile_lower(e.detach(), 0.99), via_topk)


@pytest.mark.parametrize("kk", [19, 41, 81])
@pytest.mark.parametrize("shared", [True, False])
def test_banded_products_equal_the_full_products(kk, shared, monkeypatch):
    """The CPU route of the long separable kernels (products in blocks of output rows and columns with only the
    matrix band they touch) equals the full matrix products other devices use, across several blocks."""
    from shamisa.distortions import functional as fn

    g = torch.Generator().manual_seed(kk)
    x = torch.rand(3, 2, 70, 101, generator=g)
    sigma = torch.rand(3, generator=g, dtype=torch.float64) * 8 + 1
    k = fn.gaussian_kernels(sigma[:1] if shared else sigma, torch.full((1 if shared else 3,), kk // 2))
    ah, aw = fn.filter_matrix(k, 70).float(), fn.filter_matrix(k, 101).float()
    ah, awt = (ah[0], aw[0].t()) if shared else (ah[:, None], aw[:, None].transpose(-1, -2))
    full = torch.matmul(torch.matmul(ah, x), awt)
    assert 70 > 2 * fn.BAND_BLOCK
    torch.testing.assert_close(fn._banded_products(x, ah, awt, kk // 2), full, atol=2e-6, rtol=0)
    monkeypatch.setattr(fn, "SEP_DIRECT_MAX_K", 1)  # the product path for every length
    assert torch.equal(fn.sep_filter(x, k.expand(3, -1) if shared else k), fn._banded_products(x, ah, awt, kk // 2))


def test_colorsat1_is_the_hsv_round_trip_with_scaled_saturation():
    """colorsat1 equals converting to HSV, multiplying S by the factor and converting back (kornia), for factors
    that keep S in [0, 1]."""
    import kornia

    x = torch.rand(4, 3, 16, 20, generator=torch.Generator().manual_seed(8))
    factor = torch.tensor([0.0, 0.3, 0.8, 1.0], dtype=torch.float64)
    hsv = kornia.color.rgb_to_hsv(x)
    hsv[:, 1:2] *= factor.float().view(-1, 1, 1, 1)
    expected = kornia.color.hsv_to_rgb(hsv)
    torch.testing.assert_close(apply_distortion(x, "colorsat1", factor), expected, atol=1e-5, rtol=0)


def test_uniform_draws_are_uniform_and_per_seed():
    """impulsenoise's uniform draws: in [0, 1) on a 2**-23 grid, uniform in distribution, a function of the
    sample's seed alone (negative seeds accepted), the same whatever the requested shape."""
    from scipy import stats

    from shamisa.distortions import functional as fn

    like = torch.empty(3, 1)
    seeds = torch.tensor([5, -7, 2**62 - 1])
    u = fn._rand(seeds, (300_000,), like)
    assert u.shape == (3, 300_000) and u.dtype == torch.float32
    assert float(u.min()) >= 0 and float(u.max()) < 1 and torch.equal(u * 2**23, (u * 2**23).round())
    assert stats.kstest(u.flatten()[::5].double().numpy(), "uniform").statistic < 0.004
    assert torch.equal(fn._rand(seeds[1:2], (300_000,), like[:1])[0], u[1])
    assert torch.equal(fn._rand(seeds[1:2], (30, 7), like[:1]).flatten(), u[1, :210])
    assert not torch.equal(u[0], u[1])


def test_scaled_normal_draws_equal_scaled_draws():
    """jitter's draws through a per-sample scaled table equal the draws multiplied afterwards, bit for bit."""
    from shamisa.distortions import functional as fn

    like = torch.empty(3, 1)
    seeds = torch.tensor([3, 4, 5])
    scale = torch.tensor([-0.013, 0.5, 2.0])
    got = fn._randn(seeds, (5, 7, 2), like, scale=scale)
    assert torch.equal(got, fn._randn(seeds, (5, 7, 2), like) * scale.view(-1, 1, 1, 1))
