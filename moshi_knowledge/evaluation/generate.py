"""Generative recall: let Moshi hear the question and answer on its own, then score what it said.

Generation uses moshi's streaming `LMGen`, the same code path as a live conversation, for a whole batch of
questions at once. The user channel carries the question and then silence; Moshi's text (its inner
monologue) is read over the answer window that follows the question, padding dropped, and decoded.
Text is greedy (top-k 1) so the answer is deterministic; Moshi's audio is sampled as in a live chat, since
greedy audio is degenerate and the voice-drift measure needs speech.

Listening is teacher-forced: until a question ends, Moshi's channel holds what training puts there while the user
speaks (padding on the text stream, the prompt's silence codes as audio), so every answer starts from the same
history as its multiple-choice rows, and a row's answer does not depend on what happened to share its batch.
The frames every row of a batch listens to run through the transformer in one pass (a prefill, as multiple
choice runs its shared prefix); LMGen steps one frame at a time from there (docs/moshi.md, "Generation").

Frame bookkeeping (docs/moshi.md, streaming frames): the first user frame fed is consumed by the initial token, so
frames go in as [u0, u0, u1, ...]; from step 1 on, step s returns frame s-1 of text and Moshi's audio.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from moshi.models.lm import LMGen, LMModel
from moshi.modules.streaming import StreamingModule
from moshi.modules.transformer import RingKVCache

from moshi_knowledge.codes.samples import MOSHI_AUDIO, N_STREAMS, USER_AUDIO, ZERO_TOKEN
from moshi_knowledge.evaluation.streaming import attention_span, delayed_inputs
from moshi_knowledge.text_norm import normalise


@dataclass(frozen=True)
class Prompt:
    """One question for generation: user audio codes [8, T] (question, then silence), where the answer starts and
    Moshi's audio codes while it listens, [8, >= answer_start] (silence)."""

    user_codes: torch.Tensor
    answer_start: int  # first frame of the answer window
    moshi_codes: torch.Tensor


@dataclass
class Generation:
    text: torch.Tensor  # [answer_frames] Moshi's text stream over the answer window, padding included
    audio: torch.Tensor  # [8, answer_frames] Moshi's audio codes over the answer window
    tokens: list[int]  # the text stream without padding and end-of-padding: what Moshi said


@torch.no_grad()
def generate(lm: LMModel, prompts: Sequence[Prompt], answer_frames: int, batch_size: int = 32,
             temp: float = 0.8, top_k: int = 250, seed: int = 0) -> list[Generation]:
    """Stream every prompt through LMGen, `batch_size` at a time; `lm` must be a plain LMModel (no peft layers).

    A prompt whose user codes end before the end of its answer window gets its last frame repeated, so pass codes
    that end in silence. Sampling is seeded by `seed` without touching the caller's random state (training goes on
    exactly as it would have without this evaluation).
    """
    was_training = lm.training
    lm.eval()
    devices = [lm.device] if lm.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out: list[Generation] = []
            for start in range(0, len(prompts), batch_size):
                out += _generate_batch(lm, prompts[start:start + batch_size], answer_frames, temp, top_k)
        return out
    finally:
        lm.train(was_training)


