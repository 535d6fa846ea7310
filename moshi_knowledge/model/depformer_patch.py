"""Contiguous inputs for the depformer's per-codebook modules: moshi's outputs, much faster LoRA training on GPU.

`moshi.modules.transformer.apply_weights_per_step` runs step t's module (in_projs[t], out_projs[t], gating[t]) on
`x[:, t:t+1]`, a strided view of the [B*T, 8, C] depformer activations. When the weight needs no grad (the base model
under LoRA, a model frozen for eval) `torch.matmul` will not fold that view into one 2-D GEMM: it
broadcasts the weight and runs a batched matrix-vector product over all B*T rows (65% of GPU time in a 7B LoRA
step, docs/anchors.md). Handing each module a contiguous copy of the same values makes it one GEMM.

Outputs: with trainable weights matmul already copies and folds, so the patch is bit-identical; with frozen
weights the GEMM sums in another order than the bmm, so results agree to rounding (~1e-6 in fp32). `LMGen` feeds
the depformer one codebook at a time (T=1, already contiguous): the patch applies there and changes nothing.

The patch is scoped to one model instance: a forward pre-hook on every per-step module. It needs no change to
moshi, leaves state-dict keys alone, survives `copy.deepcopy`, and works under `LMGen`, peft, gradient
checkpointing and DDP/FSDP. A module swapped in later (peft's LoRA wrappers, a merge) carries no hook: call
`patch_depformer` again after such a swap; it is idempotent. `apply_lora` and `merged_copy` do this themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from moshi.modules.transformer import StreamingMultiheadAttention, StreamingTransformerLayer
from torch import nn

_MARK = "_contiguous_input_hook"


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def _per_step_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module that moshi calls through `apply_weights_per_step` with more than one step."""
    for module in model.modules():
        lists: list[nn.Module] = []
        if isinstance(module, StreamingMultiheadAttention):
            lists = [module.in_projs, module.out_projs]
        elif isinstance(module, StreamingTransformerLayer) and isinstance(module.gating, nn.ModuleList):
            lists = [module.gating]
        for steps in lists:
            if len(steps) > 1:  # a single module gets the whole x, never a strided view
                yield from steps


def patch_depformer(model: nn.Module) -> int:
    """Hook every per-step module of `model` (an LMModel, PeftModel, or anything holding one) that is not hooked
    yet; returns how many were newly hooked."""
    added = 0
    for module in _per_step_modules(model):
        if not vars(module).get(_MARK, False):  # not getattr: wrappers such as peft's forward unknown attributes
            module.register_forward_pre_hook(_contiguous_input)
            setattr(module, _MARK, True)
            added += 1
    return added


def is_patched(model: nn.Module) -> bool:
    """True when any per-step module of `model` carries the hook."""
    return any(vars(module).get(_MARK, False) for module in _per_step_modules(model))
