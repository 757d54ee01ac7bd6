"""Sampling distortion compositions ("one factor varies at a time").

A composition is an ordered chain of up to ``max_distortions`` distortions from distinct groups. It has
``L`` levels that differ only in the severity of one slot (the *varying slot*); every other slot has the
same type, severity and value at all levels.

Draw order from the generator (all on the CPU, so results are device independent), per composition:
``n``, the group permutation, the type within each group, the base severities, the varying slot, the
``L`` fresh severities of the varying slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from shamisa.distortions.levels import DISTORTION_NAMES, GROUPS, MAX_SEVERITY, severity_to_value
from shamisa.errors import ConfigError

SeverityDist = Literal["gaussian", "uniform"]
#: Standard deviation of the half-normal severity distribution.
SEVERITY_STD = 2.5

_GROUP_NAMES = tuple(GROUPS)
_TYPE_ID = {name: i for i, name in enumerate(DISTORTION_NAMES)}
#: Group positions in alphabetical order of the group names (the fixed-order ablation's order).
_ALPHABETICAL_GROUPS = sorted(range(len(_GROUP_NAMES)), key=lambda g: _GROUP_NAMES[g])


@dataclass(frozen=True)
class Compositions:
    """``F`` sampled compositions with ``L`` levels and ``S`` slots.

    Attributes:
        type_ids: (F, S) long, index into :data:`DISTORTION_NAMES`; -1 for empty slots. Application order =
            slot order; the ``n_dist[f]`` active slots come first.
        indices: (F, L, S) float64 continuous severity index in [0, 4] (-1 for empty slots).
        values: (F, L, S) float64 parameter values (-1 for empty slots).
        n_dist: (F,) long number of active slots.
        var_slot: (F,) long, the slot whose severity varies across levels.
    """

    type_ids: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n_dist: torch.Tensor
    var_slot: torch.Tensor

    @property
    def n_comps(self) -> int:
        return int(self.type_ids.shape[0])

    @property
    def n_levels(self) -> int:
        return int(self.indices.shape[1])

    @property
    def max_distortions(self) -> int:
        return int(self.type_ids.shape[1])

    def names(self, f: int) -> list[str]:
        """The active type names of composition ``f`` in application order."""
        return [DISTORTION_NAMES[int(t)] for t in self.type_ids[f, : int(self.n_dist[f])]]


def sample_severity(
    n: int, *, generator: torch.Generator, severity_dist: SeverityDist = "gaussian", discrete: bool = False
) -> torch.Tensor:
    """``n`` severity indices in [0, 4]: ``|N(0, 2.5)|`` clipped (or ``U[0, 4]``); rounded if ``discrete``."""
    if severity_dist == "gaussian":
        s = (torch.randn(n, generator=generator, dtype=torch.float64) * SEVERITY_STD).abs().clamp(0, MAX_SEVERITY)
    elif severity_dist == "uniform":
        s = torch.rand(n, generator=generator, dtype=torch.float64) * MAX_SEVERITY
    else:
        raise ConfigError(f"severity_dist must be 'gaussian' or 'uniform', got {severity_dist!r}")
    return torch.round(s) if discrete else s


def sample_compositions(
    n_comps: int,
    *,
    generator: torch.Generator,
    max_distortions: int = 7,
    n_levels: int = 5,
    severity_dist: SeverityDist = "gaussian",
    discrete: bool = False,
    fixed_order: bool = False,
    extended_int_distortions: bool = True,
) -> Compositions:
    """Sample ``n_comps`` compositions.

    Rules: ``n ~ U{1..max_distortions}``; ``n`` distinct groups in random order; one type per group
    uniformly; with ``fixed_order`` (ablation D4, as the reference's fixed-order mode) the first ``n``
    groups in alphabetical order of their names and the alphabetically first type of each group
    (gaublur, brighten, colordiff, jpeg, impulsenoise, highsharpen, colorblock); a base
    severity per slot; one varying slot uniformly among the active ones, which gets ``n_levels``
    independent fresh severities (unsorted). Values come from :func:`severity_to_value` (integer types
    rounded, their severities re-derived).

    Args:
        n_comps: F, the number of compositions.
        generator: CPU generator (all draws).
        max_distortions: S, 1..7.
        n_levels: L, levels per composition.
        severity_dist: "gaussian" (half-normal, sigma 2.5, clipped to 4) or "uniform".
        discrete: round severities to integer levels (ablation).
        fixed_order: the first ``n`` groups alphabetically, each with its alphabetically first type (ablation).
        extended_int_distortions: which types are integer-valued.

    Returns:
        :class:`Compositions`.
    """
    if not 1 <= max_distortions <= len(GROUPS):
        raise ConfigError(f"max_distortions must be in 1..{len(GROUPS)}, got {max_distortions}")
    if n_comps < 0 or n_levels < 1:
        raise ConfigError(f"need n_comps >= 0 and n_levels >= 1, got {n_comps}, {n_levels}")
    if generator.device.type != "cpu":
        raise ValueError("sample_compositions needs a CPU torch.Generator")
    s_slots = max_distortions
    type_ids = torch.full((n_comps, s_slots), -1, dtype=torch.long)
    indices = torch.full((n_comps, n_levels, s_slots), -1.0, dtype=torch.float64)
    values = torch.full((n_comps, n_levels, s_slots), -1.0, dtype=torch.float64)
    n_dist = torch.zeros(n_comps, dtype=torch.long)
    var_slot = torch.zeros(n_comps, dtype=torch.long)
    for f in range(n_comps):
        n = int(torch.randint(1, max_distortions + 1, (1,), generator=generator))
        groups = torch.randperm(len(_GROUP_NAMES), generator=generator)[:n].tolist()
        if fixed_order:  # the draws above are still made, so the rest of the stream is unchanged
            groups = _ALPHABETICAL_GROUPS[:n]
        names = []
        for g in groups:
            members = GROUPS[_GROUP_NAMES[g]]
            k = int(torch.randint(0, len(members), (1,), generator=generator))
            names.append(min(members) if fixed_order else members[k])
        base = sample_severity(n, generator=generator, severity_dist=severity_dist, discrete=discrete)
        v_slot = int(torch.randint(0, n, (1,), generator=generator))
        fresh = sample_severity(n_levels, generator=generator, severity_dist=severity_dist, discrete=discrete)
        for j, name in enumerate(names):
            type_ids[f, j] = _TYPE_ID[name]
            s = fresh if j == v_slot else base[j].expand(n_levels)
            val, s2 = severity_to_value(name, s, extended_int_distortions=extended_int_distortions)
            indices[f, :, j] = s2
            values[f, :, j] = val
        n_dist[f] = n
        var_slot[f] = v_slot
    return Compositions(type_ids=type_ids, indices=indices, values=values, n_dist=n_dist, var_slot=var_slot)
