"""torchrun support: one process per GPU (or gloo processes on CPU), data-parallel over rows of the global batch.

LoRA and other partial finetuning use DDP: trainable weights are small, gradients are averaged. Full finetuning of
the 7B model would shard parameters and optimizer state with FSDP2 (`torch.distributed.fsdp.fully_shard` on each
transformer layer, then on the model); the loop's only DDP-specific parts are `wrap_ddp` and `no_sync`, which is
where that would plug in. It is not implemented: full finetuning here runs as DDP (memory permitting).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def init_from_env() -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group if launched by torchrun; returns this process's rank info and device.

    Call it before building the model, and build the model on the returned device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist_info(), device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; a no-op in a single process."""
    if dist_info().world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist_info().world > 1:
        dist.barrier()


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's contiguous share of the global batch (the caller checks divisibility)."""
    per_rank = len(items) // info.world
    return list(items[info.rank * per_rank:(info.rank + 1) * per_rank])


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if info.world == 1:
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def no_sync(model: nn.Module, sync: bool) -> ContextManager:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
