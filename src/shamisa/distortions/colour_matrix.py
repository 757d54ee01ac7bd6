"""Per-pixel 3x3 colour transforms of image batches.

``matrix @ pixel (+ bias)`` for every pixel of (B, 3, H, W). On the CPU this goes through numpy's ``matmul``:
for a 3-row matrix over ~50k pixels per image it costs about a quarter of torch's batched matrix product there
(whose GEMM set-up dominates at K = 3). Elsewhere, and for tensors that require grad, torch's product.
"""

from __future__ import annotations

import numpy as np
import torch

Tensor = torch.Tensor


def numpy_ok(t: Tensor) -> bool:
    """Whether ``t`` can be worked on through a numpy view: a CPU float32/64 tensor outside autograd (the CPU routes
    of this module and of :mod:`shamisa.distortions.functional`)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad


def mix3(x: Tensor, matrix: Tensor, bias: Tensor | None = None) -> Tensor:
    """``matrix @ x[b, :, i, j] (+ bias)`` for every pixel.

    Args:
        x: (B, 3, H, W) float tensor.
        matrix: (3, 3).
        bias: optional (3,).

    Returns:
        (B, 3, H, W), a new tensor in ``x``'s dtype on its device.
    """
    b, c, h, w = x.shape
    if c != 3 or tuple(matrix.shape) != (3, 3):
        raise ValueError(
            f"expected (B, 3, H, W) images and a 3x3 matrix, got {tuple(x.shape)} and {tuple(matrix.shape)}"
        )
    flat = x.reshape(b, 3, h * w)
    if numpy_ok(x):
        dt = flat.numpy().dtype
        out = np.matmul(matrix.detach().cpu().numpy().astype(dt, copy=False), flat.numpy())
        if bias is not None:
            out += bias.detach().cpu().numpy().astype(dt, copy=False)[:, None]
        return torch.from_numpy(out).view(b, 3, h, w)
    m = matrix.to(device=x.device, dtype=x.dtype)
    if bias is None:
        return torch.matmul(m, flat).view(b, 3, h, w)
    return torch.baddbmm(bias.to(m).view(1, 3, 1).expand(b, 3, 1), m.expand(b, 3, 3), flat).view(b, 3, h, w)
