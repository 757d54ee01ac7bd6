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
