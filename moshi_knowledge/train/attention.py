"""Block-diagonal attention for packed rows, on an unmodified moshi LMModel.

LMModel.forward has no attention-mask argument: each attention builds its own causal (and context-window) mask
and hands it to `F.scaled_dot_product_attention`. Inside `segment_attention(model, segments)` the attentions of
the main transformer (not the depformer, which attends across codebooks of one frame) additionally require the
query and key frames to share a segment. Mechanics: moshi's transformer module gets a stand-in for its `F` that
forwards everything to torch and ANDs the active mask into scaled_dot_product_attention; forward hooks on the
main transformer's attention modules make the mask active only while one of them runs, which also covers the
recomputation of gradient checkpointing, provided backward runs inside the same `with` block.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import torch
from moshi.modules import transformer as moshi_transformer
from torch import nn
from torch.nn import functional as torch_functional

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
        if mask is not None:
            attn_mask = mask if attn_mask is None else attn_mask & mask
        return torch_functional.scaled_dot_product_attention(q, k, v, attn_mask, *args, **kwargs)


def _install() -> None:
    if not isinstance(moshi_transformer.F, _MaskedFunctional):
        moshi_transformer.F = _MaskedFunctional()


@contextlib.contextmanager
def segment_attention(model: nn.Module, segments: Optional[torch.Tensor]) -> Iterator[None]:
    """Within the block, frame i of a row attends to frame j only if segments[b, i] == segments[b, j]."""
    if segments is None:
        yield
        return
    _install()
    mask = (segments[:, None, :, None] == segments[:, None, None, :])  # [B, 1, T, T], like moshi's own mask

    def activate(*_: Any) -> None:
        _active.mask = mask

    def deactivate(*_: Any) -> None:
        _active.mask = None

    handles = []
    for module in find_lm(model).transformer.modules():
        if isinstance(module, moshi_transformer.StreamingMultiheadAttention):
            handles += [module.register_forward_pre_hook(activate), module.register_forward_hook(deactivate)]
    try:
        yield
    finally:
        deactivate()
        for handle in handles:
            handle.remove()
