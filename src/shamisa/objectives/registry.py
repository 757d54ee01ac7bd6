"""The registry of pretraining losses: ``cfg.method`` -> a builder of the loss module.

A plain dict, read by the pretraining loop (``shamisa.training.model.build_model``). A new loss is one
entry::

    LOSSES["mine"] = lambda cfg, rep_dim, emb_dim: MyLoss(...)

Every loss module's ``forward(z_ref, z_dist, h_ref, h_dist, meta)`` gets ``z_ref (N_ref, E)``,
``z_dist (N_dist, E)`` flattened row-major over ``(item, view, composition, level)``, the matching
encoder features ``h``, and ``meta = {"indices": (B,F,L,S), "var_slot": (B,F), "n_views": 2R}``; it
returns a dict with a scalar ``"loss"`` tensor and any number of float terms (all logged). Its
parameters with ``requires_grad`` join the optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from shamisa.errors import ConfigError
from shamisa.objectives.arniqa import build_arniqa_loss
from shamisa.objectives.shamisa import ShamisaObjective

if TYPE_CHECKING:
    from shamisa.configs import PretrainConfig

__all__ = ["LOSSES", "LossBuilder", "build_loss"]

LossBuilder = Callable[["PretrainConfig", int, int], nn.Module]
"""``builder(cfg, rep_dim, emb_dim) -> loss module`` (see the module docstring)."""


def _shamisa(cfg: PretrainConfig, rep_dim: int, emb_dim: int) -> nn.Module:
    return ShamisaObjective(cfg.loss, rep_dim=rep_dim, emb_dim=emb_dim)


LOSSES: dict[str, LossBuilder] = {
    "shamisa": _shamisa,
    "arniqa": build_arniqa_loss,
}


def build_loss(cfg: PretrainConfig, rep_dim: int, emb_dim: int) -> nn.Module:
    """The loss module of ``cfg.method``.

    Raises:
        ConfigError: no loss registered under that name.
    """
    if cfg.method not in LOSSES:
        raise ConfigError(f"method {cfg.method!r} has no loss registered (available: {', '.join(sorted(LOSSES))})")
    return LOSSES[cfg.method](cfg, rep_dim, emb_dim)
