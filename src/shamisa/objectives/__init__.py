"""Every loss, as pure functions plus small modules: the VICReg terms, the relation graphs, the
transport branch, the branch aggregation and the combined SHAMISA objective; NT-Xent and the
ARNIQA-style baseline objective; the LML-IQA local-manifold contrastive loss; and the registry of
pretraining losses (:data:`LOSSES`, a plain dict from ``cfg.method`` to a builder). Depends on torch
only, never on the training, evaluation or inference code that uses it."""

from shamisa.objectives.aggregate import (
    BRANCHES,
    BranchWeighting,
    branch_statistics,
    combine_branches,
    edge_regulariser,
    pair_cost,
    relation_loss,
)
from shamisa.objectives.arniqa import ArniqaLossConfig, ArniqaObjective
from shamisa.objectives.curves import exponential_curve, get_curve, reciprocal_curve
from shamisa.objectives.graphs import (
    EdgeList,
    NodeLayout,
    coalesce,
    dist_dist_candidates,
    dist_dist_edges,
    knn_edges,
    ref_dist_edges,
    ref_ref_edges,
    structural_edges,
    upper_triangle,
    variable_slot_severity,
)
from shamisa.objectives.lml import local_manifold_contrastive_loss
from shamisa.objectives.ntxent import nt_xent, nt_xent_multi_positive
from shamisa.objectives.registry import LOSSES, build_loss
from shamisa.objectives.shamisa import ShamisaLossConfig, ShamisaObjective
from shamisa.objectives.transport import (
    PrototypeLayer,
    TransportResult,
    sinkhorn_knopp,
    swapped_prediction_alignment,
    transport_edges,
)
from shamisa.objectives.vicreg import (
    covariance_term,
    invariance_term,
    split_halves,
    split_halves_var_cov,
    variance_term,
)

__all__ = [
    "LOSSES",
    "ArniqaLossConfig",
    "ArniqaObjective",
    "BRANCHES",
    "BranchWeighting",
    "EdgeList",
    "NodeLayout",
    "PrototypeLayer",
    "ShamisaLossConfig",
    "ShamisaObjective",
    "TransportResult",
    "branch_statistics",
    "build_loss",
    "coalesce",
    "combine_branches",
    "covariance_term",
    "dist_dist_candidates",
    "dist_dist_edges",
    "edge_regulariser",
    "exponential_curve",
    "get_curve",
    "invariance_term",
    "knn_edges",
    "local_manifold_contrastive_loss",
    "nt_xent",
    "nt_xent_multi_positive",
    "pair_cost",
    "reciprocal_curve",
    "ref_dist_edges",
    "ref_ref_edges",
    "relation_loss",
    "sinkhorn_knopp",
    "split_halves",
    "split_halves_var_cov",
    "structural_edges",
    "swapped_prediction_alignment",
    "transport_edges",
    "upper_triangle",
    "variable_slot_severity",
    "variance_term",
]
