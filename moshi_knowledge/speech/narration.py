"""What Moshi narrates in the narration regimes: the story's facts as statements, never as questions.

With a generated world whose facts the Q/A asks (qa=facts), the narration is fact by fact: every fact of the
train, heldout_facts and eval tiers (never an unseen_facts one: that tier stays the never-trained null), each in
`restatements` sentences (the story's own, then other templates of its relation, `world/prose.py`). Otherwise
(story=file|openai|gemini, or an LLM's Q/A) it is the story's own sentences. The restatements go round by round
(every fact once, then every fact again), so two statements of one fact never share a passage: a passage that
states a fact twice teaches copying from the context, not the fact. `shuffle` draws a new sentence order for each
round (sentence-order shuffling); without it every round keeps the story's order.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import ClassVar

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.schema import Line
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world import prose
from moshi_knowledge.world.schema import Fact, Story

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


_PREFIX = "n-"


def narration_line_id(source: str, k: int) -> str:
    """Line id of restatement `k` of a fact (`source` its id) or of a story sentence (`source` its index)."""
    return f"{_PREFIX}{source}-{k}"


def is_narration_line(line_id: str) -> bool:
    return line_id.startswith(_PREFIX)


@dataclass(frozen=True)
class Statement:
    """One sentence of the story that the narration states: `keep` is what every restatement must still say (a
    fact's subject and object, or the Q/A answers the sentence gives)."""

    source: str  # a fact's id, or "s<index>" for a story sentence
    text: str
    keep: tuple[str, ...]
    fact: Fact | None = None


class Narration:
    """narration=default: the sentences Moshi says, in the order the narration layouts pack them; restatements of
    a fact from its relation's templates (`world/prose.py`)."""

    max_restatements: ClassVar[int] = prose.MAX_RESTATEMENTS  # every relation has this many templates

    def __init__(self, seed: int, restatements: int = 1, shuffle: bool = False) -> None:
        if not 1 <= restatements <= self.max_restatements:
            raise UserError(f"narration.restatements={restatements}: {self.max_restatements} at most",
                            f"set narration.restatements between 1 and {self.max_restatements}")
        self.seed = seed
        self.restatements = restatements
        self.shuffle = shuffle

    def rounds(self, story: Story, qa: QASet) -> list[list[Line]]:
        """Moshi's sentences, one list per round; each round states every narrated fact (or sentence) once."""
        rng = random.Random(f"{self.seed}-narration")
        statements = self.statements(story, qa)
        texts = self._restate(statements, story, rng)
        rounds = [[Line(narration_line_id(s.source, k), t[k], "moshi") for s, t in zip(statements, texts)]
                  for k in range(self.restatements)]
        return [rng.sample(r, len(r)) for r in rounds] if self.shuffle else rounds

    @staticmethod
    def statements(story: Story, qa: QASet) -> list[Statement]:
        """The narrated facts' sentences (`narrated_facts`), or else the story's own sentences."""
        facts = narrated_facts(story, qa)
        if facts:
            assert story.world is not None
            names = {e.id: e.name for e in story.world.entities}
            return [Statement(f.id, f.sentence, (names[f.subject], names[f.object]), f) for f in facts]
        answers = {normalise(q.answer): q.answer for q in [*qa.train, *qa.heldout_facts, *qa.eval]}
        sentences = [" ".join(s.split()) for block in story.text.split("\n\n")
                     for s in _SENTENCE_END.split(block.strip()) if s]
        return [Statement(f"s{i:04d}", text, tuple(a for key, a in answers.items()
                                                   if re.search(rf"\b{re.escape(key)}\b", normalise(text))))
                for i, text in enumerate(sentences)]

    def _restate(self, statements: list[Statement], story: Story, rng: random.Random) -> list[list[str]]:
        """`restatements` texts per statement, its own first."""
        if self.restatements == 1:
            return [[s.text] for s in statements]
        if any(s.fact is None for s in statements):
            raise UserError(f"narration.restatements={self.restatements}: a story without facts the Q/A asks "
                            "(story=file|openai|gemini, or an LLM's Q/A) has no templates to restate it with",
                            "set narration.restatements=1, use narration=openai|gemini (LLM rewrites), or use "
                            "story=procedural with qa=facts")
        world = story.world
        assert world is not None
        return [prose.restatements(s.fact, world.entity(s.fact.subject), world.entity(s.fact.object),
                                   self.restatements, rng) for s in statements if s.fact is not None]


def narrated_facts(story: Story, qa: QASet) -> list[Fact]:
    """The world's facts that the train, heldout_facts and eval tiers ask, in story order; empty when the Q/A does
    not name the world's facts. A fact of the unseen_facts tier is never among them."""
    if story.world is None:
        return []
    asked = {f for q in [*qa.train, *qa.heldout_facts, *qa.eval] for f in q.fact_ids}
    by_id = {f.id: f for f in story.world.facts}
    if not asked or not asked <= by_id.keys():
        return []
    unseen = {f for q in qa.unseen_facts for f in q.fact_ids}
    return [f for f in story.world.facts if f.id in asked - unseen]


SCHEMAS = {("narration", "default_schema"): init_schema(Narration)}
