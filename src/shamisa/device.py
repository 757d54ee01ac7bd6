"""The one device resolver: a device name from a flag, a config or an API call -> ``torch.device``.

Every flow (pretraining, fine-tuning, evaluation, scoring) resolves its device here, so ``auto``,
``cpu``, ``cuda``, ``cuda:N`` and ``mps`` mean the same thing everywhere and a device that is not
there fails with the same one-line :class:`~shamisa.errors.ConfigError`.
"""

from __future__ import annotations

import torch

from shamisa.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = None, *, local_rank: int | None = None) -> torch.device:
    """``None`` / ``"auto"``: CUDA when available, else the CPU; otherwise the named device, checked.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``, a ``torch.device`` or None.
        local_rank: for a bare ``cuda`` (or ``auto`` on a CUDA machine), the index of this process's
            GPU (distributed training); without it a bare ``cuda`` stays index-less.

    Raises:
        ConfigError: an unknown name, or a device this machine does not have.
    """
    if name is None or str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {str(name)!r} ({e})") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {str(name)!r} (use cpu, cuda, cuda:N, mps or auto)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(name)!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {str(name)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev
