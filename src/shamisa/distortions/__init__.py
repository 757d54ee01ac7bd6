"""The compositional distortion engine: 26 batched KADID-style distortions in 7 groups, their level tables
and severity mapping, the composition sampler and the structured pretraining batch builder.

Quick use::

    from shamisa.distortions import apply_distortion, severity_to_value
    values, _ = severity_to_value("gaublur", torch.full((8,), 2.5))
    y = apply_distortion(x, "gaublur", values, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

from shamisa.distortions.builder import (
    StructuredBatch,
    build_structured_batch,
    collate_structured,
    sample_views,
)
from shamisa.distortions.levels import (
    DISTORTION_NAMES,
    GROUP_OF,
    GROUPS,
    INT_TYPES_BASIC,
    INT_TYPES_EXTENDED,
    LEVELS,
    MAX_SEVERITY,
    N_LEVELS,
    is_integer_type,
    severity_to_value,
    value_to_severity,
)
from shamisa.distortions.registry import (
    DISTORTIONS,
    DistortionSpec,
    UnknownDistortionError,
    apply_distortion,
    apply_levels,
    draw_seeds,
    get_spec,
)
from shamisa.distortions.sampler import Compositions, sample_compositions, sample_severity

__all__ = [
    "DISTORTIONS",
    "DISTORTION_NAMES",
    "GROUPS",
    "GROUP_OF",
    "INT_TYPES_BASIC",
    "INT_TYPES_EXTENDED",
    "LEVELS",
    "MAX_SEVERITY",
    "N_LEVELS",
    "Compositions",
    "DistortionSpec",
    "StructuredBatch",
    "UnknownDistortionError",
    "apply_distortion",
    "apply_levels",
    "build_structured_batch",
    "collate_structured",
    "draw_seeds",
    "get_spec",
    "is_integer_type",
    "sample_compositions",
    "sample_severity",
    "sample_views",
    "severity_to_value",
    "value_to_severity",
]
