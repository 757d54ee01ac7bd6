"""Level tables, groups, integer types, the severity mapping and the composition sampler, pinned against
the values of the official SHAMISA configuration (written out here, not read from the package).

The severity mapping is checked against a plain-Python transcription of the rule in the specification:
``v = T[floor s] (1 - f) + T[ceil s] f`` with ``f = s - floor s``; integer types round ``v`` (half to
even, as Python's ``round``) and re-derive ``s = floor s + (v - T[floor s]) / (T[ceil s] - T[floor s])``.
"""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.distortions import (
    DISTORTION_NAMES,
    GROUP_OF,
    GROUPS,
    INT_TYPES_BASIC,
    INT_TYPES_EXTENDED,
    LEVELS,
    sample_compositions,
    sample_severity,
    severity_to_value,
)

# The official configuration's level tables (KADID-10k levels, increasing severity).
OFFICIAL_LEVELS = {
    "gaublur": [0.1, 0.5, 1, 2, 5],
    "lensblur": [1, 2, 4, 6, 8],
    "motionblur": [1, 2, 4, 6, 10],
    "colordiff": [1, 3, 6, 8, 12],
    "colorshift": [1, 3, 6, 8, 12],
    "colorsat1": [0.4, 0.2, 0.1, 0, -0.4],
    "colorsat2": [1, 2, 3, 6, 9],
    "jpeg2000": [16, 32, 45, 120, 170],
    "jpeg": [43, 36, 24, 7, 4],
    "whitenoise": [0.001, 0.002, 0.003, 0.005, 0.01],
    "whitenoiseCC": [0.0001, 0.0005, 0.001, 0.002, 0.003],
    "impulsenoise": [0.001, 0.005, 0.01, 0.02, 0.03],
    "multnoise": [0.001, 0.005, 0.01, 0.02, 0.05],
    "brighten": [0.1, 0.2, 0.4, 0.7, 1.1],
    "darken": [0.05, 0.1, 0.2, 0.4, 0.8],
    "meanshiftneg": [0, -0.08, -0.115, -0.15, -0.185],
    "meanshiftpos": [0, 0.08, 0.115, 0.15, 0.185],
    "jitter": [0.05, 0.1, 0.2, 0.5, 1],
    "noneccpatch": [20, 40, 60, 80, 100],
    "pixelate": [0.01, 0.05, 0.1, 0.2, 0.5],
    "quantization": [20, 16, 13, 10, 7],
    "colorblock": [2, 4, 6, 8, 10],
    "highsharpen": [1, 2, 3, 6, 12],
    "lincontrchangeneg": [0.0, -0.15, -0.3, -0.4, -0.6],
    "lincontrchangepos": [0.0, 0.15, 0.3, 0.4, 0.6],
    "nonlincontrchange": [0.4, 0.3, 0.2, 0.1, 0.05],
}

OFFICIAL_GROUPS = {
    "blur": ["gaublur", "lensblur", "motionblur"],
    "color_distortion": ["colordiff", "colorshift", "colorsat1", "colorsat2"],
    "jpeg": ["jpeg2000", "jpeg"],
    "noise": ["whitenoise", "whitenoiseCC", "impulsenoise", "multnoise"],
    "brightness_change": ["brighten", "darken", "meanshiftneg", "meanshiftpos"],
    "spatial_distortion": ["jitter", "noneccpatch", "pixelate", "quantization", "colorblock"],
    "sharpness_contrast": ["highsharpen", "lincontrchangeneg", "lincontrchangepos", "nonlincontrchange"],
}

# extended_int_distortions=true (the paper configuration) and false
OFFICIAL_INT_EXTENDED = {
    "lensblur", "motionblur", "colordiff", "colorshift", "colorsat2", "jpeg2000", "jpeg",
    "noneccpatch", "quantization", "highsharpen", "colorblock",
}
OFFICIAL_INT_BASIC = {"colorblock", "lensblur", "jpeg", "quantization", "noneccpatch"}


@pytest.mark.parametrize("name", sorted(OFFICIAL_LEVELS))
def test_level_table_matches_official_value_by_value(name):
    ours = LEVELS[name]
    assert len(ours) == 5
    for level, (a, b) in enumerate(zip(ours, OFFICIAL_LEVELS[name], strict=True)):
        assert float(a) == pytest.approx(float(b), abs=1e-12), f"{name} level {level}"


def test_every_type_and_group_is_the_official_one():
    assert set(LEVELS) == set(OFFICIAL_LEVELS) and len(DISTORTION_NAMES) == 26
    assert {g: list(t) for g, t in GROUPS.items()} == OFFICIAL_GROUPS
    for group, names in OFFICIAL_GROUPS.items():
        for name in names:
            assert GROUP_OF[name] == group


def test_integer_types_are_the_official_ones():
    assert set(INT_TYPES_EXTENDED) == OFFICIAL_INT_EXTENDED
    assert set(INT_TYPES_BASIC) == OFFICIAL_INT_BASIC


