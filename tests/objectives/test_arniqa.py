"""The ARNIQA-style objective: labels over the structured batch and the multi-positive NT-Xent value."""

from __future__ import annotations

import math

import pytest
import torch

from shamisa.objectives.arniqa import ArniqaLossConfig, ArniqaObjective, structured_labels
from shamisa.errors import ConfigError


def _meta(b: int, n_views: int, f: int, lv: int) -> dict:
    return {"indices": torch.zeros(b, f, lv, 7), "var_slot": torch.zeros(b, f, dtype=torch.long), "n_views": n_views}


def test_labels_follow_item_composition_level() -> None:
    ref, dist = structured_labels(2, 2, 1, 2)
    assert ref.tolist() == [0, 0, 0, 0]  # one pristine class for the whole batch
    # order (b, v, f, l): item 0 views 0,1 then item 1 views 0,1; class = 1 + b*F*L + f*L + l
    assert dist.tolist() == [1, 2, 1, 2, 3, 4, 3, 4]
    ref_x, _ = structured_labels(2, 2, 1, 2, pristine="exclude")
    assert (ref_x == -1).all()


def test_labels_views_of_a_class_are_exactly_the_2r_views() -> None:
    b, v, f, lv = 3, 6, 4, 5
    _, dist = structured_labels(b, v, f, lv)
    grid = dist.view(b, v, f, lv)
    # every class holds exactly the 2R views of one (item, composition, level)
    counts = torch.bincount(dist)
    assert (counts[1:] == v).all() and counts[0] == 0
    assert (grid == grid[:, :1]).all()
    assert grid[:, 0].unique().numel() == b * f * lv


def test_hand_computed_one_positive_each() -> None:
    # B=1, 2 views, 1 composition, 2 levels, pristine excluded: labels [1, 2, 1, 2]
    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    z_dist = torch.stack([e1, e2, e1, e2]) * 3.0  # scale must not matter (rows are normalised)
    z_ref = torch.randn(2, 3)
    obj = ArniqaObjective(ArniqaLossConfig(temperature=1.0, pristine="exclude"), rep_dim=3, emb_dim=3)
    out = obj(z_ref, z_dist, None, None, _meta(1, 2, 1, 2))
    # each anchor: positive sim 1, two negatives sim 0 -> -log(e^1 / (e^1 + 2))
    expected = math.log(1.0 + 2.0 * math.exp(-1.0))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["pos_sim"] == pytest.approx(1.0)
    assert out["neg_sim"] == pytest.approx(0.0)
    assert out["n_classes"] == 2.0


def test_hand_computed_with_pristine_class() -> None:
    # B=1, 2 views, F=1, L=1: refs (label 0) and dist (label 1), two of each
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z_ref = torch.stack([e1, e1])
    z_dist = torch.stack([e2, e2])
    out = ArniqaObjective(ArniqaLossConfig(temperature=0.5))(z_ref, z_dist, None, None, _meta(1, 2, 1, 1))
    # every anchor: one positive (sim 1), two negatives (sim 0), T = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)


def _supcon_out_reference(z: torch.Tensor, labels: list[int], t: float) -> float:
    zn = torch.nn.functional.normalize(z.double(), dim=1)
    n = len(labels)
    total, anchors = 0.0, 0
    for i in range(n):
        denom = sum(math.exp(float(zn[i] @ zn[k]) / t) for k in range(n) if k != i)
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        total += -sum(math.log(math.exp(float(zn[i] @ zn[p]) / t) / denom) for p in pos) / len(pos)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("pristine", ["class", "exclude"])
def test_random_batch_matches_reference_formula(pristine: str) -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(0)
    b, v, f, lv, e = 2, 4, 2, 3, 8
    z_ref = torch.randn(b * v, e, generator=g)
    z_dist = torch.randn(b * v * f * lv, e, generator=g)
    cfg = ArniqaLossConfig(temperature=0.2, pristine=pristine)  # type: ignore[arg-type]
    out = ArniqaObjective(cfg, e, e)(z_ref, z_dist, None, None, _meta(b, v, f, lv))
    ref_lab, dist_lab = structured_labels(b, v, f, lv, pristine=cfg.pristine)
    z = torch.cat([z_ref, z_dist])
    labels = torch.cat([ref_lab, dist_lab])
    keep = labels >= 0
    expected = _supcon_out_reference(z[keep], labels[keep].tolist(), 0.2)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-4)
    assert isinstance(out["nt_xent"], float)


