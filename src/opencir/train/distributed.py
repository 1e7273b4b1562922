"""torchrun integration: devices, the per-rank batch, process groups, all-gather.

Launch with ``torchrun --nproc-per-node N -m opencir.cli train ...``; gloo on CPU, NCCL on
GPU, process ``LOCAL_RANK`` driving ``cuda:LOCAL_RANK``. ``batch_size`` is the global batch
of one optimizer step, split evenly over the ranks and the ``grad_accum`` micro-batches.
Outside torchrun everything degrades to a single process.
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

    def row_offset(self, rows: int) -> int:
        """Where this rank's first row sits in a gathered batch of ``rows`` rows per rank."""
        return self.rank * rows


def launched_world_size() -> int:
    """The number of ranks torchrun started (1 outside torchrun), known before any collective."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU if there is one, else the CPU; a GPU without index is ``LOCAL_RANK``'s.

    Under torchrun each process drives its own GPU, ``cuda:LOCAL_RANK``, which also becomes
    the current CUDA device so that NCCL and index-less allocations land there, not on GPU 0.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DDP's ``device_ids``: the one GPU of this process, or None for a CPU module."""
    return [device.index] if device.type == "cuda" else None


def per_rank_batch(batch_size: int, world_size: int, grad_accum: int = 1) -> int:
    """Examples one rank feeds through one forward pass (the one definition of the split).

    ``batch_size`` is the global batch of one optimizer step; it is refused, on every rank
    before any collective starts, unless it splits evenly into ``world_size`` ranks ×
    ``grad_accum`` micro-batches: uneven ranks would desynchronise the gathers and hang.
    """
    parts = world_size * grad_accum
    if batch_size % parts:
        ranks = f"{world_size} rank{'s' if world_size > 1 else ''}"
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {ranks} × "
            f"grad_accum={grad_accum} micro-batches ({parts} equal parts); batch_size is the "
            f"global batch of one optimizer step: use a multiple of {parts}"
        )
    return batch_size // parts


def init_distributed(device: torch.device) -> DistContext:
    """Join the torchrun process group if the environment says so."""
    if launched_world_size() <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank())


def gather_with_grad(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks; gradients flow back to the owning rank."""
    if not context.enabled:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def mean_over_ranks(value: float, context: DistContext) -> float:
    """The mean of a per-rank number (a rank's loss covers its own queries only)."""
    if not context.enabled:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return total.item() / context.world_size


def _collective_device() -> torch.device:
    """NCCL reduces GPU tensors (on the current device, which :func:`resolve_device` set)."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def shutdown(context: DistContext) -> None:
    """Leave the process group together (a rank tearing down early can stall the others)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
