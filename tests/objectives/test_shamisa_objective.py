"""The combined SHAMISA objective on tiny random batches."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from shamisa.errors import ConfigError
from shamisa.objectives.aggregate import BRANCHES
from shamisa.objectives.shamisa import ShamisaLossConfig, ShamisaObjective
from shamisa.objectives.vicreg import covariance_term, variance_term

B, R, NF, L, S, E, D = 2, 2, 2, 3, 5, 16, 32
V = 2 * R
TINY = ShamisaLossConfig(knn_k=4, dist_dist_topk=60, n_prototypes=6, transport_topk_per_node=3)


def _batch(seed: int = 0, b: int = B, v: int = V, nf: int = NF, nl: int = L, grad: bool = True):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    n_ref, n_dist = b * v, b * v * nf * nl
    z_ref = torch.randn(n_ref, E, generator=g)
    z_dist = torch.randn(n_dist, E, generator=g)
    h_ref = F.normalize(torch.randn(n_ref, D, generator=g), dim=1)
    h_dist = F.normalize(torch.randn(n_dist, D, generator=g), dim=1)
    if grad:
        for t in (z_ref, z_dist, h_ref, h_dist):
            t.requires_grad_(True)
    indices = torch.full((b, nf, nl, S), -1.0)
    indices[..., :3] = torch.rand(b, nf, nl, 3, generator=g) * 4
    var_slot = torch.randint(0, 3, (b, nf), generator=g)
    meta = {"indices": indices, "var_slot": var_slot, "n_views": v}
    return z_ref, z_dist, h_ref, h_dist, meta


KEYS = {"loss", "var", "cov", "rel", "pair", "align", "reg", "n_edges"} | {f"w_{b}" for b in BRANCHES}


def test_full_objective_finite_with_all_terms_and_gradients() -> None:
    torch.manual_seed(0)
    obj = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch()
    out = obj(z_ref, z_dist, h_ref, h_dist, meta)
    assert set(out) == KEYS
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    for k in KEYS - {"loss", "n_edges"}:
        assert isinstance(out[k], float) and math.isfinite(out[k]), k
    assert isinstance(out["n_edges"], int) and out["n_edges"] > 0
    assert sum(out[f"w_{b}"] for b in BRANCHES) == pytest.approx(1.0, rel=1e-5)
    # loss decomposition
    cfg = obj.cfg
    assert out["rel"] == pytest.approx(2 * (out["pair"] + out["align"] + out["reg"]), rel=1e-5)
    expected = cfg.lambda_var * out["var"] + cfg.lambda_inv * out["rel"] + cfg.lambda_cov * out["cov"]
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    out["loss"].backward()
    for t in (z_ref, z_dist, h_ref, h_dist):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # prototypes learn, the weighting MLP does not (stop-gradient)
    assert obj.prototypes is not None
    assert obj.prototypes.direction.grad is not None and obj.prototypes.magnitude.grad is not None
    assert obj.weighting is not None
    assert all(p.grad is None and not p.requires_grad for p in obj.weighting.parameters())
    assert meta["indices"].grad is None


def test_var_cov_halves_are_item_split() -> None:
    obj = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    out = obj(z_ref, z_dist, h_ref, h_dist, meta)
    z1 = torch.cat((z_ref[:V], z_dist[: V * NF * L]))  # everything of item 0
    z2 = torch.cat((z_ref[V:], z_dist[V * NF * L :]))  # everything of item 1
    assert out["var"] == pytest.approx((variance_term(z1) + variance_term(z2)).item(), rel=1e-5)
    assert out["cov"] == pytest.approx((covariance_term(z1) + covariance_term(z2)).item(), rel=1e-5)


def _dense_metadata_reference(z_ref, z_dist, meta, cfg: ShamisaLossConfig) -> float:
    """Independent loop implementation of L with only metadata branches, weighting off,
    structural rule 'all_views', no top-k."""
    b_n, nf, nl, _ = meta["indices"].shape
    v_n = meta["n_views"]
    nodes = [("ref", b, v, None, None) for b in range(b_n) for v in range(v_n)]
    nodes += [
        ("dist", b, v, f, l) for b in range(b_n) for v in range(v_n) for f in range(nf) for l in range(nl)  # noqa: E741
    ]
    sev = {
        (b, f, l): meta["indices"][b, f, l, meta["var_slot"][b, f]].item()
        for b in range(b_n)
        for f in range(nf)
        for l in range(nl)  # noqa: E741
    }
    z = torch.cat((z_ref, z_dist)).detach().double()
    n, e_dim = z.shape
    pair = 0.0
    reg = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            ki, bi, vi, fi, li = nodes[i]
            kj, bj, vj, fj, lj = nodes[j]
            w = 0.0
            if ki == kj == "ref":
                w += cfg.coef_ref_ref
            if ki == "ref" and kj == "dist" and (bi, vi) == (bj, vj):
                w += cfg.coef_ref_dist * math.exp(-0.75 * sev[(bj, fj, lj)])
            if ki == kj == "dist" and bi == bj and fi == fj:
                w += cfg.coef_dist_dist * math.exp(-0.75 * abs(sev[(bi, fi, li)] - sev[(bi, fi, lj)]))
                if li == lj and vi != vj:
                    w += cfg.coef_structural
            if w:
                pair += w * (z[i] - z[j]).pow(2).sum().item()
                reg += w * w
    pair /= n * e_dim
    rel = 2 * (pair - cfg.rho * reg)
    z1 = torch.cat((z_ref[: len(z_ref) // 2], z_dist[: len(z_dist) // 2])).detach()
    z2 = torch.cat((z_ref[len(z_ref) // 2 :], z_dist[len(z_dist) // 2 :])).detach()
    var = (variance_term(z1) + variance_term(z2)).item()
    cov = (covariance_term(z1) + covariance_term(z2)).item()
    return cfg.lambda_var * var + cfg.lambda_inv * rel + cfg.lambda_cov * cov


def test_metadata_only_matches_dense_loop_reference() -> None:
    cfg = replace(
        ShamisaLossConfig(),
        coef_knn=0.0,
        coef_transport=0.0,
        weighting=False,
        structural_rule="all_views",
        dist_dist_topk=10**6,
    )
    obj = ShamisaObjective(cfg, rep_dim=D, emb_dim=E)
    assert obj.prototypes is None and obj.weighting is None
    z_ref, z_dist, h_ref, h_dist, meta = _batch(seed=3, grad=False)
    out = obj(z_ref, z_dist, h_ref, h_dist, meta)
    assert out["loss"].item() == pytest.approx(_dense_metadata_reference(z_ref, z_dist, meta, cfg), rel=1e-4)
    assert out["w_knn"] == 0.0 and out["w_transport"] == 0.0 and out["w_ref_dist"] == 1.0
    assert out["align"] == 0.0


def test_branch_switches_shrink_the_mlp() -> None:
    cfg = replace(TINY, coef_ref_ref=0.0, coef_transport=0.0)
    obj = ShamisaObjective(cfg, rep_dim=D, emb_dim=E)
    assert obj.prototypes is None
    assert obj.weighting is not None and obj.weighting.net[0].normalized_shape == (8,)
    out = obj(*_batch(grad=False))
    assert out["w_ref_ref"] == 0.0 and out["w_transport"] == 0.0
    assert sum(out[f"w_{b}"] for b in BRANCHES) == pytest.approx(1.0, rel=1e-5)


def test_binary_and_ablation_switches_run() -> None:
    base = _batch(grad=False)
    for cfg in (
        replace(TINY, binary=True),
        replace(TINY, gamma=0.0),
        replace(TINY, rho=0.0),
        replace(TINY, curve="original"),
        replace(TINY, structural_rule="all_views"),
        replace(TINY, weighting_stop_grad=False),
        replace(TINY, single_view_var_cov=True),
        replace(TINY, lambda_inv=0.0),
    ):
        out = ShamisaObjective(cfg, rep_dim=D, emb_dim=E)(*base)
        assert torch.isfinite(out["loss"]), cfg
        if cfg.gamma == 0.0:
            assert out["align"] == 0.0
        if cfg.rho == 0.0:
            assert out["reg"] == 0.0
        if cfg.lambda_inv == 0.0:
            assert out["rel"] == 0.0 and out["n_edges"] == 0


def test_binary_pair_cost_ignores_weights() -> None:
    cfg = replace(TINY, binary=True, coef_knn=0.0, coef_transport=0.0, weighting=False, rho=0.0)
    obj = ShamisaObjective(cfg, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    out = obj(z_ref, z_dist, h_ref, h_dist, meta)
    z = torch.cat((z_ref, z_dist))
    # scaling every coefficient does not change a binary pair cost
    cfg2 = replace(cfg, coef_structural=1.0, coef_ref_dist=1.0, coef_ref_ref=1.0, coef_dist_dist=1.0)
    out2 = ShamisaObjective(cfg2, rep_dim=D, emb_dim=E)(z_ref, z_dist, h_ref, h_dist, meta)
    assert out["pair"] == pytest.approx(out2["pair"], rel=1e-6)
    assert out["pair"] > 0 and z.shape[0] == B * V * (1 + NF * L)


def test_clamps_when_k_and_topk_exceed_candidates() -> None:
    cfg = replace(TINY, knn_k=10**4, dist_dist_topk=10**7, transport_topk_per_node=10**4)
    out = ShamisaObjective(cfg, rep_dim=D, emb_dim=E)(*_batch(b=2, v=2, nf=1, nl=2, grad=False))
    assert torch.isfinite(out["loss"])
    n = 2 * 2 * (1 + 2)
    assert out["n_edges"] == n * (n - 1) // 2  # the kNN graph alone is complete


def test_accepts_unflattened_inputs() -> None:
    obj = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    flat = obj(z_ref, z_dist, h_ref, h_dist, meta)
    shaped = obj(
        z_ref.reshape(B, V, E),
        z_dist.reshape(B, V, NF, L, E),
        h_ref.reshape(B, V, D),
        h_dist.reshape(B, V, NF, L, D),
        {k: v for k, v in meta.items() if k != "n_views"},
    )
    assert shaped["loss"].item() == pytest.approx(flat["loss"].item(), rel=1e-6)


def test_shape_errors() -> None:
    obj = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    with pytest.raises(ValueError):
        obj(z_ref[:-1], z_dist, h_ref, h_dist, meta)
    with pytest.raises(ValueError):
        obj(z_ref, z_dist[:-2], h_ref, h_dist, meta)
    with pytest.raises(ValueError):
        obj(z_ref[:, :-1], z_dist[:, :-1], h_ref, h_dist, meta)
    one = _batch(b=1, grad=False)
    with pytest.raises(ValueError):
        obj(*one)


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        ShamisaLossConfig(curve="linear")
    with pytest.raises(ConfigError):
        ShamisaLossConfig(structural_rule="same_ref")
    with pytest.raises(ConfigError):
        ShamisaLossConfig(coef_knn=-1.0)
    with pytest.raises(ConfigError):
        ShamisaLossConfig(knn_k=0)
    cfg = ShamisaLossConfig()
    assert cfg.active_branches() == BRANCHES
    assert cfg.lambda_var == pytest.approx(11.97568, abs=1e-5)
    assert cfg.lambda_inv == pytest.approx(88.36882, abs=1e-5)
    assert cfg.lambda_cov == pytest.approx(57.21250, abs=1e-5)


def test_paper_scale_batch_runs() -> None:
    """A0 node counts (B=2, R=3, F=4, L=5 -> 252 nodes) with small feature dims."""
    obj = ShamisaObjective(ShamisaLossConfig(), rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(b=2, v=6, nf=4, nl=5)
    out = obj(z_ref, z_dist, h_ref, h_dist, meta)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(z_dist.grad).all()
    assert out["n_edges"] > 0


def test_state_dict_round_trip_reproduces_loss() -> None:
    torch.manual_seed(1)
    a = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    torch.manual_seed(2)
    b = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    batch = _batch(grad=False)
    b.load_state_dict(a.state_dict())
    assert a(*batch)["loss"].item() == pytest.approx(b(*batch)["loss"].item(), rel=1e-6)


def test_get_curve_passes_a_callable_through_and_names_the_known_curves() -> None:
    from shamisa.errors import ConfigError
    from shamisa.objectives.curves import exponential_curve, get_curve, reciprocal_curve

    def mine(gap):
        return 1.0 / (1.0 + gap)

    assert get_curve(mine) is mine
    assert get_curve("exponential") is exponential_curve and get_curve("original") is reciprocal_curve
    with pytest.raises(ConfigError, match=r"^unknown severity curve 'linear'; choose one of exponential, original$"):
        get_curve("linear")


@pytest.mark.parametrize(
    "change",
    [
        {"binary": True},
        {"curve": "original"},
        {"pair_metric": "cos"},
        {"include_knn_residual": False},
        {"var_eps": 0.5},
        {"single_view_var_cov": True},
        {"gamma": 1.0},
        {"rho": 1.0},
        {"structural_rule": "all_views"},
        {"coef_dist_dist": 0.0},
        {"coef_ref_dist": 0.0},
    ],
)
def test_every_option_reaches_the_loss(change) -> None:
    """Each setting changes the value of the objective on a fixed batch (so it is passed on where it is
    used), and only the terms it should touch."""
    base = _batch(seed=4, grad=False)
    torch.manual_seed(0)
    ref = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)(*base)
    torch.manual_seed(0)
    out = ShamisaObjective(replace(TINY, **change), rep_dim=D, emb_dim=E)(*base)
    assert out["loss"].item() != pytest.approx(ref["loss"].item(), rel=1e-6, abs=1e-9), change
    if "gamma" in change:
        assert out["align"] != 0.0  # the alignment term is on at gamma 1
    if "rho" in change:
        assert out["reg"] != 0.0
    if set(change) <= {"var_eps", "single_view_var_cov"}:
        assert out["rel"] == pytest.approx(ref["rel"], rel=1e-6)  # variance / covariance only
    else:
        assert out["var"] == pytest.approx(ref["var"], rel=1e-6) and out["cov"] == pytest.approx(ref["cov"], rel=1e-6)


def test_defaults_edges_and_exact_messages() -> None:
    assert ShamisaObjective().cfg == ShamisaLossConfig()
    obj = ShamisaObjective()
    assert (obj.rep_dim, obj.emb_dim) == (2048, 768)
    for name in ("knn_k", "n_prototypes", "sinkhorn_iters", "transport_topk_per_node"):
        assert getattr(replace(TINY, **{name: 1}), name) == 1  # 1 is allowed
        with pytest.raises(ConfigError, match=rf"^ShamisaLossConfig\.{name} must be >= 1, got 0$"):
            replace(TINY, **{name: 0})
    with pytest.raises(ConfigError, match=r"^ShamisaLossConfig\.gamma must be >= 0, got -1\.0$"):
        replace(TINY, gamma=-1.0)
    with pytest.raises(ConfigError, match=r"^unknown structural rule 'odd'; use 'parity' or 'all_views'$"):
        replace(TINY, structural_rule="odd")
    for tau, eps in ((0.0, 0.05), (0.1, 0.0)):
        with pytest.raises(ConfigError, match=r"^transport_tau and sinkhorn_eps must be > 0$"):
            replace(TINY, transport_tau=tau, sinkhorn_eps=eps)
    tiny = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    with pytest.raises(ValueError, match=rf"^z_ref must have shape \(n, E\) or \(\.\.\., E\), got \({B * V},\)$"):
        tiny(z_ref[:, 0], z_dist, h_ref, h_dist, meta)
    with pytest.raises(ValueError, match=rf"^h_dist must have shape \(n, E\) or \(\.\.\., E\), got \({B * V * NF * L},\)$"):
        tiny(z_ref, z_dist, h_ref, h_dist[:, 0], meta)
    with pytest.raises(ValueError, match=rf"^z must have {E} columns, got {E} and {E - 1}$"):
        tiny(z_ref, z_dist[:, 1:], h_ref, h_dist, meta)
    with pytest.raises(ValueError, match=rf"^h must have {D} columns, got {D - 1} and {D}$"):
        tiny(z_ref, z_dist, h_ref[:, 1:], h_dist, meta)
    with pytest.raises(ValueError, match=r"^meta\['indices'\] must be \(B, F, L, S\), got \(2, 2, 3\)$"):
        tiny(z_ref, z_dist, h_ref, h_dist, dict(meta, indices=meta["indices"][..., 0]))
    with pytest.raises(ValueError, match=r"^z_ref has 3 rows, not a multiple of B=2$"):
        tiny(z_ref[:3], z_dist, h_ref[:3], h_dist, {k: v for k, v in meta.items() if k != "n_views"})


def test_more_exact_messages_and_settings_reaching_the_modules() -> None:
    with pytest.raises(ConfigError, match=r"^unknown severity curve 'cubic'; choose one of \['exponential', 'original'\]$"):
        replace(TINY, curve="cubic")
    with pytest.raises(ConfigError, match=r"^unknown pair metric 'l1'; use one of \('euc', 'cos'\)$"):
        replace(TINY, pair_metric="l1")
    tiny = ShamisaObjective(TINY, rep_dim=D, emb_dim=E)
    assert tiny.prototypes.n_prototypes == TINY.n_prototypes == 6
    assert ShamisaObjective(replace(TINY, weighting_stop_grad=False), rep_dim=D, emb_dim=E).weighting.stop_grad is False
    z_ref, z_dist, h_ref, h_dist, meta = _batch(grad=False)
    with pytest.raises(ValueError, match=r"^z_dist must have shape \(n, E\) or \(\.\.\., E\), got \(48,\)$"):
        tiny(z_ref, z_dist[:, 0], h_ref, h_dist, meta)
    with pytest.raises(ValueError, match=r"^h_ref must have shape \(n, E\) or \(\.\.\., E\), got \(8,\)$"):
        tiny(z_ref, z_dist, h_ref[:, 0], h_dist, meta)
    with pytest.raises(ValueError, match=r"^expected 8 reference rows and 48 distorted rows for B=2, 2R=4, F=2, L=3; got 8 and 47$"):
        tiny(z_ref, z_dist[:47], h_ref, h_dist[:47], meta)
    one = _batch(b=1, grad=False)
    with pytest.raises(ValueError, match=r"^the half-split variance/covariance terms need B >= 2 items$"):
        tiny(*one)
