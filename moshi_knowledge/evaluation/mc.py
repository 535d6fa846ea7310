"""Multiple choice by likelihood: which candidate answer does Moshi's inner monologue find most probable?

Each (question, candidate) pair is one row of codes laid out like a training turn: the question audio on the
user channel, then the candidate's words on Moshi's text stream at their spoken times (padding id elsewhere,
end-of-padding before each word, exactly as training builds the stream). The score is the mean log-probability
of the candidate's text tokens, teacher-forced (the length-normalised score, the headline); the summed
log-probability is reported beside it, since each normalisation has its own length bias.

Speed: a question's candidates differ only from their answer window on, so the part of their rows before that
(lead, question, gap: most of each row) goes through the transformer once per question, in moshi's streaming
mode; its KV cache is then given one row per candidate and only the candidates' own frames are run. Questions
whose prefixes are the same codes (a question and its shuffled control, silences of one length) share one run.
The LM is causal, so the scores are those of whole rows, up to rounding (tests/test_eval_mc.py compares both).
All of that layout is fixed by the questions, so `MCPlan` builds it once per run; a pass only runs the LM and
waits for the GPU once, at its end.

Fairness: over the answer window Moshi's audio is the zero token (-1) unless a candidate brings its *own* audio; no
candidate is ever scored next to the gold answer's audio, which would give the answer away (docs/moshi.md, "Training
and scoring must see the same inputs"). Only the text logits are needed, so rows go through `lm.forward_text` (no
depformer), all candidates of many questions in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch
from moshi.models.lm import LMModel
from moshi.modules.streaming import StreamingModule
from moshi.modules.transformer import RingKVCache

from moshi_knowledge.codes.samples import MOSHI_AUDIO, N_STREAMS, ZERO_TOKEN
from moshi_knowledge.evaluation.streaming import attention_span, delayed_inputs


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


def text_log_probs(lm: LMModel, codes: torch.Tensor) -> torch.Tensor:
    """log p(codes[:, 0, t] | everything the LM may see at t), [B, T], from whole rows via the text-only fast
    path (only the main transformer and the text head run)."""
    codes = codes.to(lm.device)
    _, logits = lm.forward_text(delayed_inputs(lm, codes))
    return _gather_targets(logits, codes[:, 0].clamp(min=0))


@dataclass
class _Group:
    """One forward pass's worth of candidate rows, as tensors ready for the LM: what `score` runs."""

    questions: list[int]  # indices into MCPlan.questions, in row order
    firsts: torch.Tensor  # [P, 17, shared] the distinct shared prefixes' inputs (shared may be 0)
    owner: torch.Tensor  # [R] the prefix each candidate row continues
    rest: torch.Tensor  # [R, 17, T] every row's inputs after the shared prefix (the zero token past its end)
    targets: torch.Tensor  # [R, shared + T] the text token each position is scored on (clamped to a valid id)
    mask: torch.Tensor  # [R, shared + T] the positions holding the candidate's own tokens

    def to(self, device: torch.device) -> "_Group":
        return _Group(self.questions, *(t.to(device) for t in (self.firsts, self.owner, self.rest, self.targets,
                                                                self.mask)))


class MCPlan:
    """Everything multiple choice needs that does not depend on the weights, built once per question set.

    Rows, their delayed inputs, shared prefixes, the batching and the answer masks are the same at every recall
    point; building them took about a second of CPU per point for the default 990 questions (real ones and
    controls), during which the GPU waited. `score` then only runs the LM.

    Questions are batched in order of their shared prefix's length (and, within one length, its codes, so that
    identical prefixes meet in one batch), so a batch wastes little on the frames by which its shortest prefix
    falls short of the others'.
    """

    def __init__(self, lm: LMModel, questions: Sequence[MCQuestion], batch_size: int = 64) -> None:
        """`lm` lends its delays and initial token (no weight is read); `batch_size`: about that many candidate
        rows per forward pass. A candidate without text tokens inside its row is a ValueError, raised here."""
        pad_id, end_pad_id = int(lm.text_padding_token_id), int(lm.end_of_text_padding_id)
        self.questions = list(questions)
        rows = [[row_codes(q, c) for c in q.candidates] for q in questions]
        self.n_tokens = [[int(answer_mask(codes[0], pad_id, end_pad_id).sum()) for codes in r] for r in rows]
        for q, counts in zip(questions, self.n_tokens):
            empty = [c.text for c, k in zip(q.candidates, counts) if k == 0]
            if empty:
                raise ValueError(f"question {q.qid}: candidates {empty} have no text tokens inside the row")
        inputs = [delayed_inputs(lm, _stack_padded(r)) for r in rows]
        prefix = [_shared_prefix(x) for x in inputs]
        order = sorted(range(len(questions)), key=lambda i: (prefix[i], _codes_key(inputs[i][0, :, :prefix[i]])))
        self.groups = [_group(g, [rows[i] for i in g], [inputs[i] for i in g], min(prefix[i] for i in g), pad_id,
                              end_pad_id) for g in _batches(order, [len(q.candidates) for q in questions], batch_size)]
        self._on: dict[torch.device, list[_Group]] = {}

    def on(self, device: torch.device) -> list[_Group]:
        """The groups' tensors on `device`, copied there once (a few MB for the default questions)."""
        if device not in self._on:
            self._on[device] = [g.to(device) for g in self.groups]
        return self._on[device]


