"""How recall drives moshi's LM outside training: the inputs its transformer sees, and a KV cache sized to a prompt.

Multiple choice and generation both run rows of codes through `LMModel.forward_text` in streaming mode; they
share these two conventions so that their histories are laid out alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from moshi.models.lm import LMModel
from moshi.models.lm_utils import _delay_sequence
from moshi.modules.transformer import StreamingMultiheadAttention


def delayed_inputs(lm: LMModel, codes: torch.Tensor) -> torch.Tensor:
    """What LMModel.forward feeds its transformer for `codes` [B, 17, T]: the initial token, then the delayed codes.

    Text has delay 0, so output position t predicts codes[:, 0, t].
    """
    initial = lm._get_initial_token().to(codes.device).expand(codes.shape[0], -1, -1)
    return torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)[:, :, :-1]


@contextlib.contextmanager
def attention_span(lm: LMModel, steps: int) -> Iterator[None]:
    """Size the main transformer's KV cache to `steps` streaming steps instead of the model's whole context.

    moshi allocates each layer's cache for `context` positions (3,000 for moshiko: 47 GiB at batch 32), while a
    question and its answer window need a few hundred. With `steps` no larger than the context, every key the
    full cache would hold is still held and unmasked, so the outputs are the same up to rounding (the attention
    sums over fewer empty, masked slots).
    """
    modules = [m for m in lm.transformer.modules() if isinstance(m, StreamingMultiheadAttention)]
    saved = [m.context for m in modules]
    try:
        for m in modules:
            if m.context is not None:
                m.context = min(m.context, steps)
        yield
    finally:
        for m, context in zip(modules, saved):
            m.context = context
