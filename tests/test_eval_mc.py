"""Multiple choice and generation on a tiny Moshi trained for a few seconds on synthetic spoken Q/A codes.

The world: 24 questions, each a random stretch of user audio codes, each answered by two invented words on
Moshi's text stream (placed by the training text-stream builder) with answer audio that identifies the answer,
as real speech does. Distractors are other questions' gold answers (docs/moshi.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import sentencepiece as spm
import torch
from moshi.models import loaders
from moshi.models.lm import LMModel

from moshi_knowledge.codes.samples import FRAME_RATE, MOSHI_AUDIO, N_STREAMS, ZERO_TOKEN
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.codes.text_stream import text_stream
from moshi_knowledge.evaluation.generate import Prompt, generate
from moshi_knowledge.evaluation.mc import Candidate, MCPlan, MCQuestion, MCResult, row_codes, score, text_log_probs
from moshi_knowledge.model.tiny import train_tokenizer
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SpeakerWord
from moshi_knowledge.train.batches import collate

torch.set_num_threads(1)

CARD, N_QUESTIONS, PAD, END_PAD, SILENCE = 64, 24, 3, 0, 0
LEAD, GAP, TAIL = 2, 3, 14  # frames: silence before the question, between question and answer, answer window
USER = slice(9, 17)


@dataclass
class World:
    tokenizer: spm.SentencePieceProcessor
    answers: list[str]

    def stream(self, answer: str, start: int, n_frames: int) -> torch.Tensor:
        """The answer's words 0.4 s apart from frame `start`, as training lays out Moshi's words."""
        t0 = start / FRAME_RATE
        words = [SpeakerWord(w, t0 + 0.4 * i, t0 + 0.4 * i + 0.3, MOSHI_SPEAKER) for i, w in enumerate(answer.split())]
        return text_stream(words, self.tokenizer.encode, n_frames, PAD, END_PAD)

    def audio(self, index: int) -> torch.Tensor:
        """Answer audio codes [8, 1] that identify the answer (and nothing else)."""
        return torch.tensor([(7 * index + 3 * k) % (CARD - 1) + 1 for k in range(8)])[:, None]

    def user(self, question: torch.Tensor) -> tuple[torch.Tensor, int]:
        """User channel [8, T] (silence, question, silence) and the answer's first frame."""
        start = LEAD + question.shape[1] + GAP
        user = torch.full((8, start + TAIL), SILENCE, dtype=torch.long)
        user[:, LEAD:LEAD + question.shape[1]] = question
        return user, start

    def training_rows(self, questions: list[torch.Tensor], audio_drop: float, rng: random.Random) -> torch.Tensor:
        rows = []
        for i, q in enumerate(questions):
            user, start = self.user(q)
            codes = torch.full((N_STREAMS, user.shape[1]), SILENCE, dtype=torch.long)
            codes[0] = self.stream(self.answers[i], start, user.shape[1])
            last = int(_word_frames(codes[0]).nonzero().max())
            codes[MOSHI_AUDIO, start:last + 1] = ZERO_TOKEN if rng.random() < audio_drop else self.audio(i)
            codes[USER] = user
            rows.append([(codes, 0)])
        spec = StreamSpec(tuple(loaders._lm_kwargs["delays"]), CARD, self.tokenizer.vocab_size())
        return collate(rows, spec, max(row[0][0].shape[1] for row in rows)).codes  # padded as training pads

    def mc_questions(self, questions: list[torch.Tensor], answer_audio: str = "masked") -> list[MCQuestion]:
        """answer_audio: "masked" (the default scoring), "gold" (gold's audio under every candidate: a leak) or
        "own" (each candidate with its own audio, the candidate_audio option)."""
        out = []
        for i, q in enumerate(questions):
            user, start = self.user(q)
            context = torch.full((N_STREAMS, user.shape[1]), PAD, dtype=torch.long)
            context[MOSHI_AUDIO] = SILENCE
            context[MOSHI_AUDIO, start:] = self.audio(i) if answer_audio == "gold" else ZERO_TOKEN
            context[USER] = user
            candidates = []
            for j in [i, *((i + k) % N_QUESTIONS for k in (1, 2, 3))]:
                stream = self.stream(self.answers[j], start, user.shape[1])
                stream = stream[:int(_word_frames(stream).nonzero().max()) + 1]
                own = None
                if answer_audio == "own":
                    own = context[MOSHI_AUDIO].clone()
                    own[:, start:] = self.audio(j)
                candidates.append(Candidate(self.answers[j], stream, own))
            out.append(MCQuestion(f"q{i}", context, candidates))
        return out


def _word_frames(stream: torch.Tensor) -> torch.Tensor:
    return (stream != PAD) & (stream != END_PAD)


