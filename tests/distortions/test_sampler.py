"""The composition sampler: metadata consistency, the severity distribution, determinism and options."""

from __future__ import annotations


import pytest
import torch

from shamisa.distortions import (
    GROUP_OF,
    GROUPS,
    sample_compositions,
)
from shamisa.errors import ConfigError


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
    firsts = {min(members) for members in GROUPS.values()}
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


def test_the_varying_slot_takes_fresh_severities_across_levels() -> None:
    """One factor varies at a time: the varying slot's severity changes across the levels (fresh draws),
    every other slot keeps its severity. Continuous draws make equal levels rare (integer types and the
    clip at 4 can tie), so at least 90% of compositions must show two or more distinct severities there."""
    import torch

    from shamisa.distortions.sampler import sample_compositions

    c = sample_compositions(300, generator=torch.Generator().manual_seed(5), n_levels=5)
    varying_differs = 0
    for f in range(c.n_comps):
        n, v = int(c.n_dist[f]), int(c.var_slot[f])
        assert 0 <= v < n
        for j in range(n):
            distinct = torch.unique(c.indices[f, :, j]).numel()
            if j == v:
                varying_differs += distinct >= 2
            else:
                assert distinct == 1, (f, j)
    assert varying_differs >= 0.9 * c.n_comps


def _continuous_severities(comp):
    """Every drawn severity of the continuous types: one base value per fixed slot, the L fresh values of
    the varying slot."""
    import numpy as np

    from shamisa.distortions import DISTORTION_NAMES
    from shamisa.distortions.levels import is_integer_type

    out = []
    for f in range(comp.n_comps):
        for j in range(int(comp.n_dist[f])):
            if is_integer_type(DISTORTION_NAMES[int(comp.type_ids[f, j])]):
                continue
            s = comp.indices[f, :, j]
            out.extend(s.tolist() if j == int(comp.var_slot[f]) else [float(s[0])])
    return np.array(out)


def test_severity_laws_reach_the_compositions():
    """The severities in the compositions follow the chosen law: the half-normal of sigma 2.5 clipped at 4
    (Kolmogorov-Smirnov against its CDF, and the mass below 1) or the uniform law on [0, 4]."""
    import math

    import numpy as np
    from scipy import stats

    from shamisa.distortions.sampler import sample_compositions

    gauss = _continuous_severities(sample_compositions(600, generator=torch.Generator().manual_seed(5)))
    uni = _continuous_severities(
        sample_compositions(600, generator=torch.Generator().manual_seed(5), severity_dist="uniform")
    )
    assert gauss.size > 1000 and uni.size > 1000

    def half_normal_cdf(x):  # |N(0, 2.5)| below the clip at 4, renormalised
        erf = np.vectorize(lambda t: math.erf(max(t, 0.0) / (2.5 * math.sqrt(2))))
        return np.minimum(erf(x) / math.erf(4 / (2.5 * math.sqrt(2))), 1.0)

    assert stats.kstest(gauss[gauss < 4.0], half_normal_cdf).pvalue > 1e-3
    below_one = math.erf(1 / (2.5 * math.sqrt(2)))  # 0.311
    frac = float((gauss < 1.0).mean())
    assert abs(frac - below_one) < 5 * math.sqrt(below_one * (1 - below_one) / gauss.size)
    clipped = 1 - math.erf(4 / (2.5 * math.sqrt(2)))  # 0.110 of the draws sit at 4
    assert abs(float((gauss == 4.0).mean()) - clipped) < 5 * math.sqrt(clipped * (1 - clipped) / gauss.size)
    assert stats.kstest(uni / 4.0, "uniform").pvalue > 1e-3


def test_severity_draws_are_float64_from_the_given_generator_only():
    from shamisa.distortions.sampler import sample_compositions, sample_severity

    g = torch.Generator().manual_seed(3)
    want = (torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2.5).abs().clamp(0, 4)
    assert torch.equal(sample_severity(6, generator=g), want)
    want_u = torch.rand(6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 4.0
    assert torch.equal(sample_severity(6, generator=torch.Generator().manual_seed(4), severity_dist="uniform"), want_u)
    state = torch.get_rng_state()
    a = sample_compositions(20, generator=torch.Generator().manual_seed(9), severity_dist="uniform")
    b = sample_compositions(20, generator=torch.Generator().manual_seed(9), severity_dist="uniform")
    assert torch.equal(a.values, b.values) and torch.equal(torch.get_rng_state(), state)


def test_integer_set_reaches_the_values():
    """extended_int_distortions=False keeps the extended-only integer types (highsharpen, ...) continuous."""
    from shamisa.distortions import DISTORTION_NAMES
    from shamisa.distortions.sampler import sample_compositions

    hs = DISTORTION_NAMES.index("highsharpen")
    for extended in (True, False):
        comp = sample_compositions(400, generator=torch.Generator().manual_seed(2), extended_int_distortions=extended)
        vals = comp.values[comp.type_ids[:, None, :].expand_as(comp.values) == hs]
        assert vals.numel() > 50
        whole = bool((vals == vals.round()).all())
        assert whole == extended


def test_argument_edges_and_messages():
    from shamisa.distortions.sampler import sample_compositions

    g = torch.Generator().manual_seed(0)
    one = sample_compositions(3, generator=g, max_distortions=1, n_levels=1)
    assert one.type_ids.shape == (3, 1) and one.values.shape == (3, 1, 1) and (one.n_dist == 1).all()
    assert sample_compositions(0, generator=g).n_comps == 0
    with pytest.raises(ConfigError, match=r"^max_distortions must be in 1\.\.7, got 0$"):
        sample_compositions(1, generator=g, max_distortions=0)
    with pytest.raises(ConfigError, match=r"^max_distortions must be in 1\.\.7, got 8$"):
        sample_compositions(1, generator=g, max_distortions=8)
    with pytest.raises(ConfigError, match=r"^need n_comps >= 0 and n_levels >= 1, got -1, 5$"):
        sample_compositions(-1, generator=g)
    with pytest.raises(ConfigError, match=r"^need n_comps >= 0 and n_levels >= 1, got 2, 0$"):
        sample_compositions(2, generator=g, n_levels=0)
    with pytest.raises(ConfigError, match=r"^severity_dist must be 'gaussian' or 'uniform', got 'normal'$"):
        sample_compositions(1, generator=g, severity_dist="normal")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^sample_compositions needs a CPU torch.Generator$"):
            sample_compositions(1, generator=torch.Generator("cuda"))
