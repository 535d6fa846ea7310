"""Gemini through google-genai's `models.generate_content`.

Structured output passes the pydantic class as `response_schema`. The SDK does not raise when the reply
does not fit: it sets `.parsed` to None, so that is checked explicitly. The client object is kept on the
instance because a temporary one is closed (and its HTTP session with it) while the call is still running.
"""

from __future__ import annotations

import importlib
import importlib.util

from google import genai
from google.genai import errors, types
from pydantic import BaseModel

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.output import BadOutput, Message, schema_problem

_TRANSIENT_STATUS = {408, 429}
# google-genai sends through httpx or its fork httpx2, whichever is installed; both raise TransportError.
_TRANSPORT_ERRORS = tuple(
    module.TransportError
    for module in (importlib.import_module(name) for name in ("httpx", "httpx2") if importlib.util.find_spec(name))
)


def _contents(messages: list[Message]) -> tuple[str | None, list[types.Content]]:
    """Gemini takes the system prompt apart from the turns, and calls the assistant 'model'."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    turns = [
        types.Content(role="model" if m["role"] == "assistant" else "user", parts=[types.Part(text=m["content"])])
        for m in messages
        if m["role"] != "system"
    ]
    return system, turns


class GeminiChat:
    def __init__(self, api_key: str, base_url: str | None, timeout_s: float) -> None:
        options = types.HttpOptions(base_url=base_url, timeout=int(timeout_s * 1000))
        self._client = genai.Client(api_key=api_key, http_options=options)
        self._timeout_s = timeout_s

    def send(
        self, model: str, temperature: float | None, messages: list[Message], schema: type[BaseModel] | None
    ) -> tuple[str, BaseModel | None]:
        system, turns = _contents(messages)
        config = types.GenerateContentConfig(
            system_instruction=system,
            temperature=temperature,
            response_mime_type="application/json" if schema else None,
            response_schema=schema,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),  # no tools here
        )
        response = self._client.models.generate_content(model=model, contents=turns, config=config)
        text = response.text
        finish = response.candidates[0].finish_reason if response.candidates else None
        if finish == types.FinishReason.MAX_TOKENS:
            raise BadOutput("the reply was cut off at the model's output-token limit", raw=text)
        if not text or not text.strip():
            raise BadOutput(f"the reply was empty (finish reason {finish})", raw=text)
        if schema is None:
            return text, None
        if response.parsed is None:
            raise BadOutput(schema_problem(schema, text), raw=text)
        return text, response.parsed

    def transient(self, exc: BaseException) -> str | None:
        if isinstance(exc, errors.APIError) and (exc.code in _TRANSIENT_STATUS or exc.code >= 500):
            return f"HTTP {exc.code} {exc.status or ''}".strip()
        if isinstance(exc, _TRANSPORT_ERRORS):
            return f"{type(exc).__name__} (timeout_s={self._timeout_s})"
        return None

    def fatal(self, exc: BaseException, label: str, model_key: str, connection_key: str) -> UserError | None:
        if isinstance(exc, errors.APIError) and (exc.code in (401, 403) or "API key" in (exc.message or "")):
            return UserError(f"{label}: the server rejected the key from GEMINI_API_KEY / GOOGLE_API_KEY "
                             f"(HTTP {exc.code}): {exc.message}", f"check the key and that it may use {model_key}")
        if isinstance(exc, errors.APIError):
            return UserError(f"{label}: the server refused the request (HTTP {exc.code}): {exc.message}",
                             f"check {model_key} and {connection_key}.base_url")
        return None
