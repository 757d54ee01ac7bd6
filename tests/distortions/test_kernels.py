"""Fast paths of the distortion engine against straightforward references: contrast spline, separable and
FFT filters, painters, colour conversions, random draws, repeated level values."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from shamisa.distortions import (
    LEVELS,
    apply_distortion,
)
from conftest import natural_like_image


H, W = 48, 64


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
    # every point of the grid is reachable: the lowest of the 23 bits is 0 or 1 with equal chance
    odd = float(((u * 2**23).long() % 2).double().mean())
    assert abs(odd - 0.5) < 0.005, odd  # 0.005 is over 9 standard deviations for 900,000 draws
    assert stats.kstest(u.flatten()[::5].double().numpy(), "uniform").statistic < 0.004
    assert torch.equal(fn._rand(seeds[1:2], (300_000,), like[:1])[0], u[1])
    assert torch.equal(fn._rand(seeds[1:2], (30, 7), like[:1]).flatten(), u[1, :210])
    assert not torch.equal(u[0], u[1])
    # on like's dtype (the draws are float32 values, exact in float64)
    u64 = fn._rand(seeds, (300,), like.double())
    assert u64.dtype == torch.float64 and torch.equal(u64, u[:, :300].double())


def test_uniform_draws_filled_in_parallel_equal_one_sample_at_a_time():
    """With several torch threads a batch's samples are filled by a thread pool: the same draws as each
    sample drawn alone (which takes the serial path)."""
    from shamisa.distortions import functional as fn

    seeds = torch.tensor([11, 12, 13, 14])
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = fn._rand(seeds, (2, 500), torch.empty(4, 1))
    finally:
        torch.set_num_threads(previous)
    alone = torch.cat([fn._rand(seeds[i : i + 1], (2, 500), torch.empty(1, 1)) for i in range(4)])
    assert torch.equal(together, alone)
    assert len({float(t.sum()) for t in together}) == 4


def test_scaled_normal_draws_equal_scaled_draws():
    """jitter's draws through a per-sample scaled table equal the draws multiplied afterwards, bit for bit."""
    from shamisa.distortions import functional as fn

    like = torch.empty(3, 1)
    seeds = torch.tensor([3, 4, 5])
    scale = torch.tensor([-0.013, 0.5, 2.0])
    got = fn._randn(seeds, (5, 7, 2), like, scale=scale)
    assert torch.equal(got, fn._randn(seeds, (5, 7, 2), like) * scale.view(-1, 1, 1, 1))
