"""`qa=openai|gemini`: an LLM extracts training pairs from the story, then writes eval questions over them.

Two requests, as in the published experiment: training pairs first (each with paraphrases, a supporting
quote, aliases and distractors), then eval questions that combine training pairs and list their ids.
Every reply is checked before anything is returned; a reply that fails is sent back with the list of
problems, at most `max_attempts` times, then the stage fails saying what was wrong.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import ClassVar, TypeVar

from pydantic import BaseModel, Field

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.llm.output import Message
from moshi_knowledge.llm.validated import ask_until_valid
from moshi_knowledge.qa.retain import with_retain
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.schema import Story

N_DISTRACTORS = 3
Reply = TypeVar("Reply", bound=BaseModel)


# ---- what the model must return (no defaults: OpenAI's strict schemas require every field) ----

class TrainPairOut(BaseModel):
    question: str
    paraphrases: list[str] = Field(description="rewordings of the question that ask for the same answer")
    answer: str = Field(description="short answer: a name, place, year, number or a few words")
    aliases: list[str] = Field(description="other accepted ways to say the answer; may be empty")
    answer_type: str = Field(description="one word: person, place, year, number, organisation, object, event...")
    quote: str = Field(description="words copied exactly from the story that state the answer")
    distractors: list[str] = Field(description="3 wrong answers of the same answer_type")


class TrainPairsOut(BaseModel):
    pairs: list[TrainPairOut]


class EvalQuestionOut(BaseModel):
    question: str
    answer: str
    aliases: list[str]
    answer_type: str
    distractors: list[str] = Field(description="3 wrong answers of the same answer_type")
    relies_on: list[str] = Field(description="ids of the training pairs the answer follows from")


class EvalQuestionsOut(BaseModel):
    questions: list[EvalQuestionOut]


# ---- normalisation: a quote must appear in the story up to case, spacing and typographic quotes/dashes;
# answers and questions are compared as qa=file compares answers (case, punctuation, leading article) ----

_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": "-"})


def quote_key(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY)).strip().casefold()


# ---- checks: each returns readable problems that name the item ----

def _where(kind: str, index: int, question: str) -> str:
    return f"{kind} {index} ({question.strip()[:60]!r})"


def _answer_problems(where: str, answer: str, aliases: list[str], distractors: list[str]) -> list[str]:
    if not answer.strip():
        return [f"{where}: empty answer"]
    problems = []
    picked = distractors[:N_DISTRACTORS]
    if len(picked) < N_DISTRACTORS:
        problems.append(f"{where}: {len(distractors)} distractors, {N_DISTRACTORS} required")
    golds = {normalise(a) for a in [answer, *aliases]}
    keys = [normalise(d) for d in picked]
    if any(not k for k in keys) or len(set(keys)) < len(keys):
        problems.append(f"{where}: distractors must be non-empty and different from each other")
    if golds & set(keys):
        problems.append(f"{where}: a distractor equals the answer or one of its aliases")
    return problems


def train_problems(reply: TrainPairsOut, story: str, n_train: int, paraphrases: int) -> list[str]:
    """Counts, phrasings (distinct), quotes (found in the story), distractors; no question asked twice."""
    problems = [f"{len(reply.pairs)} pairs given, {n_train} required"] if len(reply.pairs) < n_train else []
    story_key = quote_key(story)
    seen: dict[str, int] = {}
    for i, pair in enumerate(reply.pairs[:n_train], 1):
        where = _where("pair", i, pair.question)
        if not pair.question.strip():
            problems.append(f"{where}: empty question")
        if len(pair.paraphrases) < paraphrases + 1:
            problems.append(f"{where}: {len(pair.paraphrases)} paraphrases, {paraphrases + 1} required")
        phrasings = [normalise(q) for q in [pair.question, *pair.paraphrases[: paraphrases + 1]]]
        if len(set(phrasings)) < len(phrasings) or not all(phrasings):
            problems.append(f"{where}: the question and its paraphrases must be non-empty and all different")
        if not pair.quote.strip() or quote_key(pair.quote) not in story_key:
            problems.append(f"{where}: quote {pair.quote.strip()[:80]!r} is not copied word for word from the story")
        problems += _answer_problems(where, pair.answer, pair.aliases, pair.distractors)
        for key in dict.fromkeys(phrasings):
            if key in seen:
                problems.append(f"{where}: repeats a question of pair {seen[key]}")
            seen.setdefault(key, i)
    return problems


def eval_problems(reply: EvalQuestionsOut, train: list[QAItem], held_out: list[QAItem], n_eval: int) -> list[str]:
    """Counts, relies only on existing training ids, duplicates no training (or other eval) question."""
    problems = [f"{len(reply.questions)} questions given, {n_eval} required"] if len(reply.questions) < n_eval else []
    train_ids = {item.id for item in train}
    known = {normalise(p): item.id for item in train for p in item.phrasings}
    known.update({normalise(item.question): item.source_id for item in held_out})
    seen: dict[str, int] = {}
    for i, q in enumerate(reply.questions[:n_eval], 1):
        where = _where("eval question", i, q.question)
        key = normalise(q.question)
        if not key:
            problems.append(f"{where}: empty question")
        elif key in known:
            problems.append(f"{where}: duplicates training question {known[key]}")
        elif key in seen:
            problems.append(f"{where}: duplicates eval question {seen[key]}")
        seen.setdefault(key, i)
        unknown = [r for r in q.relies_on if r not in train_ids]
        if not q.relies_on:
            problems.append(f"{where}: relies_on is empty; list the training ids it follows from")
        elif unknown:
            problems.append(f"{where}: relies_on names ids that are not training pairs: {unknown}")
        problems += _answer_problems(where, q.answer, q.aliases, q.distractors)
    return problems


# ---- assembling QAItems from checked replies ----

def _ids(prefix: str, n: int) -> list[str]:
    width = max(3, len(str(n)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, n + 1)]


def _aliases(answer: str, aliases: list[str]) -> list[str]:
    gold = normalise(answer)
    return list(dict.fromkeys(a.strip() for a in aliases if a.strip() and normalise(a) != gold))


def train_items(reply: TrainPairsOut, n_train: int, paraphrases: int) -> tuple[list[QAItem], list[QAItem]]:
    """Training items (phrasings = question + `paraphrases` rewordings) and one held-out rewording each."""
    train, held_out = [], []
    for tid, pid, pair in zip(_ids("t", n_train), _ids("p", n_train), reply.pairs[:n_train], strict=True):
        common = dict(
            answer=pair.answer.strip(),
            aliases=_aliases(pair.answer, pair.aliases),
            answer_type=pair.answer_type.strip().lower() or "text",
            distractors=[d.strip() for d in pair.distractors[:N_DISTRACTORS]],
            quote=pair.quote.strip(),
        )
        question = pair.question.strip()
        rewordings = [p.strip() for p in pair.paraphrases[: paraphrases + 1]]
        train.append(QAItem(id=tid, tier="train", question=question, phrasings=[question, *rewordings[:-1]], **common))
        held_out.append(QAItem(id=pid, tier="paraphrase", question=rewordings[-1], source_id=tid, **common))
    return train, held_out


def eval_items(reply: EvalQuestionsOut, n_eval: int) -> list[QAItem]:
    return [
        QAItem(
            id=eid,
            tier="eval",
            question=q.question.strip(),
            answer=q.answer.strip(),
            aliases=_aliases(q.answer, q.aliases),
            answer_type=q.answer_type.strip().lower() or "text",
            distractors=[d.strip() for d in q.distractors[:N_DISTRACTORS]],
            fact_ids=list(dict.fromkeys(q.relies_on)),
        )
        for eid, q in zip(_ids("e", n_eval), reply.questions[:n_eval], strict=True)
    ]


# ---- prompts ----

SYSTEM = (
    "You write quiz questions about a story for a spoken quiz. Use only facts stated in the given text. "
    "Questions and answers are read aloud, so write them as natural speech: no symbols or abbreviations."
)


def train_prompt(story: str, n_train: int, paraphrases: int) -> str:
    return (
        f"STORY:\n<<<\n{story.strip()}\n>>>\n\n"
        f"Write exactly {n_train} question/answer pairs, one fact per pair, covering as many different facts "
        "of the story as possible. For each pair give:\n"
        "- question: a short, natural question answered by the story alone;\n"
        f"- paraphrases: exactly {paraphrases + 1} different rewordings of the question, same answer;\n"
        "- answer: the short answer; aliases: other accepted ways to say it (may be empty);\n"
        "- answer_type: one word for the kind of answer (person, place, year, number, organisation, ...);\n"
        "- quote: a phrase copied word for word from the story that states the answer;\n"
        f"- distractors: exactly {N_DISTRACTORS} wrong answers of the same answer_type, plausible in this world.\n"
        "No two pairs may ask the same thing."
    )


def eval_prompt(train: list[QAItem], n_eval: int) -> str:
    pairs = "\n".join(f"{item.id}: {item.question} -> {item.answer}" for item in train)
    return (
        f"TRAINING PAIRS (id: question -> answer):\n{pairs}\n\n"
        f"Write exactly {n_eval} new questions that no single training pair answers, but whose answers follow "
        "from combining the facts of the training pairs (for example two facts about the same person or "
        "place). Do not repeat or reword a training question. For each give question, answer, aliases, "
        f"answer_type, distractors (exactly {N_DISTRACTORS} wrong answers of the same type) and relies_on: "
        "the ids of the training pairs the answer follows from."
    )


# ---- the backend ----

class LLMQA:
    """Q/A extracted by an LLM. `eval_model` (default: `model`) writes the eval questions."""

    provider: ClassVar[str]

    def __init__(
        self,
        model: str,
        eval_model: str | None = None,
        temperature: float | None = 0.3,
        n_train: int = 100,
        paraphrases: int = 3,
        n_eval: int = 20,
        max_attempts: int = 3,
        retain: bool = True,
        *,
        connection: Connection,
    ) -> None:
        label = f"qa={self.provider}"
        if n_train < 1 or n_eval < 0 or paraphrases < 0 or max_attempts < 1:
            raise UserError(f"{label}: need n_train >= 1, n_eval >= 0, paraphrases >= 0, max_attempts >= 1 "
                            f"(got {n_train}, {n_eval}, {paraphrases}, {max_attempts})", "fix the qa.* values")
        self.label = label
        self.retain = retain
        self.eval_model = eval_model or model
        self.n_train, self.paraphrases, self.n_eval, self.max_attempts = n_train, paraphrases, n_eval, max_attempts
        self.client = LLMClient(self.provider, "qa", model=model, temperature=temperature,
                                connection=connection)

    def build(self, story: Story) -> QASet:
        if not story.text.strip():
            raise UserError(f"{self.label}: the story is empty", "check the story stage's story.txt")
        pairs = self._ask_until_valid(
            "training pairs", train_prompt(story.text, self.n_train, self.paraphrases), TrainPairsOut,
            lambda r: train_problems(r, story.text, self.n_train, self.paraphrases), self.client.model)
        train, held_out = train_items(pairs, self.n_train, self.paraphrases)
        evals: list[QAItem] = []
        if self.n_eval:
            questions = self._ask_until_valid(
                "eval questions", eval_prompt(train, self.n_eval), EvalQuestionsOut,
                lambda r: eval_problems(r, train, held_out, self.n_eval), self.eval_model)
            evals = eval_items(questions, self.n_eval)
        return with_retain(QASet(train=train, eval=evals, paraphrase=held_out), self.retain)

    def _ask_until_valid(
        self, what: str, prompt: str, schema: type[Reply], check: Callable[[Reply], list[str]], model: str
    ) -> Reply:
        base: list[Message] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        return ask_until_valid(
            self.client, base, schema, check, what=what, max_attempts=self.max_attempts, model=model,
            fix="raise qa.max_attempts, try a stronger qa.model, or ask for fewer items (qa.n_train / qa.n_eval)")


class OpenAIQA(LLMQA):
    provider = "openai"


class GeminiQA(LLMQA):
    provider = "gemini"


SCHEMAS = {("qa", "openai_schema"): init_schema(OpenAIQA), ("qa", "gemini_schema"): init_schema(GeminiQA)}
