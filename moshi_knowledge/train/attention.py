"""Block-diagonal attention for packed rows, on an unmodified moshi LMModel.

LMModel.forward has no attention-mask argument: each attention builds its own causal (and context-window) mask
and hands it to `F.scaled_dot_product_attention`. Inside `segment_attention(model, segments)` the attentions of
the main transformer (not the depformer, which attends across codebooks of one frame) additionally require the
query and key frames to share a segment. Mechanics: moshi's transformer module gets a stand-in for its `F` that
forwards everything to torch and ANDs the active mask into scaled_dot_product_attention; forward hooks on the
main transformer's attention modules make the mask active only while one of them runs, which also covers the
recomputation of gradient checkpointing, provided backward runs inside the same `with` block.

Two ways to apply it, with the same result (tests/test_train_data.py):
- a boolean [B, 1, T, T] mask ANDed into moshi's own causal mask: torch then has to pick a kernel that reads a
  dense mask, and computes every block of the row;
- `flex=True`: FlexAttention with a block mask of the same rule (causal, within moshi's context, same segment),
  which skips the blocks that rule masks whole. It is fast only inside `torch.compile`, where flex_attention
  becomes one fused kernel; eagerly torch runs a reference version that builds the whole score matrix. So the
  loop uses it exactly when it compiles the layers on a GPU (train/compile.py). Once the layers are compiled,
  attention is a small part of the step: on the H200 the dense mask cost 2% more time per step
  (benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import torch
from moshi.modules import transformer as moshi_transformer
from torch import nn
from torch.nn import functional as torch_functional
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from moshi_knowledge.codes.stream import find_lm

_active = threading.local()  # autograd may recompute checkpointed layers on another thread: per-thread is right


class _MaskedFunctional:
    """torch.nn.functional, except that attention also obeys the active segment mask (if any)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch_functional, name)

    @staticmethod
    def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     attn_mask: Optional[torch.Tensor] = None, *args: Any, **kwargs: Any):
        mask = getattr(_active, "mask", None)
        if isinstance(mask, BlockMask):  # it holds moshi's causal and context rule too
            return flex_attention(q, k, v, block_mask=mask)
        if mask is not None:
            attn_mask = mask if attn_mask is None else attn_mask & mask
        return torch_functional.scaled_dot_product_attention(q, k, v, attn_mask, *args, **kwargs)


def _install() -> None:
    if not isinstance(moshi_transformer.F, _MaskedFunctional):
        moshi_transformer.F = _MaskedFunctional()


def _attentions(model: nn.Module) -> list[nn.Module]:
    return [module for module in find_lm(model).transformer.modules()
            if isinstance(module, moshi_transformer.StreamingMultiheadAttention)]


def block_mask(segments: Optional[torch.Tensor], frames: int, context: Optional[int],
               device: torch.device) -> BlockMask:
    """moshi's training-time rule (key at or before the query, fewer than `context` frames back) as a flex block
    mask, AND the same segment when `segments` [B, T] is given."""

    def rule(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        keep = q >= kv
        if context is not None:
            keep = keep & (q - kv < context)
        if segments is not None:
            keep = keep & (segments[b, q] == segments[b, kv])
        return keep

    rows = None if segments is None else segments.shape[0]
    return create_block_mask(rule, rows, None, frames, frames, device=device)


@contextlib.contextmanager
def segment_attention(model: nn.Module, segments: Optional[torch.Tensor], flex: bool = False,
                      frames: Optional[int] = None) -> Iterator[None]:
    """Within the block, frame i of a row attends to frame j only if segments[b, i] == segments[b, j].

    With `flex`, every main-transformer attention runs through FlexAttention, also when `segments` is None (a
    causal block mask over `frames` frames, which skips the blocks above the diagonal).
    """
    if segments is None and not flex:
        yield
        return
    _install()
    attentions = _attentions(model)
    if flex:
        if segments is not None:
            frames = segments.shape[1]
        if frames is None:
            raise ValueError("segment_attention(flex=True) needs segments or frames")
        device = next(model.parameters()).device if segments is None else segments.device
        mask: Any = block_mask(segments, frames, attentions[0].context, device)
    else:
        mask = (segments[:, None, :, None] == segments[:, None, None, :])  # [B, 1, T, T], like moshi's own

    def activate(*_: Any) -> None:
        _active.mask = mask

    def deactivate(*_: Any) -> None:
        _active.mask = None

    handles = []
    for module in attentions:
        handles += [module.register_forward_pre_hook(activate), module.register_forward_hook(deactivate)]
    try:
        yield
    finally:
        deactivate()
        for handle in handles:
            handle.remove()
