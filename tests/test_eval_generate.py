"""Streaming generation's KV cache, sized to the prompts instead of the model's whole context."""

from __future__ import annotations

import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.modules.transformer import StreamingMultiheadAttention

from moshi_knowledge.evaluation.streaming import attention_span

torch.set_num_threads(1)
STEPS = 12


def _lm() -> LMModel:
    torch.manual_seed(0)
    sizes = dict(dim=32, num_heads=2, num_layers=2, context=100, text_card=50, card=40, depformer_dim=16,
                 depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=32)
    return LMModel(**(dict(loaders._lm_kwargs) | sizes), dtype=torch.float32).eval()


def _streamed_text_logits(lm: LMModel, codes: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """One frame at a time through the main transformer, as LMGen runs it; also the KV caches' capacities."""
    out = []
    with torch.no_grad(), lm.streaming(codes.shape[0]):
        capacities = [m._streaming_state.kv_cache.capacity for m in lm.transformer.modules()
                      if isinstance(m, StreamingMultiheadAttention)]
        for t in range(codes.shape[2]):
            out.append(lm.forward_text(codes[:, :, t:t + 1])[1])
    return torch.cat(out, dim=2), capacities


def test_a_span_of_the_steps_streamed_keeps_every_output_and_shrinks_the_cache() -> None:
    lm = _lm()
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, lm.card, (3, lm.num_codebooks, STEPS), generator=g)
    codes[:, 0] = torch.randint(0, lm.text_card, (3, STEPS), generator=g)
    full, capacities = _streamed_text_logits(lm, codes)
    assert set(capacities) == {100}
    with attention_span(lm, STEPS):
        sized, capacities = _streamed_text_logits(lm, codes)
    assert set(capacities) == {STEPS}
    # the same keys and weights; only the attention's reduction over the (masked) empty slots is shorter
    torch.testing.assert_close(sized, full, rtol=0, atol=1e-5)
    assert {m.context for m in lm.transformer.modules() if isinstance(m, StreamingMultiheadAttention)} == {100}
    with attention_span(lm, STEPS - 1):  # one step too few forgets the first frame: the test can tell
        short, _ = _streamed_text_logits(lm, codes)
    assert (short[:, :, -1] - full[:, :, -1]).abs().max() > 1e-2
    torch.testing.assert_close(short[:, :, :-1], full[:, :, :-1], rtol=0, atol=1e-5)
