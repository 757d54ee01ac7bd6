"""shamisa: self-supervised no-reference image quality assessment.

Public API (imported lazily so that ``import shamisa`` stays fast)::

    model = shamisa.load("default")      # or a path to a model file
    model.score("photo.jpg")            # -> scores in [0, 1], higher is better
    metric = shamisa.create_metric("shamisa")   # pyiqa-style nn.Module
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "create_metric", "list_models"]


def __getattr__(name: str):  # PEP 562 lazy attributes
    if name in {"load", "create_metric", "list_models"}:
        from shamisa import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'shamisa' has no attribute {name!r}")
