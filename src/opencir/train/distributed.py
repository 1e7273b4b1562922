"""torchrun integration: process group setup and gradient-carrying all-gather.

Launch with ``torchrun --nproc-per-node N -m opencir.cli train ...``; gloo on CPU, NCCL on
GPU. Outside torchrun everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the torchrun process group if the environment says so."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def gather_with_grad(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks; gradients flow back to the owning rank."""
    if not context.enabled:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def shutdown(context: DistContext) -> None:
    """Leave the process group together (a rank tearing down early can stall the others)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