@pytest.fixture(scope="module")
def world() -> World:
    rng = random.Random(0)
    syllables = ["ka", "ro", "mi", "ven", "dor", "tal", "bri", "nes", "lo", "fir", "gan", "shu"]
    words = list(dict.fromkeys((rng.choice(syllables) + rng.choice(syllables)).capitalize() for _ in range(400)))
    rng.shuffle(words)
    answers = [f"{words[2 * i]} {words[2 * i + 1]}" for i in range(N_QUESTIONS)]
    text = "\n".join(f"The answer is {a}." for a in answers * 3)
    return World(spm.SentencePieceProcessor(model_proto=train_tokenizer(text, 400)), answers)


def _questions(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, CARD, (8, int(torch.randint(12, 19, (1,), generator=g))), generator=g)
            for _ in range(N_QUESTIONS)]


def _tiny_lm(world: World) -> LMModel:
    torch.manual_seed(0)
    kwargs = dict(loaders._lm_kwargs, dim=128, num_heads=4, num_layers=2, text_card=world.tokenizer.vocab_size(),
                  card=CARD, context=500, depformer_dim=64, depformer_num_heads=4, depformer_num_layers=2,
                  depformer_dim_feedforward=264)
    return LMModel(**kwargs)


def _train(lm: LMModel, batches, steps: int, lr: float = 3e-3) -> LMModel:
    """Text loss through the same fast path the scoring uses (padding targets at half weight, as in training)."""
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    lm.train()
    for _ in range(steps):
        codes = batches()
        weights = torch.where(_word_frames(codes[:, 0]), 1.0, 0.5)
        loss = -(text_log_probs(lm, codes) * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return lm.eval()


def _accuracy(lm: LMModel, questions: list[MCQuestion]) -> float:
    results = score(lm, MCPlan(lm, questions, 48))
    return sum(r.correct for r in results) / len(results)


@pytest.fixture(scope="module")
def train_questions() -> list[torch.Tensor]:
    return _questions(1)


@pytest.fixture(scope="module")
def trained(world: World, train_questions) -> LMModel:
    """Memorises the 24 questions; half the answer turns without Moshi audio (audio_drop 0.5)."""
    rng = random.Random(1)
    return _train(_tiny_lm(world), lambda: world.training_rows(train_questions, 0.5, rng), steps=60)


@pytest.mark.slow
def test_training_on_the_facts_ranks_gold_first(world: World, train_questions, trained: LMModel) -> None:
    questions = world.mc_questions(train_questions)
    untouched = _accuracy(_tiny_lm(world).eval(), questions)
    learned = _accuracy(trained, questions)
    assert untouched <= 0.5  # chance is 0.25
    assert learned >= 0.8
    results = score(trained, MCPlan(trained, questions))
    assert sum(r.gold_rank for r in results) / len(results) < 1.5
    assert sum(r.margin > 0 for r in results) == sum(r.correct for r in results)
    # unseen question audio carries nothing the model learned: chance, not memorised answers
    assert _accuracy(trained, world.mc_questions(_questions(2))) <= 0.5


@pytest.mark.slow
def test_gold_audio_would_leak_and_the_default_masks_it(world: World) -> None:
    # A model that only ever heard its answers can read later answer tokens off its own audio. The questions are
    # fresh noise at every step, so the audio is all it can learn from.
    rng, seed = random.Random(2), iter(range(100, 10_000))
    lm = _train(_tiny_lm(world), lambda: world.training_rows(_questions(next(seed)), 0.0, rng), steps=100)
    questions = _questions(3)
    leaky = _accuracy(lm, world.mc_questions(questions, "gold"))
    masked = _accuracy(lm, world.mc_questions(questions, "masked"))
    own = _accuracy(lm, world.mc_questions(questions, "own"))
    assert leaky >= 0.9, "gold audio under every candidate gives the answer away"
    assert masked <= 0.5 and own <= 0.5, "masked audio, or each candidate's own audio, gives nothing away"


def test_default_rows_carry_no_answer_audio(world: World, train_questions) -> None:
    q = world.mc_questions(train_questions[:1])[0]
    _, start = world.user(train_questions[0])
    for candidate in q.candidates:
        codes = row_codes(q, candidate)
        assert (codes[MOSHI_AUDIO, start:] == ZERO_TOKEN).all()
        assert (codes[MOSHI_AUDIO, :start] == SILENCE).all()
        assert torch.equal(codes[0], candidate.tokens)
        assert torch.equal(codes[USER], q.context[USER, :codes.shape[1]])


def test_scores_are_batch_independent(world: World, train_questions, trained: LMModel) -> None:
    questions = world.mc_questions(train_questions[:5])
    together = score(trained, MCPlan(trained, questions, 64))
    alone = [score(trained, MCPlan(trained, [q], 1))[0] for q in questions]
    for a, b in zip(together, alone):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)
        assert a.n_tokens == b.n_tokens
    assert trained.training is False


