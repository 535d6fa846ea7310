"""torchrun support: one process per GPU (or gloo processes on CPU), data-parallel over rows of the global batch.

LoRA and other partial finetuning use DDP: trainable weights are small, gradients are averaged. Full finetuning
shards instead (FSDP2, `torch.distributed.fsdp.fully_shard` on every moshi transformer layer, then on the model):
fp32 weights, gradients and AdamW state of the 7B model (~124 GB) do not fit one GPU, while each rank keeps 1/world
of them and all-gathers one layer's bf16 weights at a time. `parallel_mode` picks DDP or FSDP; after `wrap_model`
under FSDP the model's parameters are DTensor shards, which is why clipping, the finiteness check and checkpoints
(checkpoint.py) go through the helpers here.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, Iterable, Literal, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from moshi.modules.transformer import StreamingTransformerLayer
from torch import nn
from torch.distributed.tensor import DTensor

T = TypeVar("T")
Mode = Literal["auto", "ddp", "fsdp"]


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


def parallel_mode(model: nn.Module, info: DistInfo, requested: Mode) -> Literal["single", "ddp", "fsdp"]:
    """`auto`: FSDP when every parameter trains (full finetuning), DDP otherwise (LoRA); one process: neither."""
    if info.world == 1:
        return "single"
    if requested != "auto":
        return requested
    return "fsdp" if all(p.requires_grad for p in model.parameters()) else "ddp"


def _fsdp_class_cache() -> dict[type, type]:
    from torch.distributed.fsdp._fully_shard import _fully_shard

    getter = getattr(_fully_shard, "get_cls_to_fsdp_cls", None)
    return getter() if getter else _fully_shard.cls_to_fsdp_cls


def _register_fsdp_class(cls: type) -> None:
    """Make fully_shard accept moshi's modules.

    fully_shard swaps a module's class for a new `(FSDPModule, cls)`. CPython refuses that swap for moshi's
    streaming modules ("object layout differs"): their first base is `abc.ABC`, before nn.Module, so they carry their
    own `__dict__` slot. `(cls, FSDPModule)` keeps cls's layout; putting it in fully_shard's class cache first makes
    fully_shard use it. FSDPModule's methods all stay reachable except `_apply`, where nn.Module's now wins: moving a
    sharded model with `.to()` is not supported (the loop never does).
    """
    from torch.distributed.fsdp import FSDPModule

    cache = _fsdp_class_cache()
    if cls not in cache:
        cache[cls] = type(f"FSDP{cls.__name__}", (cls, FSDPModule), {})


def fully_shard_model(model: nn.Module, info: DistInfo, compute_dtype: Optional[torch.dtype]) -> nn.Module:
    """Shard `model` in place: one FSDP unit per moshi transformer layer (main and depformer), the rest in the root.

    `compute_dtype` (bf16 on GPU) is the dtype weights are all-gathered and computed in; the shards, gradients
    (reduced in fp32) and optimizer state stay in the parameters' own dtype (fp32 master weights).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (info.world,))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32 if compute_dtype else None)
    layers = [module for module in model.modules() if isinstance(module, StreamingTransformerLayer)]
    for module in layers + [model]:
        _register_fsdp_class(type(module))
        fully_shard(module, mesh=mesh, mp_policy=policy)
    return model


def wrap_model(model: nn.Module, info: DistInfo, requested: Mode = "auto",
               compute_dtype: Optional[torch.dtype] = None) -> nn.Module:
    """What runs forward: `model` itself (one process, or sharded in place by FSDP) or its DDP wrapper."""
    mode = parallel_mode(model, info, requested)
    if mode == "fsdp":
        return fully_shard_model(model, info, compute_dtype)
    return wrap_ddp(model, info)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """torch's clip_grad_norm_, also for FSDP's sharded gradients (whose norm is summed over ranks first)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Every element finite, on every rank's shard (the same answer on all ranks)."""
    tensors = list(tensors)
    bad = sum(int((~torch.isfinite(_local(t))).sum()) for t in tensors)
    device = _local(tensors[0]).device if tensors else torch.device("cpu")
    return int(all_reduce_sum(torch.tensor([bad], device=device))) == 0


def no_sync(model: nn.Module, sync: bool) -> ContextManager:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step.

    FSDP reduce-scatters every micro-batch instead: deferring would keep a whole unsharded fp32 gradient per rank.
    """
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return model.no_sync()
