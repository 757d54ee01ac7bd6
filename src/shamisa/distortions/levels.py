"""Distortion groups, level tables and the severity -> parameter mapping.

Every distortion type has a 5-entry level table (KADID-10k levels, ordered by increasing severity).
A continuous *severity index* ``s`` in ``[0, 4]`` maps to a parameter value by linear interpolation
between the table entries ``T[floor(s)]`` and ``T[ceil(s)]``. For integer-valued types the value is
rounded and ``s`` is re-derived so that it is consistent with the rounded value:
``s' = floor(s) + (v - T[floor(s)]) / (T[ceil(s)] - T[floor(s)])``.
"""

from __future__ import annotations

import torch

#: The seven groups in spec order, each with its types in spec order.
GROUPS: dict[str, tuple[str, ...]] = {
    "blur": ("gaublur", "lensblur", "motionblur"),
    "color_distortion": ("colordiff", "colorshift", "colorsat1", "colorsat2"),
    "jpeg": ("jpeg2000", "jpeg"),
    "noise": ("whitenoise", "whitenoiseCC", "impulsenoise", "multnoise"),
    "brightness_change": ("brighten", "darken", "meanshiftneg", "meanshiftpos"),
    "spatial_distortion": ("jitter", "noneccpatch", "pixelate", "quantization", "colorblock"),
    "sharpness_contrast": ("highsharpen", "lincontrchangeneg", "lincontrchangepos", "nonlincontrchange"),
}

#: All 26 type names in spec table order (the index used by ``Compositions.type_ids``).
DISTORTION_NAMES: tuple[str, ...] = tuple(name for names in GROUPS.values() for name in names)

GROUP_OF: dict[str, str] = {name: group for group, names in GROUPS.items() for name in names}

#: Level tables (parameter value at severity 0, 1, 2, 3, 4).
LEVELS: dict[str, tuple[float, float, float, float, float]] = {
    "gaublur": (0.1, 0.5, 1.0, 2.0, 5.0),
    "lensblur": (1, 2, 4, 6, 8),
    "motionblur": (1, 2, 4, 6, 10),
    "colordiff": (1, 3, 6, 8, 12),
    "colorshift": (1, 3, 6, 8, 12),
    "colorsat1": (0.4, 0.2, 0.1, 0.0, -0.4),
    "colorsat2": (1, 2, 3, 6, 9),
    "jpeg2000": (16, 32, 45, 120, 170),
    "jpeg": (43, 36, 24, 7, 4),
    "whitenoise": (0.001, 0.002, 0.003, 0.005, 0.01),
    "whitenoiseCC": (0.0001, 0.0005, 0.001, 0.002, 0.003),
    "impulsenoise": (0.001, 0.005, 0.01, 0.02, 0.03),
    "multnoise": (0.001, 0.005, 0.01, 0.02, 0.05),
    "brighten": (0.1, 0.2, 0.4, 0.7, 1.1),
    "darken": (0.05, 0.1, 0.2, 0.4, 0.8),
    "meanshiftneg": (0.0, -0.08, -0.115, -0.15, -0.185),
    "meanshiftpos": (0.0, 0.08, 0.115, 0.15, 0.185),
    "jitter": (0.05, 0.1, 0.2, 0.5, 1.0),
    "noneccpatch": (20, 40, 60, 80, 100),
    "pixelate": (0.01, 0.05, 0.1, 0.2, 0.5),
    "quantization": (20, 16, 13, 10, 7),
    "colorblock": (2, 4, 6, 8, 10),
    "highsharpen": (1, 2, 3, 6, 12),
    "lincontrchangeneg": (0.0, -0.15, -0.3, -0.4, -0.6),
    "lincontrchangepos": (0.0, 0.15, 0.3, 0.4, 0.6),
    "nonlincontrchange": (0.4, 0.3, 0.2, 0.1, 0.05),
}

#: Integer-valued types with ``extended_int_distortions=True`` (the default, paper config).
INT_TYPES_EXTENDED: frozenset[str] = frozenset(
    {
        "lensblur",
        "motionblur",
        "colordiff",
        "colorshift",
        "colorsat2",
        "jpeg2000",
        "jpeg",
        "noneccpatch",
        "quantization",
        "highsharpen",
        "colorblock",
    }
)
#: Integer-valued types with ``extended_int_distortions=False``.
INT_TYPES_BASIC: frozenset[str] = frozenset({"colorblock", "lensblur", "jpeg", "quantization", "noneccpatch"})

N_LEVELS = 5
MAX_SEVERITY = float(N_LEVELS - 1)


def is_integer_type(name: str, *, extended_int_distortions: bool = True) -> bool:
    """Whether the parameter of ``name`` is forced to an integer."""
    return name in (INT_TYPES_EXTENDED if extended_int_distortions else INT_TYPES_BASIC)


def severity_to_value(
    name: str, s: torch.Tensor, *, extended_int_distortions: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map continuous severity indices to parameter values of one type.

    Args:
        name: a type in :data:`DISTORTION_NAMES`.
        s: severity indices in ``[0, 4]``, any shape (float).
        extended_int_distortions: which set of types is integer-valued (see module docstring).

    Returns:
        ``(values, s_rederived)``, both float64 tensors of the shape of ``s``. For continuous types
        ``s_rederived`` equals ``s``; for integer types it is the severity consistent with the rounded value.

    Raises:
        KeyError: unknown type name.
        ValueError: a severity outside ``[0, 4]``.
    """
    table = torch.tensor(LEVELS[name], dtype=torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64)
    if s.numel() and (not torch.isfinite(s).all() or s.min() < 0 or s.max() > MAX_SEVERITY):
        raise ValueError(f"severity must be in [0, {MAX_SEVERITY:g}], got values in [{s.min():g}, {s.max():g}]")
    lo = torch.floor(s).long()
    hi = torch.ceil(s).long()
    f = s - lo.double()
    t_lo, t_hi = table[lo], table[hi]
    v = t_lo * (1.0 - f) + t_hi * f
    if not is_integer_type(name, extended_int_distortions=extended_int_distortions):
        return v, s.clone()
    v = torch.round(v)
    span = t_hi - t_lo
    safe = torch.where(span == 0, torch.ones_like(span), span)
    f2 = torch.where(span == 0, f, (v - t_lo) / safe)
    return v, lo.double() + f2


def value_to_severity(name: str, v: torch.Tensor) -> torch.Tensor:
    """Inverse of the interpolation: the severity index of a parameter value (clamped to the table range).

    Works for increasing and decreasing tables; plateaus are not present in the tables.
    """
    table = torch.tensor(LEVELS[name], dtype=torch.float64)
    v = torch.as_tensor(v, dtype=torch.float64)
    sign = 1.0 if table[-1] > table[0] else -1.0
    t, vv = table * sign, v * sign
    vv = vv.clamp(t[0], t[-1])
    i = torch.searchsorted(t, vv.contiguous(), right=True).clamp(1, N_LEVELS - 1)
    lo, hi = t[i - 1], t[i]
    return (i - 1).double() + (vv - lo) / (hi - lo)