def test_a_plan_holds_nothing_of_the_weights(world: World, train_questions, trained: LMModel) -> None:
    """Recall builds the plan once, before training, and scores every later model state with it: scores through
    a plan built on the untrained model equal those of a plan built on the trained one."""
    questions = world.mc_questions(train_questions[:6])
    early = MCPlan(_tiny_lm(world), questions, 10)
    before = score(_tiny_lm(world).eval(), early)
    later = score(trained, early)
    fresh = score(trained, MCPlan(trained, questions, 10))
    for a, b in zip(later, fresh):
        assert a.qid == b.qid and a.scores == b.scores and a.n_tokens == b.n_tokens
    assert [r.scores for r in later] != [r.scores for r in before], "the plan scored the weights it was built with"


def test_a_candidate_without_tokens_in_its_row_is_refused_when_the_plan_is_built(world: World,
                                                                                 train_questions) -> None:
    q = world.mc_questions(train_questions[:1])[0]
    silent = Candidate("nothing", torch.full_like(q.candidates[1].tokens, PAD))
    with pytest.raises(ValueError, match=f"question {q.qid}: candidates \\['nothing'\\] have no text tokens"):
        MCPlan(_tiny_lm(world), [MCQuestion(q.qid, q.context, [q.candidates[0], silent])])


@pytest.mark.parametrize("answer_audio", ["masked", "own"])
def test_shared_prefix_scores_equal_whole_rows(world: World, train_questions, trained: LMModel,
                                               answer_audio: str) -> None:
    """Each question's prefix runs once and its KV cache is repeated per candidate: the scores must be those of
    every candidate's whole row run alone (with its own audio, the rows part earlier: a shorter shared prefix)."""
    questions = world.mc_questions(train_questions[:7], answer_audio)
    shared = score(trained, MCPlan(trained, questions, 10))  # uneven groups: 2-3 questions per pass
    for q, result in zip(questions, shared):
        for candidate, got, n in zip(q.candidates, result.scores, result.n_tokens):
            codes = row_codes(q, candidate)
            with torch.no_grad():
                log_probs = text_log_probs(trained, codes[None])[0]
            mask = _word_frames(codes[0]) & (codes[0] != ZERO_TOKEN)
            assert n == int(mask.sum())
            assert got == pytest.approx(float(log_probs[mask].mean()), abs=1e-4)
    assert len({round(r.scores[0], 3) for r in shared}) > 1, "questions are not all scored alike"


def test_questions_sharing_a_prefix_run_it_once_with_the_same_scores(world: World, train_questions,
                                                                     trained: LMModel, monkeypatch) -> None:
    """A question and a copy with another question's candidates (a shuffled control) share their prefix: it runs
    once for both, and every score equals the one scored alone."""
    questions = world.mc_questions(train_questions[:4])
    twins = []
    for q, audio, other in zip(questions, train_questions, questions[1:] + questions[:1]):
        start, length = world.user(audio)[1], q.context.shape[1]
        streams = [world.stream(c.text, start, length) for c in other.candidates]  # laid out at q's answer start
        candidates = [Candidate(c.text, s[:int(_word_frames(s).nonzero().max()) + 1])
                      for c, s in zip(other.candidates, streams)]
        twins.append(MCQuestion(f"{q.qid}-twin", q.context, candidates))
    alone = [score(trained, MCPlan(trained, [q], 4))[0] for q in questions + twins]
    prefix_rows = []
    forward_text = trained.forward_text

    def counting(codes, *args, **kwargs):
        prefix_rows.append(codes.shape[0])
        return forward_text(codes, *args, **kwargs)

    monkeypatch.setattr(trained, "forward_text", counting)
    together = score(trained, MCPlan(trained, questions + twins, 64))
    assert prefix_rows[0] == len(questions), "each shared prefix ran once, for the question and its twin"
    for a, b in zip(together, alone):
        assert a.qid == b.qid and a.scores == pytest.approx(b.scores, abs=1e-4)


def _prompts(world: World, questions: list[torch.Tensor]) -> list[Prompt]:
    """Answers start when the question ends (lengths differ); Moshi's channel is silence while it listens."""
    prompts = []
    for q in questions:
        user, _ = world.user(q)
        prompts.append(Prompt(user, LEAD + q.shape[1], torch.full_like(user, SILENCE)))
    return prompts


