"""Severity mapping: continuous severities in [0, 4] to level values and back."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shamisa.distortions import (
    DISTORTION_NAMES,
    DISTORTIONS,
    GROUP_OF,
    LEVELS,
    sample_compositions,
    severity_to_value,
    value_to_severity,
)


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


def test_level_edges_the_table_ends_and_beyond():
    """value_to_severity at every table entry (the last one included), outside the table (clamped),
    for Python floats and float32 values; is_integer_type's default set; every kind of bad severity."""
    from shamisa.distortions.levels import LEVELS, is_integer_type, severity_to_value, value_to_severity

    for name, table in LEVELS.items():
        got = value_to_severity(name, torch.tensor(table, dtype=torch.float64))
        assert got.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0], name
        lo_end, hi_end = (min(table), max(table))
        below, above = lo_end - abs(lo_end) - 1.0, hi_end + abs(hi_end) + 1.0
        ends = [0.0, 4.0] if table[-1] > table[0] else [4.0, 0.0]
        assert value_to_severity(name, torch.tensor([below, above], dtype=torch.float64)).tolist() == ends, name
    # a Python float and a float32 value give the float64 severity of the float64 value
    table = LEVELS["whitenoise"]
    v = table[1] + (table[2] - table[1]) / 3.0  # inside the table, not representable in float32
    want = value_to_severity("whitenoise", torch.tensor(v, dtype=torch.float64))
    assert value_to_severity("whitenoise", v).dtype == torch.float64
    assert float(value_to_severity("whitenoise", v)) == float(want)
    # the default is the extended integer set (gaublur continuous in both, highsharpen integer only there)
    assert is_integer_type("highsharpen") and not is_integer_type("highsharpen", extended_int_distortions=False)
    assert not is_integer_type("gaublur")
    for bad in (-0.5, float("nan"), float("inf"), 4.5):
        with pytest.raises(ValueError, match=r"severity must be in \[0, 4\]"):
            severity_to_value("gaublur", torch.tensor([1.0, bad]))
