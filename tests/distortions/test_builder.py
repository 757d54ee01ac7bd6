"""The structured batch builder: crop views, the (item, view, composition, level) layout, prefix sharing
and the level-by-level suffix, reproducibility and collation."""

from __future__ import annotations


import pytest
import torch

from shamisa.distortions import (
    DISTORTIONS,
    LEVELS,
    apply_distortion,
    build_structured_batch,
    collate_structured,
    sample_compositions,
    sample_views,
)
from conftest import natural_like_image


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
