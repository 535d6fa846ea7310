"""Ask until a reply passes its checks: the problems of a rejected reply go back to the model with it.

Shared by every LLM output that must match ground truth (Q/A pairs against the story, narration rewrites against
the facts), so each is checked and re-asked the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.client import LLMClient
from moshi_knowledge.llm.output import BadOutput, Message

MAX_PROBLEMS_SHOWN = 30
log = logging.getLogger(__name__)
Reply = TypeVar("Reply", bound=BaseModel)


def feedback(problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = f"\n(and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
    return (
        "Your reply was rejected:\n" + "\n".join(f"- {p}" for p in shown) + more
        + "\nReply again with the complete corrected JSON: every item, not only the fixed ones."
    )


def ask_until_valid(client: LLMClient, base: list[Message], schema: type[Reply], check: Callable[[Reply], list[str]],
                    *, what: str, max_attempts: int, fix: str, model: str | None = None) -> Reply:
    """Ask; on problems, send them back (with the rejected reply) and ask again, `max_attempts` in all; then a
    UserError that lists the last attempt's problems, with `fix`."""
    messages = base
    problems: list[str] = []
    for attempt in range(1, max_attempts + 1):
        try:
            reply = client.structured(messages, schema, model=model)
            problems, raw = check(reply), reply.model_dump_json()
        except BadOutput as exc:
            problems, raw = [exc.problem], exc.raw
        if not problems:
            return reply
        log.warning("%s: %s attempt %d/%d rejected: %s", client.label, what, attempt, max_attempts,
                    "; ".join(problems[:5]))
        rejected: list[Message] = [{"role": "assistant", "content": raw}] if raw else []
        messages = [*base, *rejected, {"role": "user", "content": feedback(problems)}]
    listed = "\n  - ".join(problems[:MAX_PROBLEMS_SHOWN])
    raise UserError(f"{client.label}: the {what} from {model or client.model} failed validation {max_attempts} "
                    f"times; last attempt's problems:\n  - {listed}", fix)