def _generate_batch(lm: LMModel, prompts: Sequence[Prompt], answer_frames: int, temp: float,
                    top_k: int) -> list[Generation]:
    pad_id, end_pad_id = int(lm.text_padding_token_id), int(lm.end_of_text_padding_id)
    ends = [p.answer_start + answer_frames for p in prompts]
    n_frames = max(ends)
    forced = _listening_codes(lm, prompts, n_frames).to(lm.device)  # [B, 17, T]
    n_user = forced.shape[1] - 1 - lm.dep_q
    starts = torch.tensor([p.answer_start for p in prompts], device=lm.device)
    # Outputs stay on the device until the end: a copy to the CPU at every step would wait for the GPU each time.
    text = torch.full((len(prompts), n_frames), pad_id, dtype=torch.long, device=lm.device)
    audio = torch.full((len(prompts), lm.dep_q, n_frames), ZERO_TOKEN, dtype=torch.long, device=lm.device)
    gen = LMGen(lm, use_sampling=True, temp=temp, top_k=top_k, temp_text=1.0, top_k_text=1)
    origins = [p.answer_start if p.answer_start > gen.max_delay + 1 else 0 for p in prompts]
    n_steps = max(end + gen.max_delay - o for end, o in zip(ends, origins))  # until every row's last frame is out
    n_forced = max(p.answer_start + gen.max_delay - o for p, o in zip(prompts, origins))
    rows = torch.arange(len(prompts), device=lm.device)
    with attention_span(lm, max(origins) + n_steps + 1), gen.streaming(len(prompts)):
        steps = _prefill(gen, forced, origins)  # [B]: each row's next step
        for i in range(n_steps):
            listened = (steps - 1).clamp(0, n_frames - 1)[:, None, None].expand(-1, n_user, 1)
            out = gen.step(forced[:, USER_AUDIO].gather(2, listened))
            if i < n_forced:
                _force_listening(gen, forced, starts, steps)
            if out is not None:
                frame = steps - gen.max_delay  # the frame each row's output holds
                ok = (frame >= 0) & (frame < n_frames)
                text[rows[ok], frame[ok]] = out[ok, 0, 0]
                audio[rows[ok], :, frame[ok]] = out[ok, 1:1 + lm.dep_q, 0]
            steps = steps + 1
    text, audio = text.cpu(), audio.cpu()
    results = []
    for b, p in enumerate(prompts):
        window = text[b, p.answer_start:ends[b]].clone()
        tokens = [int(t) for t in window if int(t) not in (pad_id, end_pad_id)]
        results.append(Generation(window, audio[b, :, p.answer_start:ends[b]].clone(), tokens))
    return results


def _listening_codes(lm: LMModel, prompts: Sequence[Prompt], n_frames: int) -> torch.Tensor:
    """[B, 17, T]: the codes a row's history holds while it listens (padding text, its silence codes, the user's
    audio); after its answer starts only the user's audio is meant, the rest being Moshi's own to generate."""
    n_user = lm.num_audio_codebooks - lm.dep_q
    codes = torch.full((len(prompts), N_STREAMS, n_frames), int(lm.text_padding_token_id), dtype=torch.long)
    for b, p in enumerate(prompts):
        codes[b, MOSHI_AUDIO] = _extend(p.moshi_codes[:, :max(p.answer_start, 1)], n_frames)
        codes[b, USER_AUDIO] = _extend(p.user_codes[:n_user], n_frames)
    return codes


def _prefill(gen: LMGen, forced: torch.Tensor, origins: Sequence[int]) -> torch.Tensor:
    """Run each row's first `origins[b]` steps (all listening) as one pass of the transformer; return each row's
    first step left to stream, [B].

    The pass runs max(origins) frames for every row; each row is then wound back to its own origin, which leaves
    every state exactly as that many forced steps would have (written against moshi 0.2, whose streaming states
    keep one offset per row): the attention offsets, the transformer's and LMGen's step offsets, the KV caches'
    write positions (the frames run past a row's origin lie beyond it, masked until the row overwrites them), and
    LMGen's ring of delayed tokens holding at slot `origins[b]` the row's delayed history there, the only slot a
    later step reads before writing it. A row with origin 0 streams from its first step.
    """
    lm, state = gen.lm_model, gen._streaming_state
    origin = torch.tensor(origins, device=forced.device)
    longest = max(origins)
    if longest:
        inputs = delayed_inputs(lm, forced[:, :, :longest + 1])  # [B, 17, longest + 1]: positions 0 .. longest
        lm.forward_text(inputs[:, :, :longest])
        _rewind(lm.transformer, origin)
        rows = origin.nonzero()[:, 0]
        slots = (origin[rows] % state.cache.shape[2])[:, None, None].expand(-1, state.cache.shape[1], 1)
        state.cache[rows] = state.cache[rows].scatter(2, slots, inputs[rows].gather(2, origin[rows, None, None]
                                                                                    .expand_as(slots)))
        state.offsets[:] = origin
        state.offset_cpu = longest
    return origin


