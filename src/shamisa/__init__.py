"""shamisa: self-supervised no-reference image quality assessment.

Public API (imported lazily so that ``import shamisa`` stays fast)::

    model = shamisa.load("default")      # or a path to a model file
    model.score("photo.jpg")            # -> scores in [0, 1], higher is better
    metric = shamisa.create_metric("shamisa")   # pyiqa-style nn.Module
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "create_metric", "list_models"]


_LAZY = {
    "load": "shamisa.inference.quality_model",
    "create_metric": "shamisa.inference.metric",
    "list_models": "shamisa.inference.model_file",
}


def __getattr__(name: str):  # PEP 562 lazy attributes
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'shamisa' has no attribute {name!r}")
