"""The LLM judge through the real OpenAI and Gemini clients, against the local stub server."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_stub_server import StubLLMServer
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.judge import judge_from_config
from moshi_knowledge.llm.connection import Connection

PROVIDERS = ["openai", "gemini"]
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}


@pytest.fixture(scope="module")
def stub():
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def server(stub: StubLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StubLLMServer:
    stub.reset()
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    for name in KEY_VARIABLE.values():
        monkeypatch.setenv(name, "test-key")
    return stub


def _judge(server: StubLLMServer, provider: str, cache_dir: Path | None = None):
    base_url = server.openai_base_url if provider == "openai" else server.gemini_base_url
    cfg = EvalConfig(judge=provider, judge_model="judge-model",
                     judge_connection=Connection(base_url=base_url, timeout_s=5.0, max_retries=1,
                                                 cache_dir=str(cache_dir) if cache_dir else None))
    return judge_from_config(cfg)


def _prompt_text(server: StubLLMServer, provider: str) -> str:
    body = server.received[-1].body
    if provider == "openai":
        return body["messages"][-1]["content"]
    return body["contents"][-1]["parts"][0]["text"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_judge_asks_with_the_reference_and_reads_the_verdict(server: StubLLMServer, provider: str,
                                                             tmp_path: Path) -> None:
    judge = _judge(server, provider, tmp_path / "cache")
    server.push('{"correct": true}', '{"correct": false}')
    assert judge("Who founded Dralond?", "Father Vukru", ["Vukru"], "it was vukru who did") is True
    prompt = _prompt_text(server, provider)
    assert "Who founded Dralond?" in prompt and "Father Vukru" in prompt and "it was vukru who did" in prompt
    assert judge("Who founded Dralond?", "Father Vukru", ["Vukru"], "Queen Engigel") is False
    assert server.count == 2
    # the same question and answer again: answered from the cache, no request
    assert judge("Who founded Dralond?", "Father Vukru", ["Vukru"], "it was vukru who did") is True
    assert server.count == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_empty_answers_are_wrong_without_a_request_and_bad_replies_unjudged(server: StubLLMServer,
                                                                            provider: str) -> None:
    judge = _judge(server, provider)
    assert judge("Who?", "Vukru", [], "   ") is False
    assert server.count == 0
    server.push('{"verdict": "yes"}')
    assert judge("Who?", "Vukru", [], "Vukru") is None
    assert server.count == 1


def test_no_judge_when_off() -> None:
    assert judge_from_config(EvalConfig()) is None