def _teacher_forced_text(lm: LMModel, prompts: list[Prompt], generations: list, n_frames: int) -> torch.Tensor:
    """Greedy text of one forward pass over each history: padding and silence while listening, then the codes
    generation produced; [B, n_frames]."""
    rows = []
    for p, g in zip(prompts, generations):
        codes = torch.full((N_STREAMS, n_frames), PAD, dtype=torch.long)
        codes[MOSHI_AUDIO, :p.answer_start] = p.moshi_codes[:, :p.answer_start]
        codes[0, p.answer_start:] = g.text[:n_frames - p.answer_start]
        codes[MOSHI_AUDIO, p.answer_start:] = g.audio[:, :n_frames - p.answer_start]
        codes[USER] = p.user_codes[:, :n_frames]
        rows.append(codes)
    with torch.no_grad():
        return lm(torch.stack(rows)).text_logits[:, 0].argmax(-1)


def test_generation_matches_teacher_forcing(world: World, train_questions, trained: LMModel) -> None:
    """What LMGen streams is exactly what the LM predicts with the same history in one forward pass."""
    full = [Prompt(p.user_codes, 0, p.moshi_codes) for p in _prompts(world, train_questions[:6])]
    n_frames = min(p.user_codes.shape[1] for p in full)
    generations = generate(trained, full, n_frames, batch_size=6)
    greedy = _teacher_forced_text(trained, full, generations, n_frames)
    assert torch.equal(greedy, torch.stack([g.text for g in generations]))


def test_listening_is_teacher_forced(world: World, train_questions, trained: LMModel) -> None:
    """Until its question ends a row hears padding and silence from Moshi's side, whatever the model would have
    said: the answer is what one forward pass over that history predicts (the listened frames of the batch run
    as one prefill, the rest are forced step by step)."""
    prompts = _prompts(world, train_questions[:6])
    assert len({p.answer_start for p in prompts}) > 2, "rows listen for different lengths"
    generations = generate(trained, prompts, TAIL, batch_size=6)
    n_frames = min(p.answer_start for p in prompts) + TAIL
    greedy = _teacher_forced_text(trained, prompts, generations, n_frames)
    for b, (p, g) in enumerate(zip(prompts, generations)):
        assert torch.equal(greedy[b, p.answer_start:], g.text[:n_frames - p.answer_start])


def test_a_rows_answer_does_not_depend_on_its_batch(world: World, train_questions, trained: LMModel) -> None:
    """Alone (each row's own prefill) and in a batch with a row too short to prefill (every listened frame forced
    step by step), greedy decoding gives each row the same answer."""
    prompts = _prompts(world, train_questions[:4])
    short = Prompt(prompts[0].user_codes, 1, prompts[0].moshi_codes)
    together = generate(trained, [short, *prompts], TAIL, batch_size=5, top_k=1)[1:]
    for p, g in zip(prompts, together):
        alone = generate(trained, [p], TAIL, batch_size=1, top_k=1)[0]
        assert torch.equal(alone.text, g.text) and torch.equal(alone.audio, g.audio)
    assert sum(len(g.tokens) > 0 for g in together) >= 2, "the trained model answers"


def test_generation_decodes_every_question_in_one_batch(world: World, train_questions, trained: LMModel) -> None:
    prompts = _prompts(world, train_questions)
    rng_state = torch.random.get_rng_state()
    generations = generate(trained, prompts, answer_frames=TAIL, batch_size=len(prompts))
    assert torch.equal(torch.random.get_rng_state(), rng_state), "the caller's random stream is left alone"
    assert len(generations) == len(prompts)
    for g in generations:
        assert g.text.shape == (TAIL,) and g.audio.shape == (8, TAIL)
        assert g.tokens == [t for t in g.text.tolist() if t not in (PAD, END_PAD)]
        assert isinstance(world.tokenizer.decode(g.tokens), str)
    assert sum(len(g.tokens) > 0 for g in generations) >= len(prompts) // 2, "the trained model speaks"


@pytest.mark.parametrize("scores", [
    [math.nan] * 4,  # weights gone NaN: every comparison with NaN is false, so gold used to rank first
    [math.nan, -3.0, -4.0, -5.0],
    [-1.0, math.nan, -4.0, -5.0],  # a broken distractor row is no win for gold either
    [-math.inf] * 4,
    [-1.0, -math.inf, -4.0, -5.0],
])
def test_non_finite_scores_are_never_correct(scores: list[float]) -> None:
    result = MCResult("q", scores, [1] * 4)
    assert not result.finite and not result.correct
    assert result.gold_rank == 4 and math.isnan(result.margin)


def test_finite_scores_rank_as_before() -> None:
    assert MCResult("q", [-1.0, -2.0, -3.0], [1] * 3).correct
    tie = MCResult("q", [-1.0, -1.0, -3.0], [1] * 3)
    assert tie.finite and tie.gold_rank == 2 and not tie.correct and tie.margin == 0.0