def test_gradient_flows_and_shapes_are_checked() -> None:
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    z_ref = torch.randn(4, 6, generator=g, requires_grad=True)
    z_dist = torch.randn(8, 6, generator=g, requires_grad=True)
    out = ArniqaObjective()(z_ref, z_dist, None, None, _meta(1, 4, 1, 2))
    out["loss"].backward()
    assert z_ref.grad is not None and z_dist.grad is not None
    assert torch.isfinite(z_dist.grad).all()
    with pytest.raises(ValueError):
        ArniqaObjective()(z_ref, z_dist[:5], None, None, _meta(1, 4, 1, 2))
    with pytest.raises(ValueError):
        ArniqaObjective()(z_ref, z_dist, None, None, None)
    # batched layouts and a missing n_views give the same loss as the flat rows
    flat = ArniqaObjective()(z_ref, z_dist, None, None, _meta(1, 4, 1, 2))["loss"]
    meta = {"indices": torch.zeros(1, 1, 2, 7)}
    nested = ArniqaObjective()(z_ref.view(1, 4, 6), z_dist.view(1, 4, 1, 2, 6), None, None, meta)["loss"]
    assert nested.item() == pytest.approx(flat.item(), rel=1e-6)


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        ArniqaLossConfig(temperature=0.0)
    with pytest.raises(ConfigError):
        ArniqaLossConfig(pristine="per-item")  # type: ignore[arg-type]
    assert ArniqaLossConfig().to_dict() == {"temperature": 0.1, "pristine": "class"}


def test_similarity_diagnostics_are_the_mean_cosines_of_positive_and_negative_pairs() -> None:
    """pos_sim / neg_sim: mean cosine similarity over the ordered pairs (i != j) of one class, and over
    the pairs of different classes, computed here with a loop over the labels of the batch."""
    b, v, f, lv = 2, 2, 2, 2
    g = torch.Generator().manual_seed(5)
    z_ref, z_dist = torch.randn(b * v, 6, generator=g), torch.randn(b * v * f * lv, 6, generator=g)
    out = ArniqaObjective()(z_ref, z_dist, meta=_meta(b, v, f, lv))
    z = torch.cat([z_ref, z_dist]).double()
    z = z / z.norm(dim=1, keepdim=True)
    labels = [0] * (b * v) + [1 + bi * f * lv + fi * lv + li for bi in range(b) for _ in range(v)
                              for fi in range(f) for li in range(lv)]
    pos, neg = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            s = float(z[i] @ z[j])
            if labels[i] == labels[j] and i != j:
                pos.append(s)
            elif labels[i] != labels[j]:
                neg.append(s)
    assert out["pos_sim"] == pytest.approx(sum(pos) / len(pos), abs=1e-6)
    assert out["neg_sim"] == pytest.approx(sum(neg) / len(neg), abs=1e-6)
    assert out["n_classes"] == 1 + b * f * lv
    # one view per item and the pristine crops left out: every class has one member, no positive pair
    one = ArniqaObjective(ArniqaLossConfig(pristine="exclude"))(
        torch.randn(b, 6, generator=g), torch.randn(b * f * lv, 6, generator=g), meta=_meta(b, 1, f, lv)
    )
    assert math.isnan(one["pos_sim"]) and not math.isnan(one["neg_sim"])
    # one item, one composition, one level, pristine left out: a single class, no negative pair
    single = ArniqaObjective(ArniqaLossConfig(pristine="exclude"))(
        torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g), meta=_meta(1, 2, 1, 1)
    )
    assert math.isnan(single["neg_sim"]) and not math.isnan(single["pos_sim"])


def test_error_messages_name_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match=r"^temperature must be > 0, got -1\.0$"):
        ArniqaLossConfig(temperature=-1.0)
    with pytest.raises(ConfigError, match=r"^pristine must be 'class' or 'exclude', got 'both'$"):
        ArniqaLossConfig(pristine="both")  # type: ignore[arg-type]
    obj = ArniqaObjective()
    with pytest.raises(ValueError, match=r"^meta must hold 'indices' \(B, F, L, S\) \(and optionally 'n_views'\)$"):
        obj(torch.randn(4, 3), torch.randn(16, 3), meta={})
    with pytest.raises(ValueError, match=r"^z_ref has 5 rows, expected B\*2R = 4$"):
        obj(torch.randn(5, 3), torch.randn(16, 3), meta=_meta(2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"^z_dist has 15 rows, expected B\*2R\*F\*L = 16$"):
        obj(torch.randn(4, 3), torch.randn(15, 3), meta=_meta(2, 2, 2, 2))