@torch.no_grad()
def score(lm: LMModel, plan: MCPlan) -> list[MCResult]:
    """Score every candidate of every question of `plan` (one result per question, in the plan's order).

    `lm` is a plain LMModel: moshi's streaming attention refuses peft's layers (model.lora.generation_lm lends
    one). The summed log-probabilities stay on the device until the last pass: one wait for the GPU in all.
    """
    was_training = lm.training
    lm.eval()
    try:
        groups = plan.on(lm.device)
        sums = torch.cat([_score_group(lm, g) for g in groups]).cpu().tolist()
    finally:
        lm.train(was_training)
    by_question: dict[int, list[float]] = {}
    rows = iter(sums)
    for g in groups:
        for i in g.questions:
            by_question[i] = [next(rows) for _ in plan.questions[i].candidates]
    return [MCResult(q.qid, [s / k for s, k in zip(by_question[i], plan.n_tokens[i])], plan.n_tokens[i])
            for i, q in enumerate(plan.questions)]


def _shared_prefix(inputs: torch.Tensor) -> int:
    """How many leading input frames all candidates of a question share (at least 0, at most all but one)."""
    differs = (inputs != inputs[:1]).any(dim=(0, 1)).nonzero()
    return min(int(differs[0]) if len(differs) else inputs.shape[2], inputs.shape[2] - 1)


def _codes_key(codes: torch.Tensor) -> bytes:
    return codes.numpy().tobytes()


def _batches(order: Sequence[int], sizes: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive questions of `order` whose candidates add up to at most `batch_size` rows (one at least)."""
    group: list[int] = []
    rows = 0
    for i in order:
        if group and rows + sizes[i] > batch_size:
            yield group
            group, rows = [], 0
        group.append(i)
        rows += sizes[i]
    if group:
        yield group


def _group(questions: list[int], rows: Sequence[Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor], shared: int,
           pad_id: int, end_pad_id: int) -> _Group:
    """The tensors of one pass. The first `shared` input frames are the same for every candidate of every question
    here: they run once per distinct prefix (`firsts`), each row continuing the prefix `owner` names."""
    distinct: dict[bytes, int] = {}
    prefix_of = [distinct.setdefault(_codes_key(x[0, :, :shared]), len(distinct)) for x in inputs]
    firsts = {k: x[0, :, :shared] for k, x in zip(prefix_of, inputs)}
    codes = _stack_padded([c for r in rows for c in r])
    rest = _stack_padded([row for x in inputs for row in x[:, :, shared:]])
    frames = shared + rest.shape[2]
    codes = torch.cat([codes, torch.full((*codes.shape[:2], frames - codes.shape[2]), ZERO_TOKEN)], dim=2)
    return _Group(questions, torch.stack([firsts[k] for k in range(len(distinct))]),
                  torch.tensor([prefix_of[q] for q, r in enumerate(rows) for _ in r]), rest,
                  codes[:, 0].clamp(min=0), answer_mask(codes[:, 0], pad_id, end_pad_id))


def _score_group(lm: LMModel, group: _Group) -> torch.Tensor:
    """[R]: each row's summed log-probability of its candidate's tokens, on the LM's device.

    The shared prefixes run first in streaming mode; every streaming state is then repeated per candidate row and
    the rest of every row runs. The LM is causal, so the scores are those of whole rows, up to rounding.
    """
    shared = group.firsts.shape[2]
    with attention_span(lm, shared + group.rest.shape[2]), lm.transformer.streaming(group.firsts.shape[0]):
        pieces = []
        if shared:
            _, logits = lm.forward_text(group.firsts)
            pieces.append(_gather_targets(logits, group.targets[:, :shared], group.owner))
        _repeat_rows(lm.transformer, group.owner)
        _, logits = lm.forward_text(group.rest)
        pieces.append(_gather_targets(logits, group.targets[:, shared:]))
    log_probs = torch.cat(pieces, dim=1)
    return torch.where(group.mask, log_probs, 0.0).sum(dim=1)


def _repeat_rows(module: StreamingModule, index: torch.Tensor) -> None:
    """Make row b of every streaming state under `module` a copy of its row `index[b]` (KV caches included).

    Written against moshi 0.2's states: dataclasses of per-row tensors, a RingKVCache (rows in its dim 1) and
    the exec mask every state has.
    """
    for state in module.get_streaming_state().values():
        rows = state.batch_size
        for f in fields(state):
            value = getattr(state, f.name)
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
                setattr(state, f.name, value[index])
            elif isinstance(value, RingKVCache):
                value.cache = value.cache[:, index]
                if value.end_offset.shape[0] == rows:
                    value.end_offset = value.end_offset[index]
        state.exec_mask = state.exec_mask[index]
        state.batch_size = len(index)


def _gather_targets(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T]: the log-probability the text logits [Q, 1, T, V] give `targets` [B, T] (valid token ids).

    Row b reads logits row `rows[b]` (default: row b), so the shared prefix's logits serve every candidate of
    its question without being copied per candidate."""
    log_probs = torch.log_softmax(logits[:, 0].float(), dim=-1)
    rows = torch.arange(targets.shape[0], device=targets.device) if rows is None else rows
    frames = torch.arange(targets.shape[1], device=targets.device)
    return log_probs[rows[:, None], frames[None, :], targets]


def _stack_padded(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, 17, T_max]; the zero token after a row's end changes nothing before it (the LM is causal)."""
    length = max(r.shape[1] for r in rows)
    out = torch.full((len(rows), N_STREAMS, length), ZERO_TOKEN, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :, :r.shape[1]] = r
    return out
