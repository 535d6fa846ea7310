"""What the model said when it was not usable, in words that can be shown to the user or fed back to the model."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": text}


class BadOutput(Exception):
    """The reply did not fit what was asked (schema mismatch, refusal, cut off); `raw` is its text if known."""

    def __init__(self, problem: str, raw: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.raw = raw


def describe_validation_error(exc: ValidationError, limit: int = 12) -> str:
    """A compact `field.path: message` list, short enough to send back to the model."""
    errors = exc.errors()
    lines = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors[:limit]]
    more = f"; and {len(errors) - limit} more" if len(errors) > limit else ""
    return "output does not match the schema: " + "; ".join(lines) + more


def schema_problem(schema: type[BaseModel], text: str | None) -> str:
    """Why `text` does not parse as `schema` (used where an SDK only says 'not parsed')."""
    if not text:
        return "the reply was empty"
    try:
        schema.model_validate_json(text)
    except ValidationError as exc:
        return describe_validation_error(exc)
    return "the SDK returned no parsed output"
