"""`train.compile`: every transformer layer (main and depformer) goes through `torch.compile` for training.

moshi compiles only a few small functions (RMS norm, rope, the gated FFN). Compiling whole layers lets inductor
fuse the elementwise work between the GEMMs (norms, residuals, layer scales, the LoRA adds) and turns the
packed rows' attention into one FlexAttention kernel that skips masked blocks (train/attention.py). On CPU
the layers compile too (that is how `make test` compares them with eager), but attention keeps the dense mask:
inductor's CPU FlexAttention has no backward.

Each layer module is compiled in place (`nn.Module.compile`): the same modules run under peft, DDP and
gradient checkpointing (which reruns the compiled layer in backward). Identical layers share one compiled graph;
a new grad mode or batch shape compiles once more (`dynamic=False`: the few shapes of a run get static kernels).
A compiled layer runs moshi's layer body without the `ExitStack` that opens moshi's `forward`: torch 2.9 (what
moshi's pin installs) cannot trace it and broke every layer's graph in two there (`_body_forward`).
Recall runs under `model.uncompiled()`, where the compiled layers run eagerly. What was measured against eager,
and why the two differ slightly in bf16, is in docs/moshi.md.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
import torch._dynamo
from moshi.modules.transformer import StreamingTransformer, StreamingTransformerLayer
from torch import nn

from moshi_knowledge.codes.stream import find_lm
from moshi_knowledge.model import RECOMPILE_LIMIT


def compile_wanted(requested: Optional[bool], device: torch.device, sharded: bool) -> bool:
    """`train.compile`: null (auto) compiles on a GPU, except under FSDP, where it was never measured."""
    if requested is None:
        return device.type == "cuda" and not sharded
    return requested


def set_layer_compile(model: nn.Module, enabled: bool, eager_rounding: bool = True) -> int:
    """Compile every layer of the LM's transformers in place, or make them eager again (a model compiled by an
    earlier run in the same process trains as its own setting says); returns how many layers are compiled.

    `eager_rounding`: inductor rounds each op's result to bf16 where eager does (`emulate_precision_casts`).
    By default its fused kernels keep fp32 between the ops they fuse, and that alone moved a 50-step bf16 loss
    curve by 6.8% from eager's, ten times as far as an equivalent eager kernel moves it; rounding like eager
    brought it to 0.08% at the same speed (docs/moshi.md). False exists to measure that difference."""
    layers = [layer for module in find_lm(model).modules() if isinstance(module, StreamingTransformer)
              for layer in module.layers]
    if enabled:  # main and depformer layers, with and without grad, each eval shape: one compiled entry each
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for layer in layers:
        if not enabled:
            layer._compiled_call_impl = None  # what nn.Module.compile sets; None is eager
            layer.__dict__.pop("forward", None)  # moshi's own forward again
        elif layer._compiled_call_impl is None:  # a second call adds nothing
            layer.forward = types.MethodType(_body_forward, layer)
            layer.compile(dynamic=False, options={"emulate_precision_casts": eager_rounding})
    return len(layers) if enabled else 0


def _body_forward(self: StreamingTransformerLayer, x: torch.Tensor,
                  cross_attention_src: Optional[torch.Tensor] = None) -> torch.Tensor:
    """moshi's layer forward outside streaming, without its `ExitStack`: the stack only switches moshi's small
    compiled functions off on CPU, which whole-layer compilation replaces. Streaming and cross-attention keep
    moshi's forward."""
    if self._streaming_state is not None or self.cross_attention is not None or cross_attention_src is not None:
        return StreamingTransformerLayer.forward(self, x, cross_attention_src)
    return self._ff_block(self._sa_block(x))
