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

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.schema import Line
from moshi_knowledge.world import prose
from moshi_knowledge.world.schema import Fact, Story

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


_PREFIX = "n-"


def narration_line_id(source: str, k: int) -> str:
    """Line id of restatement `k` of a fact (`source` its id) or of a story sentence (`source` its index)."""
    return f"{_PREFIX}{source}-{k}"


def is_narration_line(line_id: str) -> bool:
    return line_id.startswith(_PREFIX)


class Narration:
    """narration=default: the sentences Moshi says, in the order the narration layouts pack them."""

    def __init__(self, seed: int, restatements: int = 1, shuffle: bool = False) -> None:
        if not 1 <= restatements <= prose.MAX_RESTATEMENTS:
            most = prose.MAX_RESTATEMENTS
            raise UserError(f"narration.restatements={restatements}: every relation has {most} sentence templates",
                            f"set narration.restatements between 1 and {most}")
        self.seed = seed
        self.restatements = restatements
        self.shuffle = shuffle

    def rounds(self, story: Story, qa: QASet) -> list[list[Line]]:
        """Moshi's sentences, one list per round; each round states every narrated fact (or sentence) once."""
        rng = random.Random(f"{self.seed}-narration")
        facts = narrated_facts(story, qa)
        if facts:
            world = story.world
            assert world is not None
            stated = [prose.restatements(f, world.entity(f.subject), world.entity(f.object), self.restatements, rng)
                      for f in facts]
            rounds = [[Line(narration_line_id(f.id, k), texts[k], "moshi") for f, texts in zip(facts, stated)
                       if k < len(texts)] for k in range(self.restatements)]
        else:
            if self.restatements > 1:
                raise UserError(f"narration.restatements={self.restatements}: a story without facts the Q/A asks "
                                "(story=file|openai|gemini, or an LLM's Q/A) has no templates to restate it with",
                                "set narration.restatements=1, or use story=procedural with qa=facts")
            sentences = [s for block in story.text.split("\n\n") for s in _SENTENCE_END.split(block.strip()) if s]
            rounds = [[Line(narration_line_id(f"s{i:04d}", 0), " ".join(s.split()), "moshi")
                       for i, s in enumerate(sentences)]]
        if self.shuffle:
            rounds = [rng.sample(r, len(r)) for r in rounds]
        return rounds


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
