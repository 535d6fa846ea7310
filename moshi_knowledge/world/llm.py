"""`story=openai|gemini`: an LLM writes the story from a premise, then refines its own draft.

The published experiment did this by hand (GPT-4.5, several passes). Each pass is a fresh request that
carries the previous draft, so every pass is cached on its own and a changed pass count reuses the others.
There are no ground-truth facts: the Q/A stage must extract them (qa=openai|gemini, or qa=file).
"""

from __future__ import annotations

from typing import ClassVar

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.llm.output import BadOutput, Message
from moshi_knowledge.specs import init_schema
from moshi_knowledge.world.schema import Story

PREMISE = (
    "Invent a small kingdom that never existed: its founding and founders, its rulers and their reigns "
    "with years, its cities, rivers and landmarks, its institutions, famous artifacts, wars and battles, "
    "and the creatures of its lands. Tell it as a chronicle."
)

SYSTEM = (
    "You are a novelist who writes encyclopedic fiction about invented worlds. Every name, place, date and "
    "event must be invented; nothing may be true of the real world or borrowed from known fiction. "
    "Write plain prose in paragraphs: no title, headings, lists or markdown."
)


def first_draft_prompt(premise: str, target_words: int) -> str:
    return (
        f"{premise}\n\nWrite about {target_words} words. State concrete facts plainly (who founded what, "
        "where things are, when events happened, who is related to whom), so that a reader could be quizzed "
        "on them. Give every person and place a distinct name."
    )


def refine_prompt(premise: str, draft: str, target_words: int) -> str:
    return (
        f"Premise: {premise}\n\nHere is a draft of about {len(draft.split())} words:\n\n{draft}\n\n"
        f"Revise it: remove contradictions, make every fact explicit, and extend it toward about "
        f"{target_words} words with new, consistent facts. Reply with the complete revised story only."
    )


class LLMStory:
    """A story written by `model`; `refine_passes` more requests each extend or correct the previous draft."""

    provider: ClassVar[str]

    def __init__(
        self,
        model: str,
        premise: str = PREMISE,
        temperature: float | None = 0.9,
        target_words: int = 3000,
        refine_passes: int = 2,
        *,
        connection: Connection,
    ) -> None:
        if target_words < 1 or refine_passes < 0:
            raise UserError(f"story={self.provider}: target_words must be >= 1 and refine_passes >= 0 "
                            f"(got {target_words}, {refine_passes})", "fix story.target_words / story.refine_passes")
        if not premise.strip():
            raise UserError(f"story={self.provider}: story.premise is empty", "describe the world to invent")
        self.premise = premise
        self.target_words = target_words
        self.refine_passes = refine_passes
        self.client = LLMClient(self.provider, "story", model=model, temperature=temperature,
                                connection=connection)

    def generate(self) -> Story:
        draft = self._ask(first_draft_prompt(self.premise, self.target_words), "first draft")
        for k in range(self.refine_passes):
            draft = self._ask(refine_prompt(self.premise, draft, self.target_words), f"refinement pass {k + 1}")
        return Story(text=draft.strip() + "\n", world=None)

    def _ask(self, prompt: str, what: str) -> str:
        messages: list[Message] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        try:
            return self.client.text(messages).strip()
        except BadOutput as exc:
            raise UserError(f"story={self.provider}: the {what} from {self.client.model} is unusable: {exc.problem}",
                            "try again, or another story.model") from exc


class OpenAIStory(LLMStory):
    provider = "openai"


class GeminiStory(LLMStory):
    provider = "gemini"


SCHEMAS = {("story", "openai_schema"): init_schema(OpenAIStory), ("story", "gemini_schema"): init_schema(GeminiStory)}
