"""One client for OpenAI and Gemini: cache first, then the provider with retries; keys only at call time.

The provider SDK client is built on the first request that misses the cache, so a fully cached rerun
needs neither a key nor a network.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.cache import ResponseCache
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.llm.keys import api_key
from moshi_knowledge.llm.output import BadOutput, Message
from moshi_knowledge.llm.retry import with_retries

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)


class Provider(Protocol):
    def send(self, model: str, temperature: float | None, messages: list[Message],
             schema: type[BaseModel] | None) -> tuple[str, BaseModel | None]: ...

    def transient(self, exc: BaseException) -> str | None: ...

    def fatal(self, exc: BaseException, label: str, model_key: str, connection_key: str) -> UserError | None: ...


def _provider_class(name: str) -> type:
    if name == "openai":
        from moshi_knowledge.llm.openai_chat import OpenAIChat

        return OpenAIChat
    if name == "gemini":
        from moshi_knowledge.llm.gemini_chat import GeminiChat

        return GeminiChat
    raise ValueError(f"unknown LLM provider {name!r}")


class LLMClient:
    """Chat with one model of one provider. `group` ("story", "qa", "eval") labels the log; errors name the settings
    by `model_key` and `connection_key` (default `<group>.model`, `<group>.connection`)."""

    def __init__(
        self,
        provider: str,
        group: str,
        *,
        model: str,
        temperature: float | None,
        connection: Connection,
        model_key: str | None = None,
        connection_key: str | None = None,
    ) -> None:
        self.provider_name = provider
        self.label = f"{group}={provider}"
        self.model_key = model_key or f"{group}.model"
        self.connection_key = connection_key or f"{group}.connection"
        connection.check(self.connection_key)
        self.model = model
        self.temperature = temperature
        self.connection = connection
        self.cache = ResponseCache(connection.cache_dir)
        self._provider: Provider | None = None
        _provider_class(provider)  # an unknown provider fails at construction, not at the first request

    def text(self, messages: list[Message], model: str | None = None) -> str:
        """Free text (a story draft). Raises BadOutput for an empty reply."""
        return self._complete(messages, None, model)[0]

    def structured(self, messages: list[Message], schema: type[M], model: str | None = None) -> M:
        """A reply parsed into `schema`. Raises BadOutput (with the reason) when it does not fit."""
        parsed = self._complete(messages, schema, model)[1]
        assert isinstance(parsed, schema)
        return parsed

    def _complete(
        self, messages: list[Message], schema: type[BaseModel] | None, model: str | None
    ) -> tuple[str, BaseModel | None]:
        model = model or self.model
        request = self._request(messages, schema, model)
        cached = self.cache.get(request)
        if cached is not None:
            log.info("%s: cached reply from %s", self.label, model)
            return cached, schema.model_validate_json(cached) if schema else None
        text, parsed = self._send(messages, schema, model)
        self.cache.put(request, text)  # only replies that fit are cached: a rerun retries the others
        return text, parsed

    def _request(self, messages: list[Message], schema: type[BaseModel] | None, model: str) -> dict[str, Any]:
        """Everything that determines the reply, and nothing secret: this is the cache key."""
        return {
            "provider": self.provider_name,
            "base_url": self.connection.base_url,
            "model": model,
            "temperature": self.temperature,
            "messages": messages,
            "schema": schema.model_json_schema() if schema else None,
        }

    def _send(
        self, messages: list[Message], schema: type[BaseModel] | None, model: str
    ) -> tuple[str, BaseModel | None]:
        provider = self._connect()
        log.info("%s: asking %s (%d messages)", self.label, model, len(messages))
        try:
            return with_retries(
                lambda: provider.send(model, self.temperature, messages, schema),
                provider.transient,
                max_retries=self.connection.max_retries,
                backoff_s=self.connection.backoff_s,
                label=self.label,
                fix=f"try again later, or raise {self.connection_key}.max_retries or {self.connection_key}.timeout_s",
            )
        except (UserError, BadOutput):
            raise
        except Exception as exc:
            error = provider.fatal(exc, self.label, self.model_key, self.connection_key)
            if error is None:
                raise
            raise error from exc

    def _connect(self) -> Provider:
        if self._provider is None:
            key = api_key(self.provider_name, self.label)
            connection = self.connection
            self._provider = _provider_class(self.provider_name)(key, connection.base_url, connection.timeout_s)
        return self._provider