def _rewind(module: StreamingModule, offsets: torch.Tensor) -> None:
    """Set every per-row step offset under `module` to `offsets` [B] in place (graph-safe), KV caches included."""
    for state in module.get_streaming_state().values():
        for value in (getattr(state, "offset", None), getattr(state, "offsets", None)):
            if isinstance(value, torch.Tensor) and value.shape == offsets.shape:
                value.copy_(offsets)
        cache = getattr(state, "kv_cache", None)
        if isinstance(cache, RingKVCache):
            if cache.end_offset.shape != offsets.shape:
                raise RuntimeError("moshi's KV cache keeps no per-row offsets: rows cannot be prefilled apart")
            cache.end_offset.copy_(offsets)


def _force_listening(gen: LMGen, forced: torch.Tensor, starts: torch.Tensor, steps: torch.Tensor) -> None:
    """After each row's step `steps[b]`, put the forced codes in place of what was generated for frames the row
    still listens to.

    Step s generates text frame s and audio frame s - delay of each codebook, into slot s + 1 of LMGen's ring;
    the next step reads that slot, so the history it sees is the forced one.
    """
    state = gen._streaming_state
    n_gen = 1 + gen.lm_model.dep_q
    frames = steps[:, None] - gen.delays_cuda[None, :n_gen]  # [B, 9]: the frame each generated stream wrote
    keep = (frames >= starts[:, None]) | (frames < 0)  # generated, or nothing to force
    values = forced[:, :n_gen].gather(2, frames.clamp(0, forced.shape[2] - 1)[..., None])[..., 0]
    slots = ((steps + 1) % state.cache.shape[2])[:, None, None].expand(-1, n_gen, 1)
    ring = state.cache[:, :n_gen]
    ring.scatter_(2, slots, torch.where(keep, ring.gather(2, slots)[..., 0], values)[..., None])


def _extend(codes: torch.Tensor, n_frames: int) -> torch.Tensor:
    if codes.shape[1] >= n_frames:
        return codes[:, :n_frames]
    return torch.cat([codes, codes[:, -1:].expand(-1, n_frames - codes.shape[1])], dim=1)


# --- scoring the generated text -------------------------------------------------------------------------------
# Strict: the first answer span, normalised, is one of the answers. Token F1 on that span gives partial credit.
# Containment anywhere in the text is only a lenient figure: babble that happens to include the gold counts.

_SPAN_END = re.compile(r"[.!?;,:\n]")


def first_span(generated: str) -> str:
    """What Moshi said up to its first clause break: the answer, without what it rambles on to say."""
    return _SPAN_END.split(generated.strip(), maxsplit=1)[0]


def exact_match(generated: str, answers: Sequence[str]) -> bool:
    """Whether the first answer span, normalised, equals a normalised answer (any alias)."""
    span = normalise(first_span(generated))
    return bool(span) and span in {normalise(a) for a in answers}


def contains_answer(generated: str, answers: Sequence[str]) -> bool:
    """Whether any normalised answer appears in the normalised text as whole words (the lenient figure)."""
    padded = f" {normalise(generated)} "
    return any(norm and f" {norm} " in padded for norm in map(normalise, answers))


def token_f1(generated: str, answers: Sequence[str]) -> float:
    """The best word-overlap F1 between the first answer span and any of the answers."""
    span = normalise(first_span(generated)).split()
    return max((_f1(span, normalise(a).split()) for a in answers), default=0.0)


def _f1(predicted: list[str], gold: list[str]) -> float:
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)
