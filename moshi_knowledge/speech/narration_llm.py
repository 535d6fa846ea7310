"""narration=openai|gemini: restatements written by an LLM, validated against the facts as Q/A replies are.

Each round after the first asks for one rewrite of every narrated sentence (the story's own sentences for any
story, the fact sentences for qa=facts). A rewrite is rejected, and the problems sent back, when it drops what the
sentence states (`Statement.keep`: the fact's subject and object, or the Q/A answers the sentence gives), repeats
the sentence or an earlier rewrite, or turns into a question. Replies are cached like every LLM reply, so a rerun
(and the dataset stage, which lays out the same sentences) sends nothing.
"""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import BaseModel, Field

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.llm.output import Message
from moshi_knowledge.llm.validated import ask_until_valid
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.narration import Narration, Statement
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.schema import Story

SYSTEM = ("You rewrite the sentences of a story for a narrator who reads them aloud. Keep every fact of each "
          "sentence and every name exactly as written; change only the wording and the order of its parts.")


class RewritesOut(BaseModel):
    rewrites: list[str] = Field(description="one rewrite per numbered sentence, in the same order")


def rewrite_prompt(statements: list[Statement]) -> str:
    numbered = "\n".join(f"{i + 1}. {s.text}" for i, s in enumerate(statements))
    return (f"Rewrite each of these {len(statements)} sentences once, as a new sentence that states the same fact "
            f"in other words. Return JSON {{\"rewrites\": [...]}} with exactly {len(statements)} strings.\n\n"
            f"{numbered}")


def rewrite_problems(reply: RewritesOut, statements: list[Statement], earlier: list[list[str]]) -> list[str]:
    """What is wrong with a round of rewrites, each problem naming its sentence."""
    if len(reply.rewrites) != len(statements):
        return [f"expected {len(statements)} rewrites, got {len(reply.rewrites)}"]
    problems = []
    for i, (text, statement, before) in enumerate(zip(reply.rewrites, statements, earlier)):
        said = normalise(text)
        lost = [k for k in statement.keep if normalise(k) not in said]
        if lost:
            problems.append(f"sentence {i + 1}: the rewrite drops {', '.join(repr(k) for k in lost)}")
        if said in {normalise(t) for t in before}:
            problems.append(f"sentence {i + 1}: the rewrite repeats the sentence or an earlier rewrite")
        if "?" in text or not said:
            problems.append(f"sentence {i + 1}: a rewrite must be a non-empty statement, not a question")
    return problems


class LLMNarration(Narration):
    """Restatements 2..n from an LLM (the first is the story's own sentence), asked one round at a time."""

    provider: ClassVar[str]
    max_restatements: ClassVar[int] = 5

    def __init__(self, seed: int, model: str, restatements: int = 2, shuffle: bool = False,
                 temperature: float | None = 0.7, max_attempts: int = 3, *, connection: Connection) -> None:
        super().__init__(seed, restatements, shuffle)
        if max_attempts < 1:
            raise UserError(f"narration.max_attempts={max_attempts} must be >= 1", "set it to 1 or more")
        self.max_attempts = max_attempts
        self.client = LLMClient(self.provider, "narration", model=model, temperature=temperature,
                                connection=connection)

    def _restate(self, statements: list[Statement], story: Story, rng: random.Random) -> list[list[str]]:
        texts = [[s.text] for s in statements]
        for k in range(1, self.restatements):
            base: list[Message] = [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": rewrite_prompt(statements)}]
            if k > 1:  # a later round is its own request (and cache entry), and must differ from the earlier ones
                base.append({"role": "user", "content": f"This is rewrite round {k}: write new wording again."})
            reply = ask_until_valid(
                self.client, base, RewritesOut, lambda r: rewrite_problems(r, statements, texts),
                what=f"rewrites (round {k + 1})", max_attempts=self.max_attempts,
                fix="raise narration.max_attempts, try a stronger narration.model, or lower narration.restatements")
            for row, text in zip(texts, reply.rewrites):
                row.append(" ".join(text.split()))
        return texts


class OpenAINarration(LLMNarration):
    provider = "openai"


class GeminiNarration(LLMNarration):
    provider = "gemini"


SCHEMAS = {("narration", "openai_schema"): init_schema(OpenAINarration),
           ("narration", "gemini_schema"): init_schema(GeminiNarration)}
