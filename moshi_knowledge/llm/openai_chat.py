"""OpenAI (and OpenAI-compatible servers such as vLLM) through the official client's chat completions.

Structured output uses `chat.completions.parse`, which sends the pydantic schema as a strict JSON schema
and validates the reply; its own retries are off (see retry.py).
"""

from __future__ import annotations

from typing import Any

import openai
from pydantic import BaseModel, ValidationError

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.output import BadOutput, Message, describe_validation_error

_TRANSIENT_STATUS = {408, 409, 429}


class OpenAIChat:
    def __init__(self, api_key: str, base_url: str | None, timeout_s: float) -> None:
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self._timeout_s = timeout_s

    def send(
        self, model: str, temperature: float | None, messages: list[Message], schema: type[BaseModel] | None
    ) -> tuple[str, BaseModel | None]:
        args: dict[str, Any] = {"model": model, "messages": messages}
        if temperature is not None:
            args["temperature"] = temperature
        if schema is None:
            text = self._client.chat.completions.create(**args).choices[0].message.content
            if not text or not text.strip():
                raise BadOutput("the reply was empty", raw=text)
            return text, None
        try:
            message = self._client.chat.completions.parse(**args, response_format=schema).choices[0].message
        except ValidationError as exc:
            raise BadOutput(describe_validation_error(exc)) from exc
        except openai.LengthFinishReasonError as exc:
            raise BadOutput("the reply was cut off at the model's output-token limit") from exc
        if message.refusal:
            raise BadOutput(f"the model refused: {message.refusal}", raw=message.content)
        if message.parsed is None or message.content is None:
            raise BadOutput("the reply had no parsed content", raw=message.content)
        return message.content, message.parsed

    def transient(self, exc: BaseException) -> str | None:
        if isinstance(exc, openai.APITimeoutError):
            return f"no answer within timeout_s={self._timeout_s}"
        if isinstance(exc, openai.APIConnectionError):
            return f"connection failed ({exc})"
        if isinstance(exc, openai.APIStatusError) and (exc.status_code in _TRANSIENT_STATUS or exc.status_code >= 500):
            return f"HTTP {exc.status_code}"
        return None

    def fatal(self, exc: BaseException, label: str, model_key: str, connection_key: str) -> UserError | None:
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return UserError(f"{label}: the server rejected the key in OPENAI_API_KEY (HTTP {exc.status_code})",
                             f"check the key and that it may use {model_key}")
        if isinstance(exc, openai.APIStatusError):
            return UserError(f"{label}: the server refused the request (HTTP {exc.status_code}): {exc.message}",
                             f"check {model_key} and {connection_key}.base_url")
        return None
