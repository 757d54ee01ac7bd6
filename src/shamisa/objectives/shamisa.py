"""The combined SHAMISA objective.

``L = lambda_var L_var + lambda_inv L_rel + lambda_cov L_cov`` where ``L_var``/``L_cov`` are the
VICReg terms on the half split (:func:`~shamisa.objectives.vicreg.split_halves_var_cov`) and
``L_rel`` is the relation-graph loss of :mod:`shamisa.objectives.aggregate` over six branches
(structural, ref_dist, ref_ref, dist_dist, knn, transport). See ``docs/objective.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from shamisa.errors import ConfigError
from shamisa.objectives.aggregate import (
    BRANCHES,
    PAIR_METRICS,
    BranchWeighting,
    branch_statistics,
    combine_branches,
    edge_regulariser,
    pair_cost,
    relation_loss,
)
from shamisa.objectives.curves import CURVES
from shamisa.objectives.graphs import (
    EdgeList,
    NodeLayout,
    dist_dist_edges,
    knn_edges,
    ref_dist_edges,
    ref_ref_edges,
    structural_edges,
    variable_slot_severity,
)
from shamisa.objectives.transport import PrototypeLayer, swapped_prediction_alignment, transport_edges
from shamisa.objectives.vicreg import split_halves_var_cov


@dataclass(frozen=True)
class ShamisaLossConfig:
    """Loss coefficients and branch settings; the defaults are the paper configuration (A0).

    A branch whose coefficient is 0 is switched off (and the weighting MLP input shrinks).
    """

    lambda_var: float = 11.975680785304435
    lambda_inv: float = 88.36882206311276
    lambda_cov: float = 57.21249573027589
    var_eps: float = 1e-4
    single_view_var_cov: bool = False
    coef_structural: float = 0.6010794863656556
    coef_ref_dist: float = 0.8038735892351129
    coef_ref_ref: float = 0.5765695739376243
    coef_dist_dist: float = 0.1789641360878255
    coef_knn: float = 0.20874201442160423
    coef_transport: float = 0.3670314792148166
    dist_dist_topk: int = 4096
    knn_k: int = 31
    n_prototypes: int = 32
    transport_tau: float = 0.1
    sinkhorn_eps: float = 0.05
    sinkhorn_iters: int = 6
    transport_topk_per_node: int = 8
    gamma: float = 0.49057801093072007
    rho: float = 0.03419084992354765
    curve: str = "exponential"
    binary: bool = False
    pair_metric: str = "euc"
    structural_rule: str = "parity"
    weighting: bool = True
    weighting_stop_grad: bool = True
    include_knn_residual: bool = True

    def __post_init__(self) -> None:
        if self.curve not in CURVES:
            raise ConfigError(f"unknown severity curve {self.curve!r}; choose one of {sorted(CURVES)}")
        if self.pair_metric not in PAIR_METRICS:
            raise ConfigError(f"unknown pair metric {self.pair_metric!r}; use one of {PAIR_METRICS}")
        if self.structural_rule not in ("parity", "all_views"):
            raise ConfigError(f"unknown structural rule {self.structural_rule!r}; use 'parity' or 'all_views'")
        for name, value in asdict(self).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"ShamisaLossConfig.{name} must be >= 0, got {value}")
        for name in ("knn_k", "n_prototypes", "sinkhorn_iters", "transport_topk_per_node"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ShamisaLossConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.transport_tau <= 0 or self.sinkhorn_eps <= 0:
            raise ConfigError("transport_tau and sinkhorn_eps must be > 0")

    def coefficients(self) -> dict[str, float]:
        """Branch name -> coefficient, in :data:`BRANCHES` order."""
        return {b: float(getattr(self, f"coef_{b}")) for b in BRANCHES}

    def active_branches(self) -> tuple[str, ...]:
        """Branches with a non-zero coefficient, in :data:`BRANCHES` order."""
        return tuple(b for b, c in self.coefficients().items() if c != 0.0)


def _as_rows(x: Tensor, name: str) -> Tensor:
    """Flatten all leading axes: ``(..., E) -> (n, E)``."""
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, E) or (..., E), got {tuple(x.shape)}")
    return x.reshape(-1, x.shape[-1])


class ShamisaObjective(nn.Module):
    """SHAMISA pretraining loss. Owns the prototype layer (transport branch) and the branch-weighting
    MLP; both are saved with the model state.

    Args:
        cfg: loss configuration.
        rep_dim: dimension of the representations ``h`` (input of the prototype layer).
        emb_dim: dimension of the projector outputs ``z`` (checked in ``forward``).

    Inputs of :meth:`forward` (row-major flattening, see :class:`~shamisa.objectives.graphs.NodeLayout`):
        z_ref: ``(B*2R, E)`` (or ``(B, 2R, E)``) projector outputs of the pristine crops.
        z_dist: ``(B*2R*F*L, E)`` (or ``(B, 2R, F, L, E)``) projector outputs of the distorted images.
        h_ref, h_dist: the matching representations (``rep_dim``), L2-normalised by the encoder.
        meta: ``{"indices": (B, F, L, S) float severity indices (-1 empty), "var_slot": (B, F) long,
            "n_views": 2R}`` (``n_views`` optional: derived from the row counts).

    Returns:
        ``{"loss": scalar tensor with grad}`` plus detached floats ``var, cov, rel, pair, align, reg,
        w_<branch>`` (0 for inactive branches) and ``n_edges`` (int, merged ``i < j`` edges).
    """

    def __init__(self, cfg: ShamisaLossConfig | None = None, rep_dim: int = 2048, emb_dim: int = 768) -> None:
        super().__init__()
        self.cfg = cfg if cfg is not None else ShamisaLossConfig()
        self.rep_dim = int(rep_dim)
        self.emb_dim = int(emb_dim)
        active = self.cfg.active_branches()
        self.prototypes = PrototypeLayer(rep_dim, self.cfg.n_prototypes) if "transport" in active else None
        self.weighting = (
            BranchWeighting(len(active), stop_grad=self.cfg.weighting_stop_grad)
            if self.cfg.weighting and active
            else None
        )

    def extra_repr(self) -> str:
        return f"rep_dim={self.rep_dim}, emb_dim={self.emb_dim}, branches={self.cfg.active_branches()}"

    def _layout(self, z_ref: Tensor, z_dist: Tensor, meta: Mapping[str, Any]) -> NodeLayout:
        indices = meta["indices"]
        if indices.ndim != 4:
            raise ValueError(f"meta['indices'] must be (B, F, L, S), got {tuple(indices.shape)}")
        n_items, n_comps, n_levels = (int(s) for s in indices.shape[:3])
        if z_ref.shape[0] % n_items:
            raise ValueError(f"z_ref has {z_ref.shape[0]} rows, not a multiple of B={n_items}")
        n_views = int(meta.get("n_views", z_ref.shape[0] // n_items))
        layout = NodeLayout(n_items, n_views, n_comps, n_levels)
        if z_ref.shape[0] != layout.n_refs or z_dist.shape[0] != layout.n_dist:
            raise ValueError(
                f"expected {layout.n_refs} reference rows and {layout.n_dist} distorted rows for "
                f"B={n_items}, 2R={n_views}, F={n_comps}, L={n_levels}; got {z_ref.shape[0]} and {z_dist.shape[0]}"
            )
        if n_items < 2 and not self.cfg.single_view_var_cov:
            raise ValueError("the half-split variance/covariance terms need B >= 2 items")
        return layout

    def _branches(
        self, layout: NodeLayout, h: Tensor, meta: Mapping[str, Any], structural: EdgeList
    ) -> tuple[dict[str, EdgeList], Tensor]:
        """Raw (unscaled) graphs of the active branches and the transport alignment term."""
        cfg = self.cfg
        active = cfg.active_branches()
        device = h.device
        graphs: dict[str, EdgeList] = {}
        align = torch.zeros((), device=device)
        needs_severity = "ref_dist" in active or "dist_dist" in active
        severity = (
            variable_slot_severity(meta["indices"].to(device), meta["var_slot"].to(device))
            if needs_severity
            else None
        )
        if "structural" in active:
            graphs["structural"] = structural
        if "ref_dist" in active:
            graphs["ref_dist"] = ref_dist_edges(layout, severity, cfg.curve)
        if "ref_ref" in active:
            graphs["ref_ref"] = ref_ref_edges(layout, device)
        if "dist_dist" in active:
            graphs["dist_dist"] = dist_dist_edges(layout, severity, cfg.curve, cfg.dist_dist_topk)
        if "knn" in active:
            graphs["knn"] = knn_edges(h, cfg.knn_k, binary=cfg.binary)
        if "transport" in active:
            assert self.prototypes is not None
            result = transport_edges(
                h,
                self.prototypes,
                tau=cfg.transport_tau,
                eps=cfg.sinkhorn_eps,
                sinkhorn_iters=cfg.sinkhorn_iters,
                topk_per_node=cfg.transport_topk_per_node,
            )
            graphs["transport"] = result.edges
            if cfg.gamma != 0.0:
                align = swapped_prediction_alignment(result.codes, result.log_probs, structural, cfg.gamma)
        return graphs, align

    def forward(
        self, z_ref: Tensor, z_dist: Tensor, h_ref: Tensor, h_dist: Tensor, meta: Mapping[str, Any]
    ) -> dict[str, Any]:
        cfg = self.cfg
        z_ref, z_dist = _as_rows(z_ref, "z_ref"), _as_rows(z_dist, "z_dist")
        h_ref, h_dist = _as_rows(h_ref, "h_ref"), _as_rows(h_dist, "h_dist")
        if z_ref.shape[1] != self.emb_dim or z_dist.shape[1] != self.emb_dim:
            raise ValueError(f"z must have {self.emb_dim} columns, got {z_ref.shape[1]} and {z_dist.shape[1]}")
        if h_ref.shape[1] != self.rep_dim or h_dist.shape[1] != self.rep_dim:
            raise ValueError(f"h must have {self.rep_dim} columns, got {h_ref.shape[1]} and {h_dist.shape[1]}")
        layout = self._layout(z_ref, z_dist, meta)
        device = z_ref.device
        with torch.autocast(device_type=device.type, enabled=False):
            var, cov = split_halves_var_cov(
                z_ref, z_dist, eps=cfg.var_eps, single_view=cfg.single_view_var_cov
            )
            zero = torch.zeros((), device=device)
            pair = align = reg = rel = zero
            weights = {b: zero for b in BRANCHES}
            n_edges = 0
            active = cfg.active_branches()
            if cfg.lambda_inv != 0.0 and active:
                z = torch.cat((z_ref, z_dist)).float()
                h = torch.cat((h_ref, h_dist)).float()
                structural = structural_edges(layout, cfg.structural_rule, device)  # type: ignore[arg-type]
                graphs, align = self._branches(layout, h, meta, structural)
                coefs = cfg.coefficients()
                scaled = {b: graphs[b].scale(coefs[b]) for b in active}
                if self.weighting is not None:
                    w = self.weighting(branch_statistics([scaled[b] for b in active]).to(device))
                    weights.update({b: w[i] for i, b in enumerate(active)})
                else:
                    weights.update({b: torch.ones((), device=device) for b in active})
                merged = combine_branches(scaled, weights, layout.n_nodes, cfg.include_knn_residual)
                pair = pair_cost(z, merged, binary=cfg.binary, metric=cfg.pair_metric)
                reg = edge_regulariser(merged, cfg.rho) if cfg.rho != 0.0 else zero
                rel = relation_loss(pair, align, reg)
                n_edges = merged.n_edges
            loss = cfg.lambda_var * var + cfg.lambda_inv * rel + cfg.lambda_cov * cov
        names = ["var", "cov", "rel", "pair", "align", "reg"] + [f"w_{b}" for b in BRANCHES]
        values = [var, cov, rel, pair, align, reg] + [torch.as_tensor(weights[b]) for b in BRANCHES]
        floats = torch.stack([v.detach().float().reshape(()).to(device) for v in values]).tolist()
        out: dict[str, Any] = {"loss": loss}
        out.update(zip(names, floats))
        out["n_edges"] = int(n_edges)
        return out
