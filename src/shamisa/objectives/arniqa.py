"""ARNIQA-style contrastive pretraining objective, the baseline SHAMISA is measured against.

ARNIQA (Agnolucci et al., WACV 2024) learns an "image degradation manifold" with SimCLR's NT-Xent loss:
two crops are a positive pair when they carry the *same degradation* but show different content or a
different scale; every other crop in the batch is a negative. This module applies that rule to the
structured batches the pretraining loop builds (see ``shamisa.distortions.builder``), so that both methods
see exactly the same images, encoder, projector and optimiser and differ only in the loss.

Labels (one class per degradation):

* a distorted node ``(item b, view v, composition f, level l)`` gets the class ``(b, f, l)``: its
  positives are the other ``2R - 1`` views (the other contents and the other scale) distorted by the
  same composition at the same level;
* pristine reference crops carry no degradation, so with ``pristine="class"`` (default) they form **one
  class for the whole batch** (pristine is the same "degradation" for every item, so pristine crops of
  different items are positives, as in ARNIQA where undistorted crops share the "no distortion" label);
  ``pristine="exclude"`` drops them from the loss.

The loss is the multi-positive NT-Xent (supervised-contrastive form) over the L2-normalised projector
outputs with temperature 0.1 (ARNIQA's value).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from shamisa.errors import ConfigError
from shamisa.objectives.ntxent import nt_xent_multi_positive

PristineMode = Literal["class", "exclude"]


@dataclass(frozen=True)
class ArniqaLossConfig:
    """Settings of the ARNIQA-style objective.

    Attributes:
        temperature: NT-Xent temperature (ARNIQA: 0.1).
        pristine: ``"class"`` = all pristine crops of the batch form one class; ``"exclude"`` = leave them out.
    """

    temperature: float = 0.1
    pristine: PristineMode = "class"

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.pristine not in ("class", "exclude"):
            raise ConfigError(f"pristine must be 'class' or 'exclude', got {self.pristine!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def structured_labels(
    n_items: int, n_views: int, n_comps: int, n_levels: int, *, pristine: PristineMode = "class"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class labels of the reference and distorted nodes of a structured batch.

    Node order follows the trainer: references ``(b, v)`` row-major, distorted nodes ``(b, v, f, l)``
    row-major. Distorted class ids are ``1 + b*F*L + f*L + l``; the pristine class is 0 (or -1 =
    "excluded" with ``pristine="exclude"``).

    Returns:
        ``(ref_labels (B*2R,), dist_labels (B*2R*F*L,))`` int64.
    """
    b = torch.arange(n_items).view(n_items, 1, 1, 1)
    f = torch.arange(n_comps).view(1, 1, n_comps, 1)
    lv = torch.arange(n_levels).view(1, 1, 1, n_levels)
    dist = (1 + b * n_comps * n_levels + f * n_levels + lv).expand(n_items, n_views, n_comps, n_levels)
    ref_value = 0 if pristine == "class" else -1
    ref = torch.full((n_items * n_views,), ref_value, dtype=torch.long)
    return ref, dist.reshape(-1).clone()


class ArniqaObjective(nn.Module):
    """NT-Xent over the structured batch with "same degradation = positive" labels.

    Same interface as :class:`shamisa.objectives.ShamisaObjective`, so the trainer can switch methods.

    Args:
        cfg: the loss settings.
        rep_dim: encoder feature size (unused; kept for the shared constructor).
        emb_dim: projector output size (unused; kept for the shared constructor).
    """

    def __init__(self, cfg: ArniqaLossConfig | None = None, rep_dim: int = 0, emb_dim: int = 0) -> None:
        super().__init__()
        self.cfg = cfg or ArniqaLossConfig()
        self.rep_dim = rep_dim
        self.emb_dim = emb_dim

    def forward(
        self,
        z_ref: torch.Tensor,
        z_dist: torch.Tensor,
        h_ref: torch.Tensor | None = None,
        h_dist: torch.Tensor | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Compute the loss.

        Args:
            z_ref: (B*2R, E) (or (B, 2R, E)) projector outputs of the pristine crops.
            z_dist: (B*2R*F*L, E) (or (B, 2R, F, L, E)) projector outputs of the distorted crops.
            h_ref, h_dist: encoder features (unused).
            meta: ``{"indices": (B, F, L, S), "n_views": 2R, ...}`` (``n_views`` optional: derived
                from the row count of ``z_ref``).

        Returns:
            ``{"loss": scalar tensor, "nt_xent": float, "pos_sim": float, "neg_sim": float,
            "n_classes": float}``.
        """
        if meta is None or "indices" not in meta:
            raise ValueError("meta must hold 'indices' (B, F, L, S) (and optionally 'n_views')")
        z_ref = z_ref.reshape(-1, z_ref.shape[-1])
        z_dist = z_dist.reshape(-1, z_dist.shape[-1])
        n_items, n_comps, n_levels = (int(s) for s in meta["indices"].shape[:3])
        n_views = int(meta.get("n_views") or z_ref.shape[0] // max(n_items, 1))
        if z_ref.shape[0] != n_items * n_views:
            raise ValueError(f"z_ref has {z_ref.shape[0]} rows, expected B*2R = {n_items * n_views}")
        if z_dist.shape[0] != n_items * n_views * n_comps * n_levels:
            raise ValueError(
                f"z_dist has {z_dist.shape[0]} rows, expected B*2R*F*L = {n_items * n_views * n_comps * n_levels}"
            )
        ref_lab, dist_lab = structured_labels(n_items, n_views, n_comps, n_levels, pristine=self.cfg.pristine)
        z = torch.cat([z_ref, z_dist]).float()
        labels = torch.cat([ref_lab, dist_lab]).to(z.device)
        keep = labels >= 0
        z, labels = z[keep], labels[keep]
        loss = nt_xent_multi_positive(z, labels, self.cfg.temperature)
        with torch.no_grad():
            zn = nn.functional.normalize(z.detach(), dim=1)
            sim = zn @ zn.T
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
            pos = sim[same & ~eye]
            neg = sim[~same]
        return {
            "loss": loss,
            "nt_xent": float(loss.detach()),
            "pos_sim": float(pos.mean()) if pos.numel() else float("nan"),
            "neg_sim": float(neg.mean()) if neg.numel() else float("nan"),
            "n_classes": float(labels.unique().numel()),
        }


def build_arniqa_loss(cfg: Any, rep_dim: int, emb_dim: int) -> ArniqaObjective:
    """Loss builder of ``method="arniqa"`` (``shamisa.objectives.registry.LOSSES``).

    Uses ``cfg.arniqa_loss`` when the pretraining config has such a field, else the defaults.
    """
    loss_cfg = getattr(cfg, "arniqa_loss", None)
    if not isinstance(loss_cfg, ArniqaLossConfig):
        loss_cfg = ArniqaLossConfig()
    return ArniqaObjective(loss_cfg, rep_dim=rep_dim, emb_dim=emb_dim)
