"""The model card: what a model file says about itself (encoder, crop, the head's training data and
score scale, recipe, metrics), parsed and checked, and the mapping of a raw prediction to the public
score::

    score = clip((raw - lo) / (hi - lo), 0, 1)        # MOS heads
    score = 1 - clip((raw - lo) / (hi - lo), 0, 1)    # DMOS heads (lower DMOS = better)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shamisa import __version__
from shamisa.errors import ModelFileError
from shamisa.models.readout import READOUTS

__all__ = ["FORMAT", "FORMAT_VERSION", "PROTOCOL", "REQUIRED_META", "ModelCard", "raw_to_score"]

FORMAT = "shamisa-model"
FORMAT_VERSION = "1"
PROTOCOL = "5crop-2scale-mean"

REQUIRED_META = (
    "format",
    "format_version",
    "encoder",
    "feature_dim",
    "head_dim",
    "crop",
    "protocol",
    "dataset",
    "mos_type",
    "score_range",
    "tensors_sha256",
)


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself (its string metadata, parsed).

    Attributes:
        name: short model name (e.g. ``"default"``).
        encoder: encoder architecture name understood by ``shamisa.models.build_encoder``.
        feature_dim: D, the encoder's feature size; the head takes 2D (full + half scale).
        crop: crop side in pixels (224 in the protocol).
        dataset: the head's training data (e.g. ``"clive"`` or a CSV file name).
        mos_type: ``"mos"`` (higher is better) or ``"dmos"`` (lower is better).
        score_range: the training labels' published range ``(lo, hi)``, used to map raw to [0, 1].
        protocol: feature protocol id (``"5crop-2scale-mean"``).
        recipe: free text: how the encoder and head were obtained.
        metrics: cross-validated agreement of the recipe (e.g. ``{"srcc_median": .., "plcc_median": ..}``).
        description: one line for ``shamisa models``.
        content: ``""`` for one encoder; ``"imagenet"`` when the encoder is a content + quality pair
            (:class:`shamisa.models.PairedEncoder`: the file holds ``content.*`` and ``quality.*``
            backbones of architecture ``encoder`` and ``feature_dim`` is the pair's).
        shared_stages: stages the pair computes once for both encoders.
        readout: how the encoder's features are read out (:mod:`shamisa.models.readout`): ``"head"`` (the
            last map's average; files without the key) or ``"multilevel"``.
        extra: any other metadata keys, kept as strings.
    """

    name: str
    encoder: str
    feature_dim: int
    crop: int
    dataset: str
    mos_type: str
    score_range: tuple[float, float]
    protocol: str = PROTOCOL
    recipe: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    content: str = ""
    shared_stages: int = 0
    readout: str = "head"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mos_type not in ("mos", "dmos"):
            raise ModelFileError(f"mos_type must be 'mos' or 'dmos', not {self.mos_type!r}")
        lo, hi = (float(v) for v in self.score_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ModelFileError(f"score_range must be finite with lo < hi, got {self.score_range!r}")
        object.__setattr__(self, "score_range", (lo, hi))
        if self.content not in ("", "imagenet"):
            raise ModelFileError(f"content must be '' or 'imagenet', not {self.content!r}")
        if int(self.shared_stages) < 0 or (self.shared_stages and not self.content):
            raise ModelFileError(f"shared_stages {self.shared_stages} needs a content + quality pair")
        if self.readout not in READOUTS:
            raise ModelFileError(f"readout must be one of {', '.join(READOUTS)}, not {self.readout!r}")
        if int(self.crop) < 32 or int(self.feature_dim) < 1:
            raise ModelFileError(f"invalid crop {self.crop} or feature_dim {self.feature_dim}")

    @property
    def head_dim(self) -> int:
        return 2 * int(self.feature_dim)

    def to_metadata(self) -> dict[str, str]:
        """The safetensors string metadata (without ``tensors_sha256``)."""
        meta = dict(self.extra)
        meta.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "encoder": self.encoder,
                "feature_dim": str(int(self.feature_dim)),
                "head_dim": str(self.head_dim),
                "crop": str(int(self.crop)),
                "protocol": self.protocol,
                "dataset": self.dataset,
                "mos_type": self.mos_type,
                "score_range": json.dumps(list(self.score_range)),
                "recipe": self.recipe,
                "metrics": json.dumps(self.metrics, default=_json_default),
                "description": self.description,
                "shamisa_version": __version__,
            }
        )
        if self.content:
            meta["content"] = self.content
            meta["shared_stages"] = str(int(self.shared_stages))
        if self.readout != "head":
            meta["readout"] = self.readout
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str = "model file") -> ModelCard:
        """Parse and validate metadata; ModelFileError naming the bad key otherwise."""
        missing = [k for k in REQUIRED_META if k not in meta]
        if missing:
            raise ModelFileError(f"{source}: metadata lacks {', '.join(missing)} (not a complete shamisa model file)")
        try:
            score_range = tuple(float(v) for v in json.loads(meta["score_range"]))
            if len(score_range) != 2:
                raise ValueError("score_range must have 2 values")
            metrics = json.loads(meta.get("metrics") or "{}")
            feature_dim = int(meta["feature_dim"])
            crop = int(meta["crop"])
            head_dim = int(meta["head_dim"])
            shared_stages = int(meta.get("shared_stages", "0"))
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{source}: malformed metadata ({e})") from None
        if head_dim != 2 * feature_dim:
            raise ModelFileError(f"{source}: head_dim {head_dim} is not 2 x feature_dim {feature_dim}")
        if meta["protocol"] != PROTOCOL:
            raise ModelFileError(f"{source}: unknown feature protocol {meta['protocol']!r} (this version reads {PROTOCOL!r})")
        known = set(REQUIRED_META) | {"name", "recipe", "metrics", "description", "shamisa_version", "content", "shared_stages", "readout"}
        try:
            return cls(
                name=meta.get("name", ""),
                encoder=meta["encoder"],
                feature_dim=feature_dim,
                crop=crop,
                dataset=meta["dataset"],
                mos_type=meta["mos_type"],
                score_range=score_range,  # type: ignore[arg-type]
                protocol=meta["protocol"],
                recipe=meta.get("recipe", ""),
                metrics=metrics if isinstance(metrics, dict) else {},
                description=meta.get("description", ""),
                content=meta.get("content", ""),
                shared_stages=shared_stages,
                readout=meta.get("readout", "head"),
                extra={k: v for k, v in meta.items() if k not in known},
            )
        except ModelFileError as e:
            raise ModelFileError(f"{source}: {e}") from None

    def summary(self) -> dict[str, Any]:
        """A flat dict for listings (``shamisa models``)."""
        return {
            "name": self.name,
            "encoder": self.encoder + (f" + {self.content} content" if self.content else "")
            + (f" ({self.readout} readout)" if self.readout != "head" else ""),
            "dataset": self.dataset,
            "mos_type": self.mos_type,
            "score_range": list(self.score_range),
            "crop": self.crop,
            "metrics": self.metrics,
            "description": self.description,
            "recipe": self.recipe,
        }


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def raw_to_score(raw: np.ndarray | float, score_range: tuple[float, float], mos_type: str) -> np.ndarray:
    """Map raw predictions (training-label scale) to [0, 1], higher is better (see module docstring)."""
    lo, hi = score_range
    s = np.clip((np.asarray(raw, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return 1.0 - s if mos_type == "dmos" else s