def _reference_mapping(name: str, s: float, extended: bool = True) -> tuple[float, float]:
    table = OFFICIAL_LEVELS[name]
    lo, hi = math.floor(s), math.ceil(s)
    if lo == hi:
        return float(table[lo]), float(s)
    f = s - lo
    v = table[lo] * (1 - f) + table[hi] * f
    ints = OFFICIAL_INT_EXTENDED if extended else OFFICIAL_INT_BASIC
    if name in ints:
        v = round(v)
        f = (v - table[lo]) / (table[hi] - table[lo])
    return float(v), lo + f


SEVERITIES = [0.0, 0.37, 1.0, 1.5, 2.25, 2.5, 3.0, 3.61, 3.999, 4.0]


@pytest.mark.parametrize("extended", [True, False])
@pytest.mark.parametrize("name", sorted(OFFICIAL_LEVELS))
def test_severity_mapping_matches_the_interpolation_rule(name, extended):
    v, s2 = severity_to_value(name, torch.tensor(SEVERITIES, dtype=torch.float64), extended_int_distortions=extended)
    for i, s in enumerate(SEVERITIES):
        ev, es = _reference_mapping(name, s, extended)
        assert float(v[i]) == pytest.approx(ev, abs=1e-9), (name, s)
        assert float(s2[i]) == pytest.approx(es, abs=1e-9), (name, s)


@pytest.mark.parametrize(
    ("name", "s", "value", "severity"),
    [
        ("gaublur", 2.5, 1.5, 2.5),
        ("colorsat1", 3.5, -0.2, 3.5),
        ("meanshiftneg", 1.25, -0.08 - 0.25 * 0.035, 1.25),
        ("jpeg", 2.5, 16.0, 2.0 + 8.0 / 17.0),  # 15.5 rounds half to even
        ("jpeg2000", 2.5, 82.0, 2.0 + 37.0 / 75.0),  # 82.5 -> 82
        ("quantization", 0.5, 18.0, 0.5),
        ("motionblur", 3.3, 7.0, 3.25),
        ("whitenoise", 3.5, 0.0075, 3.5),
    ],
)
def test_severity_mapping_pinned_values(name, s, value, severity):
    v, s2 = severity_to_value(name, torch.tensor([s], dtype=torch.float64))
    assert float(v[0]) == pytest.approx(value, abs=1e-9)
    assert float(s2[0]) == pytest.approx(severity, abs=1e-9)


def test_severity_distribution_is_a_clipped_half_normal_of_std_2_5():
    n = 40_000
    s = sample_severity(n, generator=torch.Generator().manual_seed(3)).numpy()
    assert s.min() >= 0.0 and s.max() <= 4.0
    # P(|N(0, 2.5)| >= 4) = erfc(1.6 / sqrt 2)
    p_top = math.erfc(1.6 / math.sqrt(2.0))
    frac = float((s == 4.0).mean())
    assert abs(frac - p_top) < 5 * math.sqrt(p_top * (1 - p_top) / n)
    # P(|N| <= 1) = erf(0.4 / sqrt 2)
    p_low = math.erf(0.4 / math.sqrt(2.0))
    frac_low = float((s <= 1.0).mean())
    assert abs(frac_low - p_low) < 5 * math.sqrt(p_low * (1 - p_low) / n)


def test_uniform_severity_distribution():
    n = 20_000
    s = sample_severity(n, generator=torch.Generator().manual_seed(4), severity_dist="uniform").numpy()
    assert abs(s.mean() - 2.0) < 5 * math.sqrt(16 / 12 / n)
    assert abs(float((s < 1.0).mean()) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_composition_structure_one_factor_varies():
    comp = sample_compositions(200, generator=torch.Generator().manual_seed(5))
    counts = torch.bincount(comp.n_dist, minlength=8)[1:]
    assert counts.sum() == 200 and (counts > 10).all()  # n ~ U{1..7}: every count near 200 / 7
    for f in range(comp.n_comps):
        n = int(comp.n_dist[f])
        names = comp.names(f)
        assert len({GROUP_OF[t] for t in names}) == n  # distinct groups
        assert (comp.type_ids[f, n:] == -1).all() and (comp.indices[f, :, n:] == -1).all()
        vs = int(comp.var_slot[f])
        assert 0 <= vs < n
        for j in range(n):
            col = comp.indices[f, :, j]
            if j != vs:
                assert (col == col[0]).all()
            expect = [_reference_mapping(names[j], float(comp.indices[f, lev, j]))[0] for lev in range(5)]
            assert comp.values[f, :, j].tolist() == pytest.approx(expect, abs=1e-9)


# The official fixed-order mode: the first n groups in alphabetical order, and the alphabetically first
# type of each group.
OFFICIAL_FIXED_ORDER = [
    "gaublur",  # blur
    "brighten",  # brightness_change
    "colordiff",  # color_distortion
    "jpeg",  # jpeg ("jpeg" < "jpeg2000")
    "impulsenoise",  # noise
    "highsharpen",  # sharpness_contrast
    "colorblock",  # spatial_distortion
]


def test_fixed_order_matches_the_official_mode():
    comp = sample_compositions(60, generator=torch.Generator().manual_seed(6), fixed_order=True)
    seen = set()
    for f in range(comp.n_comps):
        n = int(comp.n_dist[f])
        seen.add(n)
        assert comp.names(f) == OFFICIAL_FIXED_ORDER[:n]
    assert len(seen) >= 5
