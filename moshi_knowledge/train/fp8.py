"""`train.fp8`: the frozen base's Linear layers compute in float8 while training (torchao's float8 training).

What changes: every frozen base Linear under a LoRA adapter (peft's `base_layer`) becomes torchao's `Float8Linear`
with rowwise scales (torchao's "rowwise" recipe: e4m3 for inputs, weights and gradients, scales rounded down to a
power of two). Its forward GEMM and its input-gradient GEMM run on the FP8 tensor cores. The adapters, trained
embeddings and the heads' adapters stay as they were (bf16 compute, fp32 master weights). The base weights are
not copied: `Float8Linear` keeps the same bf16 tensor and casts it at each step.

What does not change: recall. It reads the base weights through `model.lora.generation_lm`'s view, a bf16
`F.linear` on the same tensors, so the instrument is the same with or without this setting; only what training
learns can differ (benchmarks/compile_equivalence.py judges the FP8 loss curve against the spread of equivalent
bf16 curves). The exported adapter has the same keys and format.

Only a compiled step gains (`train.compile`): the compiler fuses the scaling casts into the kernels around the
GEMM, and drops the weight-gradient GEMM that torchao's autograd function computes for every weight, frozen or
not. Eager, the casts cost more than FP8 saves. Needs FP8 tensor cores (compute capability 8.9 or more: H100,
H200, L40S); preflight refuses it elsewhere. `emulate` runs the same casts with high-precision GEMMs on any
device: how the tests check the wiring on CPU.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

RECIPE = "rowwise"
MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada and Hopper


def fp8_capable(device: torch.device) -> bool:
    """Whether `device` has FP8 tensor cores."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= MIN_CAPABILITY


def frozen_base_layers(model: nn.Module) -> set[nn.Linear]:
    """The base Linear of every LoRA layer: frozen, and called by its LoRA layer's forward (never read around it,
    as moshi's gated FFN reads a plain Linear's weight)."""
    from peft.tuners.lora import LoraLayer

    return {m.get_base_layer() for m in model.modules()
            if isinstance(m, LoraLayer) and isinstance(m.get_base_layer(), nn.Linear)}


def to_fp8_training(model: nn.Module, emulate: bool = False) -> int:
    """Swap the frozen base layers of `model` for `Float8Linear`, in place; returns how many were swapped.

    A second call swaps nothing more. Layers whose weight trains are never swapped (their weight gradient would
    be computed in FP8 too)."""
    # torchao (seconds to import) loads only for a run that asks for it; preflight reads fp8_capable without it
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear

    targets = {id(m) for m in frozen_base_layers(model) if not m.weight.requires_grad}
    before = sum(isinstance(m, Float8Linear) for m in model.modules())
    config = dataclasses.replace(Float8LinearConfig.from_recipe_name(RECIPE), emulate=emulate)
    convert_to_float8_training(model, config=config, module_filter_fn=lambda module, _: id(module) in targets)
    return sum(isinstance(m, Float8Linear) for m in model.modules()) - before
