"""Optional LLM judge (`eval.judge=openai|gemini`): is Moshi's generated answer right, given the reference?

String containment misses correct answers phrased differently ("in 1412" for "fourteen twelve") and the
token F1 rewards partial overlap; a judge that sees the question, the reference answer and its aliases
decides semantically. It goes through the shared LLM client, so keys come from the environment at call
time and every verdict is cached: re-evaluating the same generations costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel

from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.llm.output import BadOutput, Message

log = logging.getLogger(__name__)

DEFAULT_MODELS = {"openai": "gpt-4o-mini", "gemini": "gemini-2.0-flash"}

SYSTEM = (
    "You grade answers from a spoken quiz about an invented world. Judge only against the reference answer "
    "given, never against your own knowledge. An answer is correct when it names the same entity, place, "
    "date or value as the reference or one of its accepted aliases, even if worded differently or embedded "
    "in a longer sentence. It is wrong when it is empty, evasive, names something else, or hedges between "
    "several options."
)


class Verdict(BaseModel):
    correct: bool


def judge_prompt(question: str, reference: str, aliases: Sequence[str], answer: str) -> str:
    accepted = ", ".join(aliases) if aliases else "(none)"
    return (f"Question: {question}\nReference answer: {reference}\nAccepted aliases: {accepted}\n"
            f"Answer to grade: {answer}\n\nIs the answer to grade correct?")


class Judge:
    """One verdict per (question, reference, answer); an empty answer is wrong without asking."""

    def __init__(self, provider: str, model: str | None, connection: Connection) -> None:
        self.client = LLMClient(provider, "eval", model=model or DEFAULT_MODELS[provider], temperature=0.0,
                                connection=connection,
                                model_key="eval.judge_model", connection_key="eval.judge_connection")

    def __call__(self, question: str, reference: str, aliases: Sequence[str], answer: str) -> bool | None:
        """True or False, or None when the judge's reply was unusable (counted as unjudged, not as wrong)."""
        if not answer.strip():
            return False
        messages: list[Message] = [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": judge_prompt(question, reference, aliases, answer)}]
        try:
            return self.client.structured(messages, Verdict).correct
        except BadOutput as exc:
            log.warning("eval judge: unusable verdict for %r: %s", question, exc.problem)
            return None


def judge_from_config(cfg: EvalConfig) -> Judge | None:
    """The judge `eval.judge` asks for, or None when it is off."""
    if cfg.judge is None:
        return None
    return Judge(cfg.judge, cfg.judge_model, cfg.judge_connection)
