"""``shamisa serve``: a local web page and JSON API over one loaded model.

Build the ASGI application with :func:`create_app` (FastAPI); ``shamisa serve`` runs it with uvicorn.
See docs/serve.md for the endpoints, the limits and the security defaults.
"""

from __future__ import annotations

from shamisa.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - re-exported lazily (FastAPI is optional)
    """See :func:`shamisa.serve.app.create_app`."""
    from shamisa.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
