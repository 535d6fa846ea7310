"""Multiple choice by likelihood: which candidate answer does Moshi's inner monologue find most probable?

Each (question, candidate) pair is one row of codes laid out like a training turn: the question audio on the
user channel, then the candidate's words on Moshi's text stream at their spoken times (padding id elsewhere,
end-of-padding before each word, exactly as training builds the stream). The score is the mean log-probability
of the candidate's text tokens, teacher-forced (the length-normalised score, the headline); the summed
log-probability is reported beside it, since each normalisation has its own length bias.

Fairness: over the answer window Moshi's audio is the zero token (-1) unless a candidate brings its *own* audio; no
candidate is ever scored next to the gold answer's audio, which would give the answer away (docs/moshi.md, "Training
and scoring must see the same inputs"). Only the text logits are needed, so rows go through `lm.forward_text` (no
depformer), all candidates of many questions in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from moshi.models.lm_utils import _delay_sequence
from torch import nn

from moshi_knowledge.train.batches import find_lm
from moshi_knowledge.train.samples import MOSHI_AUDIO, N_STREAMS, ZERO_TOKEN


@dataclass
class Candidate:
    """One answer option: its text stream over the whole row and, optionally, its own Moshi audio codes."""

    text: str
    tokens: torch.Tensor  # [T] Moshi's text stream for the row (padding except the candidate's words)
    audio: torch.Tensor | None = None  # [8, T] Moshi's audio codes for the row, or None: the context's (masked)


@dataclass
class MCQuestion:
    """The shared part of a question's rows and its candidates, gold first.

    `context` rows 1-16 hold Moshi's audio (silence before the answer window, -1 inside it) and the user's
    audio (the question, then silence); row 0 is ignored (each candidate brings its own text stream).
    """

    qid: str
    context: torch.Tensor  # [17, T]
    candidates: list[Candidate]


@dataclass(frozen=True)
class MCResult:
    qid: str
    scores: list[float]  # mean log-prob per candidate token, in candidate order (gold first)
    n_tokens: list[int]

    @property
    def finite(self) -> bool:
        """Every score is a number. A NaN compares false with everything, so without this check a model whose
        weights went NaN would rank gold first on every question."""
        return all(math.isfinite(s) for s in self.scores)

    @property
    def gold_rank(self) -> int:
        """1 + the number of distractors scoring at least as high as gold (ties count against gold); last place
        when any score is non-finite."""
        return _gold_rank(self.scores) if self.finite else len(self.scores)

    @property
    def correct(self) -> bool:
        return self.finite and self.gold_rank == 1

    @property
    def correct_by_sum(self) -> bool:
        """Gold wins on the summed log-probability of its tokens, which favours short answers where the mean
        favours long ones: a win under both scores does not come from length."""
        return self.finite and _gold_rank([s * n for s, n in zip(self.scores, self.n_tokens)]) == 1

    @property
    def margin(self) -> float:
        """Gold's score minus the best distractor's: positive when gold wins (NaN without finite scores)."""
        if not self.finite or len(self.scores) < 2:
            return float("nan")
        return self.scores[0] - max(self.scores[1:])


def _gold_rank(scores: Sequence[float]) -> int:
    return 1 + sum(s >= scores[0] for s in scores[1:])


def row_codes(question: MCQuestion, candidate: Candidate) -> torch.Tensor:
    """The [17, T_c] codes scored for one candidate (T_c = the length of its text stream)."""
    length = candidate.tokens.shape[0]
    if length > question.context.shape[1]:
        raise ValueError(f"question {question.qid}: candidate {candidate.text!r} needs {length} frames, "
                         f"the context has {question.context.shape[1]}")
    codes = question.context[:, :length].clone()
    codes[0] = candidate.tokens
    if candidate.audio is not None:
        codes[MOSHI_AUDIO] = candidate.audio[:, :length]
    return codes


def answer_mask(tokens: torch.Tensor, pad_id: int, end_pad_id: int) -> torch.Tensor:
    """The frames holding the candidate's own tokens (not padding, not end-of-padding, not the zero token)."""
    return (tokens != pad_id) & (tokens != end_pad_id) & (tokens != ZERO_TOKEN)


def text_log_probs(model: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """log p(codes[:, 0, t] | everything the LM may see at t), [B, T], via the text-only fast path (differentiable).

    Same inputs as LMModel.forward (initial token, then the delayed codes), but only the main transformer and
    the text head run. Text has delay 0, so its logits need no un-delaying: position t predicts codes[:, 0, t].
    """
    lm = find_lm(model)
    batch = codes.shape[0]
    initial = lm._get_initial_token().expand(batch, -1, -1)
    delayed = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
    _, logits = lm.forward_text(delayed[:, :, :-1])
    log_probs = torch.log_softmax(logits[:, 0].float(), dim=-1)
    targets = codes[:, 0].clamp(min=0)  # -1 (zero token) frames are gathered harmlessly and masked by the caller
    return log_probs.gather(-1, targets[..., None])[..., 0]


@torch.no_grad()
def score(model: nn.Module, questions: Sequence[MCQuestion], batch_size: int = 64) -> list[MCResult]:
    """Score every candidate of every question, `batch_size` rows per forward pass."""
    lm = find_lm(model)
    pad_id, end_pad_id = int(lm.text_padding_token_id), int(lm.end_of_text_padding_id)
    pairs = [(qi, ci) for qi, q in enumerate(questions) for ci in range(len(q.candidates))]
    sums = [[0.0] * len(q.candidates) for q in questions]
    counts = [[0] * len(q.candidates) for q in questions]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            rows = [row_codes(questions[qi], questions[qi].candidates[ci]) for qi, ci in chunk]
            codes = _stack_padded(rows).to(lm.device)
            log_probs = text_log_probs(lm, codes).cpu()
            for b, (qi, ci) in enumerate(chunk):
                mask = answer_mask(rows[b][0], pad_id, end_pad_id)
                sums[qi][ci] = float(log_probs[b, :len(mask)][mask].sum())
                counts[qi][ci] = int(mask.sum())
    finally:
        model.train(was_training)
    results = []
    for q, s, n in zip(questions, sums, counts):
        empty = [c.text for c, k in zip(q.candidates, n) if k == 0]
        if empty:
            raise ValueError(f"question {q.qid}: candidates {empty} have no text tokens inside the row")
        results.append(MCResult(q.qid, [total / k for total, k in zip(s, n)], n))
    return results


def _stack_padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, 17, T_max]; the zero token after a row's end changes nothing before it (the LM is causal)."""
    length = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), N_STREAMS, length), ZERO_TOKEN, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :, :r.shape[1]] = r
    return out
