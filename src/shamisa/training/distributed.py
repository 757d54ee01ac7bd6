"""Distributed set-up for pretraining under ``torchrun``: the process group, and gathers that keep
the gradient, so every process evaluates the loss of the whole global batch exactly as one process
would (the SHAMISA objective couples all items through its graphs and its variance/covariance terms,
so per-process losses would differ)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_ranks_any", "gather_plain", "gather_split", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local)


class GatherWithGrad(torch.autograd.Function):
    """All-gather rows of every process; backward sums the gradients of all processes' (identical)
    losses and returns this process's slice, so that DDP's gradient averaging yields exactly the
    gradient of the single-process loss on the whole batch."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack(grads)
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_split(x: torch.Tensor, n_first: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``x = [first (n_first rows); rest]`` of every rank -> ``(cat firsts, cat rests)`` in rank order."""
    parts = GatherWithGrad.apply(x)
    return torch.cat([p[:n_first] for p in parts]), torch.cat([p[n_first:] for p in parts])


def gather_plain(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_ranks_any(flag: bool, device: torch.device, info: DistInfo) -> bool:
    """True when ``flag`` is true on any process (itself when not distributed)."""
    if info.world <= 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
