"""The whole SHAMISA objective against a plain float64 implementation of the specification's formulas,
written here for clarity (dense matrices and loops), not speed: all six branches on, the transport
alignment term on, the edge regulariser on, non-default temperature, top-k, k, prototype count and
Sinkhorn settings. Values and gradients (with respect to z, h and the prototypes) are compared.

The branch-weighting MLP is a random function of the edge statistics; the reference evaluates it from
the module's parameters with its own float64 arithmetic (LayerNorm, Linear, LayerNorm, PReLU, Linear,
softmax).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from shamisa.objectives.shamisa import ShamisaLossConfig, ShamisaObjective

B, V, F, L, S = 2, 4, 2, 3, 3  # items, views (2R), compositions, levels, slots
REP, EMB = 10, 7
N_REF = B * V
N_DIST = B * V * F * L
N = N_REF + N_DIST

CFG = ShamisaLossConfig(
    lambda_var=3.0,
    lambda_inv=40.0,
    lambda_cov=7.0,
    coef_structural=0.6,
    coef_ref_dist=0.8,
    coef_ref_ref=0.5,
    coef_dist_dist=0.2,
    coef_knn=0.3,
    coef_transport=0.4,
    dist_dist_topk=176,  # all 4 * 36 weight-1 pairs and the 32 pairs of the largest other gap (checked below)
    knn_k=5,
    n_prototypes=6,
    transport_tau=0.2,
    sinkhorn_eps=0.1,
    sinkhorn_iters=4,
    transport_topk_per_node=3,
    gamma=0.3,
    rho=0.05,
)


def ref_id(b, v):
    return b * V + v


def dist_id(b, v, f, lev):
    return N_REF + b * (V * F * L) + v * (F * L) + f * L + lev


def strength(gap):
    return math.exp(-0.75 * gap)


def metadata_graphs(sev):
    """Dense (N, N) float64 maps of the four metadata branches; ``sev[b][f][l]`` = variable-slot severity."""
    structural = torch.zeros(N, N, dtype=torch.float64)
    ref_dist = torch.zeros(N, N, dtype=torch.float64)
    ref_ref = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N_REF):
        for j in range(N_REF):
            if i != j:
                ref_ref[i, j] = 1.0
    for b in range(B):
        for f in range(F):
            for lev in range(L):
                for v in range(V):
                    ref_dist[ref_id(b, v), dist_id(b, v, f, lev)] = strength(sev[b][f][lev])
                    for v2 in range(V):
                        if v != v2 and v % 2 == v2 % 2:
                            structural[dist_id(b, v, f, lev), dist_id(b, v2, f, lev)] = 1.0
    candidates = []  # (weight, src, dst)
    for b in range(B):
        for f in range(F):
            for v in range(V):
                for lev in range(L):
                    for v2 in range(V):
                        for l2 in range(L):
                            if (v, lev) == (v2, l2):
                                continue
                            w = strength(abs(sev[b][f][lev] - sev[b][f][l2]))
                            candidates.append((w, dist_id(b, v, f, lev), dist_id(b, v2, f, l2)))
    candidates.sort(key=lambda c: -c[0])
    k = CFG.dist_dist_topk
    assert candidates[k - 1][0] - candidates[k][0] > 1e-6, "top-k boundary falls on a tie: pick another seed"
    dist_dist = torch.zeros(N, N, dtype=torch.float64)
    for w, i, j in candidates[:k]:
        dist_dist[i, j] = w
    return {"structural": structural, "ref_dist": ref_dist, "ref_ref": ref_ref, "dist_dist": dist_dist}


def knn_graph(h, binary=False):
    """a_ij = 1 / (1 + ||h_i - h_j||), a_ii = 0, top k per row, plus the transpose (binary: each kept
    edge weighs 1 instead of a_ij, so a pair that is in both rows' top k weighs 2)."""
    dense = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        aff = [(1.0 / (1.0 + torch.linalg.norm(h[i] - h[j])), j) for j in range(N) if j != i]
        aff.sort(key=lambda a: -float(a[0].detach()))
        for a, j in aff[: CFG.knn_k]:
            a = torch.ones((), dtype=torch.float64) if binary else a
            dense = dense.index_put((torch.tensor([i]), torch.tensor([j])), a.reshape(1), accumulate=True)
    return dense + dense.T


def sinkhorn(logits):
    q = torch.exp(logits.detach() / CFG.sinkhorn_eps).T  # (K, N)
    k, n = q.shape
    q = q / q.sum()
    for _ in range(CFG.sinkhorn_iters):
        for r in range(k):
            q[r] = q[r] / q[r].sum() / k
        for c in range(n):
            q[:, c] = q[:, c] / q[:, c].sum() / n
    return (q * n).T


def transport(h, magnitude, direction, structural):
    protos = magnitude * direction / torch.linalg.norm(direction, dim=1, keepdim=True)
    x = h / torch.linalg.norm(h, dim=1, keepdim=True)
    logits = x @ protos.T
    q = sinkhorn(logits)
    logp = torch.log_softmax(logits / CFG.transport_tau, dim=1)
    p = logp.exp()
    k = logits.shape[1]
    score = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            score[i, j] = sum(logp[i, c] * p[j, c] for c in range(k)) / k
    score = (score - score.min()) / (score.max() - score.min())
    n_keep = CFG.transport_topk_per_node * N
    values = score.detach().reshape(-1).tolist()
    flat = sorted(range(N * N), key=lambda e: -values[e])
    ordered = score.reshape(-1)[flat]
    assert float((ordered[n_keep - 1] - ordered[n_keep]).detach()) > 1e-9
    mask = torch.zeros(N * N, dtype=torch.float64)
    mask[flat[:n_keep]] = 1.0
    graph = score * mask.reshape(N, N)
    self_term = (q * logp).mean()
    pairs = [(i, j) for i in range(N) for j in range(N) if structural[i, j] != 0]
    paired = sum((q[i] * logp[j]).sum() for i, j in pairs) / (len(pairs) * k)
    align = -0.5 * CFG.gamma * (self_term + paired)
    return graph, align


def weighting_mlp(stats, module):
    """The branch-weighting MLP from its parameters: LN -> Linear -> LN -> PReLU -> Linear -> softmax."""
    p = {k: t.detach().double() for k, t in module.state_dict().items()}

    def layer_norm(x, w, b, eps=1e-5):
        mu = x.mean()
        var = ((x - mu) ** 2).mean()
        return (x - mu) / torch.sqrt(var + eps) * w + b

    x = layer_norm(stats, p["net.0.weight"], p["net.0.bias"])
    x = p["net.1.weight"] @ x + p["net.1.bias"]
    x = layer_norm(x, p["net.2.weight"], p["net.2.bias"])
    x = torch.where(x >= 0, x, p["net.3.weight"] * x)
    x = p["net.4.weight"] @ x + p["net.4.bias"]
    return torch.softmax(x, dim=0)


def var_term(z, eps=CFG.var_eps):
    n, d = z.shape
    total = 0.0
    for c in range(d):
        col = z[:, c]
        var = ((col - col.mean()) ** 2).sum() / (n - 1)
        total = total + torch.relu(1.0 - torch.sqrt(var + eps))
    return total / d / 2.0


def cov_term(z):
    n, d = z.shape
    zc = z - z.mean(dim=0)
    total = 0.0
    for a in range(d):
        for b in range(d):
            if a != b:
                total = total + ((zc[:, a] * zc[:, b]).sum() / (n - 1)) ** 2
    return total / d


def reference_loss(z_ref, z_dist, h_ref, h_dist, magnitude, direction, indices, var_slot, weighting, binary=False):
    """binary (ablation A1): kNN edges weigh 1 and the pair cost counts every edge of the merged graph
    once, whatever its weight; the branch statistics and the regulariser still see the weights."""
    sev = [[[float(indices[b, f, lev, var_slot[b, f]]) for lev in range(L)] for f in range(F)] for b in range(B)]
    z = torch.cat([z_ref, z_dist])
    h = torch.cat([h_ref, h_dist])
    graphs = metadata_graphs(sev)
    graphs["knn"] = knn_graph(h, binary)
    graphs["transport"], align = transport(h, magnitude, direction, graphs["structural"])
    coefs = {"structural": CFG.coef_structural, "ref_dist": CFG.coef_ref_dist, "ref_ref": CFG.coef_ref_ref,
             "dist_dist": CFG.coef_dist_dist, "knn": CFG.coef_knn, "transport": CFG.coef_transport}
    order = ["structural", "ref_dist", "ref_ref", "dist_dist", "knn", "transport"]
    scaled = {b: coefs[b] * graphs[b] for b in order}
    stats = []
    for b in order:
        stats += [float((scaled[b] != 0).sum()), float(scaled[b].detach().sum())]
    w = weighting_mlp(torch.tensor(stats, dtype=torch.float64), weighting)
    merged = sum(w[i] * scaled[b] for i, b in enumerate(order))
    pair = 0.0
    reg = 0.0
    d = z.shape[1]
    for i in range(N):
        for j in range(i + 1, N):
            if merged[i, j] != 0:
                pair = pair + (1.0 if binary else merged[i, j]) * ((z[i] - z[j]) ** 2).sum()
                reg = reg + merged[i, j] ** 2
    pair = pair / (N * d)
    rel = 2.0 * (pair + align - CFG.rho * reg)
    z1 = torch.cat([z_ref[: N_REF // 2], z_dist[: N_DIST // 2]])
    z2 = torch.cat([z_ref[N_REF // 2 :], z_dist[N_DIST // 2 :]])
    var = var_term(z1) + var_term(z2)
    cov = cov_term(z1) + cov_term(z2)
    loss = CFG.lambda_var * var + CFG.lambda_inv * rel + CFG.lambda_cov * cov
    return {"loss": loss, "var": var, "cov": cov, "rel": rel, "pair": pair, "align": align, "reg": -CFG.rho * reg,
            "weights": w}


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    z_ref = torch.randn(N_REF, EMB, generator=g, dtype=torch.float64) * 0.7
    z_dist = torch.randn(N_DIST, EMB, generator=g, dtype=torch.float64) * 0.7
    h_ref = torch.nn.functional.normalize(torch.randn(N_REF, REP, generator=g, dtype=torch.float64), dim=1)
    h_dist = torch.nn.functional.normalize(torch.randn(N_DIST, REP, generator=g, dtype=torch.float64), dim=1)
    indices = torch.rand(B, F, L, S, generator=g, dtype=torch.float64) * 4.0
    var_slot = torch.randint(0, S, (B, F), generator=g)
    return z_ref, z_dist, h_ref, h_dist, indices, var_slot


@pytest.mark.parametrize(("seed", "binary"), [(0, False), (1, False), (0, True)])
def test_objective_matches_float64_reference_values_and_gradients(seed, binary, device):
    torch.manual_seed(100 + seed)  # prototype and MLP initialisation
    obj = ShamisaObjective(dataclasses.replace(CFG, binary=binary), rep_dim=REP, emb_dim=EMB)
    z_ref, z_dist, h_ref, h_dist, indices, var_slot = _inputs(seed)

    # package, float32 on the device under test
    obj_dev = obj.to(device)
    leaves = [t.float().to(device).requires_grad_(True) for t in (z_ref, z_dist, h_ref, h_dist)]
    meta = {"indices": indices.float().to(device), "var_slot": var_slot.to(device), "n_views": V}
    out = obj_dev(*leaves, meta)
    out["loss"].backward()

    # reference, float64 on the CPU
    ref_leaves = [t.clone().requires_grad_(True) for t in (z_ref, z_dist, h_ref, h_dist)]
    magnitude = obj.prototypes.magnitude.detach().double().cpu().clone().requires_grad_(True)
    direction = obj.prototypes.direction.detach().double().cpu().clone().requires_grad_(True)
    ref = reference_loss(*ref_leaves, magnitude, direction, indices, var_slot, obj.weighting.cpu(), binary)
    ref["loss"].backward()

    for key in ("var", "cov", "rel", "pair", "align", "reg"):
        assert out[key] == pytest.approx(float(torch.as_tensor(ref[key]).detach()), rel=2e-4, abs=1e-6), key
    assert float(out["loss"].detach()) == pytest.approx(float(ref["loss"].detach()), rel=2e-4)
    for i, b in enumerate(["structural", "ref_dist", "ref_ref", "dist_dist", "knn", "transport"]):
        assert out[f"w_{b}"] == pytest.approx(float(ref["weights"][i].detach()), rel=1e-4)
    assert abs(float(ref["align"].detach())) > 1e-3 and abs(float(ref["reg"].detach())) > 1e-3  # the terms under test are not ~0

    for name, ours, theirs in zip(("z_ref", "z_dist", "h_ref", "h_dist"), leaves, ref_leaves, strict=True):
        scale = float(theirs.grad.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(ours.grad.double().cpu(), theirs.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
    for name, ours, theirs in (
        ("magnitude", obj.prototypes.magnitude, magnitude),
        ("direction", obj.prototypes.direction, direction),
    ):
        scale = float(theirs.grad.abs().max())
        assert scale > 0, name
        torch.testing.assert_close(ours.grad.double().cpu(), theirs.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
