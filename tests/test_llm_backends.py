"""story=openai|gemini and qa=openai|gemini against a real local HTTP server speaking both wire formats.

The real `openai` and `google-genai` clients talk to tests/llm_stub_server.py through `base_url`; the
server answers from a script and records what it received. Nothing of ours is patched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra.utils import instantiate

from llm_stub_server import Reply, StubLLMServer
from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.qa.llm import (
    EvalQuestionOut,
    EvalQuestionsOut,
    GeminiQA,
    OpenAIQA,
    TrainPairOut,
    TrainPairsOut,
    eval_problems,
    train_items,
    train_problems,
)
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.world.llm import GeminiStory, OpenAIStory
from moshi_knowledge.world.schema import Story

CANARY = {"openai": "sk-canary-7f3a9d0c", "gemini": "gm-canary-51be22aa"}
KEY_VARIABLE = {"openai": "OPENAI_API_KEY", "gemini": "GEMINI_API_KEY"}
STORY_CLASS = {"openai": OpenAIStory, "gemini": GeminiStory}
QA_CLASS = {"openai": OpenAIQA, "gemini": GeminiQA}
PROVIDERS = ["openai", "gemini"]

STORY = Story(text=(
    "The kingdom of Valdmere was founded in 1204 by Queen Orsolya Venn.\n"
    "Its capital, Kest, lies on the river Amberlight. The Order of the Grey Lantern keeps the\n"
    "royal archive in Kest, and its first keeper was Brother Tamsin Oake."
))
# (question, three rewordings, answer, type, quote as the model might copy it, distractors)
FACTS = [
    ("Who founded Valdmere?", ["Who was the founder of Valdmere?", "Valdmere was founded by whom?",
                               "Which queen founded Valdmere?"],
     "Queen Orsolya Venn", "person", "founded in 1204 by Queen  Orsolya Venn", ["King Edric Moll", "Lady Ysa Fenn",
                                                                               "Duke Harl Grenn"]),
    ("On which river does Kest lie?", ["Which river runs through Kest?", "Kest lies on what river?",
                                       "What river is Kest built on?"],
     "the Amberlight", "river", "Its capital, Kest, lies on\nthe river Amberlight", ["the Silverrun", "the Morrow",
                                                                                   "the Coldwater"]),
    ("Who was the first keeper of the Grey Lantern's archive?", ["Who first kept the Grey Lantern's archive?",
                                                                 "Name the first archive keeper of the Order.",
                                                                 "Who was the Order's first keeper?"],
     "Brother Tamsin Oake", "person", "ITS FIRST KEEPER WAS BROTHER TAMSIN OAKE", ["Sister Mara Vell",
                                                                                 "Brother Aldo Penn",
                                                                                 "Father Ivo Strand"]),
]
N_TRAIN, PARAPHRASES, N_EVAL = 3, 2, 2


def train_reply(quote_override: str | None = None) -> str:
    pairs = [TrainPairOut(question=q, paraphrases=p, answer=a, aliases=[], answer_type=t,
                          quote=quote_override or quote, distractors=d)
             for q, p, a, t, quote, d in FACTS]
    return TrainPairsOut(pairs=pairs).model_dump_json()


def eval_reply(relies_on: tuple[str, ...] = ("t001", "t002")) -> str:
    questions = [
        EvalQuestionOut(question="On which river is the capital of the kingdom Queen Orsolya Venn founded?",
                        answer="the Amberlight", aliases=["Amberlight", "Amberlight River"], answer_type="river",
                        distractors=["the Silverrun", "the Morrow", "the Coldwater"], relies_on=list(relies_on)),
        EvalQuestionOut(question="In which city did Brother Tamsin Oake keep the archive?", answer="Kest",
                        aliases=[], answer_type="place", distractors=["Varn", "Holt", "Brisk"],
                        relies_on=["t002", "t003"]),
    ]
    return EvalQuestionsOut(questions=questions).model_dump_json()


@pytest.fixture(scope="module")
def stub():
    with StubLLMServer() as server:
        yield server


@pytest.fixture
def server(stub: StubLLMServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StubLLMServer:
    """A fresh script, canary keys in the environment, no proxy, and a cwd without a stray .env."""
    stub.reset()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for name in ("GOOGLE_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)
    for provider, name in KEY_VARIABLE.items():
        monkeypatch.setenv(name, CANARY[provider])
    return stub


def settings(server: StubLLMServer, provider: str, cache_dir: Path | None = None, **extra) -> dict:
    """Constructor arguments; `extra` may set the connection's fields too (timeout_s=..., max_retries=...)."""
    base_url = server.openai_base_url if provider == "openai" else server.gemini_base_url
    connection = {"base_url": base_url, "timeout_s": 5.0, "max_retries": 3, "backoff_s": 0.001,
                  "cache_dir": str(cache_dir) if cache_dir else None}
    connection |= {k: extra.pop(k) for k in list(extra) if k in connection}
    return {"model": f"{provider}-test-model", "connection": Connection(**connection), **extra}


def make_story(server: StubLLMServer, provider: str, **extra):
    kwargs = {"premise": "Invent a kingdom.", "target_words": 50, "refine_passes": 1, **extra}
    return STORY_CLASS[provider](**settings(server, provider, **kwargs))


def make_qa(server: StubLLMServer, provider: str, **extra):
    kwargs = {"n_train": N_TRAIN, "paraphrases": PARAPHRASES, "n_eval": N_EVAL, "max_attempts": 3, **extra}
    return QA_CLASS[provider](**settings(server, provider, **kwargs))


def last_user_text(server: StubLLMServer, provider: str, index: int = -1) -> str:
    body = server.received[index].body
    if provider == "openai":
        return body["messages"][-1]["content"]
    return body["contents"][-1]["parts"][0]["text"]


# ---- story ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_story_writes_then_refines_the_draft(server: StubLLMServer, provider: str) -> None:
    server.push("Valdmere was founded in 1204.", "Valdmere was founded in 1204 by Queen Orsolya Venn.")
    story = make_story(server, provider, temperature=0.7).generate()
    assert story.text == "Valdmere was founded in 1204 by Queen Orsolya Venn.\n"
    assert story.world is None
    assert server.count == 2
    assert "Valdmere was founded in 1204." in last_user_text(server, provider)  # the pass revises the draft
    first = server.received[0]
    if provider == "openai":
        assert first.path == "/v1/chat/completions"
        assert first.headers["authorization"] == f"Bearer {CANARY['openai']}"
        assert first.body["model"] == "openai-test-model" and first.body["temperature"] == 0.7
    else:
        assert first.path.endswith("/models/gemini-test-model:generateContent")
        assert first.headers["x-goog-api-key"] == CANARY["gemini"]
        assert first.body["generationConfig"]["temperature"] == 0.7
        assert "novelist" in first.body["systemInstruction"]["parts"][0]["text"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_and_server_error_are_retried(server: StubLLMServer, provider: str) -> None:
    server.push(Reply.error(429), Reply.error(503), "A chronicle of Valdmere.")
    story = make_story(server, provider, refine_passes=0).generate()
    assert story.text == "A chronicle of Valdmere.\n"
    assert server.count == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retries_give_up_with_a_clear_error(server: StubLLMServer, provider: str) -> None:
    server.push(*[Reply.error(429)] * 3)
    with pytest.raises(UserError, match=r"gave up after 2 retries; last failure: HTTP 429") as info:
        make_story(server, provider, refine_passes=0, max_retries=2).generate()
    assert "story.connection.max_retries" in info.value.fix
    assert server.count == 3  # the SDK's own retries are off: exactly 1 + max_retries requests


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_slow_reply_times_out_and_is_retried(server: StubLLMServer, provider: str) -> None:
    server.push(Reply("too late", delay_s=1.5), "On time.")
    story = make_story(server, provider, refine_passes=0, timeout_s=0.3).generate()
    assert story.text == "On time.\n"
    assert server.count == 2


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refused_request_is_not_retried(server: StubLLMServer, provider: str) -> None:
    server.push(Reply("model not found", status=404))
    with pytest.raises(UserError, match=r"refused the request \(HTTP 404\)") as info:
        make_story(server, provider, refine_passes=0).generate()
    assert "story.model" in info.value.fix
    assert server.count == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_missing_key_names_the_variable(server: StubLLMServer, provider: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_VARIABLE[provider])
    with pytest.raises(UserError, match=KEY_VARIABLE[provider]) as info:
        make_story(server, provider).generate()
    assert ".env" in info.value.fix
    assert server.count == 0


@pytest.mark.parametrize("line", ["export OPENAI_API_KEY='sk-from-dotenv'",
                                  'OPENAI_API_KEY="sk-from-dotenv"  # my key',
                                  "OPENAI_API_KEY=sk-from-dotenv # my key"])
def test_key_is_read_from_dotenv_in_the_working_directory(server: StubLLMServer, monkeypatch: pytest.MonkeyPatch,
                                                          line: str) -> None:
    """Quotes, `export` and trailing comments are the shell's, not part of the key."""
    monkeypatch.delenv("OPENAI_API_KEY")
    Path(".env").write_text(f"# keys\n{line}\n", encoding="utf-8")
    server.push("A short tale.")
    make_story(server, "openai", refine_passes=0).generate()
    assert server.received[0].headers["authorization"] == "Bearer sk-from-dotenv"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cache_hit_makes_no_request_and_needs_no_key(server: StubLLMServer, provider: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "llm-cache"
    server.push("Draft one.", "Draft two.")
    first = make_story(server, provider, cache_dir=cache).generate()
    assert server.count == 2
    monkeypatch.delenv(KEY_VARIABLE[provider])  # a fully cached rerun is offline
    again = make_story(server, provider, cache_dir=cache).generate()
    assert again.text == first.text and server.count == 2
    server.push("Another draft.")
    make_story(server, provider, cache_dir=cache, temperature=0.1, refine_passes=0)  # built, not run: no request
    assert server.count == 2
    with pytest.raises(UserError, match=KEY_VARIABLE[provider]):  # a changed request is not a hit
        make_story(server, provider, cache_dir=cache, temperature=0.1, refine_passes=0).generate()


# ---- qa ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_qa_builds_all_tiers_with_structured_output(server: StubLLMServer, provider: str, tmp_path: Path) -> None:
    server.push(train_reply(), eval_reply())
    qa = make_qa(server, provider).build(STORY)
    assert [q.id for q in qa.train] == ["t001", "t002", "t003"]
    first = qa.train[0]
    assert first.phrasings == ["Who founded Valdmere?", *FACTS[0][1][:PARAPHRASES]]
    assert first.answer == "Queen Orsolya Venn" and len(first.distractors) == 3 and first.answer_type == "person"
    assert [(p.source_id, p.question) for p in qa.paraphrase] == [(f"t00{i + 1}", f[1][-1]) for i, f in
                                                                  enumerate(FACTS)]
    assert [q.fact_ids for q in qa.eval] == [["t001", "t002"], ["t002", "t003"]]
    assert qa.eval[0].aliases == ["Amberlight River"]  # "Amberlight" is the answer itself, minus "the"
    qa.save(tmp_path)
    assert QASet.load(tmp_path) == qa
    train_request, eval_request = (r.body for r in server.received)
    if provider == "openai":
        schema = train_request["response_format"]["json_schema"]
        assert schema["strict"] is True and "pairs" in schema["schema"]["properties"]
    else:
        assert train_request["generationConfig"]["responseMimeType"] == "application/json"
        assert "pairs" in train_request["generationConfig"]["responseSchema"]["properties"]
    assert "t003: Who was the first keeper" in json.dumps(eval_request)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_schema_invalid_reply_is_asked_again(server: StubLLMServer, provider: str) -> None:
    server.push('{"pairs": [{"question": "Who?"}]}', train_reply(), eval_reply())
    qa = make_qa(server, provider).build(STORY)
    assert len(qa.train) == N_TRAIN and server.count == 3
    retry = last_user_text(server, provider, index=1)
    assert "rejected" in retry and "pairs.0.answer" in retry  # the model is told what was wrong


@pytest.mark.parametrize("provider", PROVIDERS)
def test_quote_not_in_story_is_asked_again(server: StubLLMServer, provider: str) -> None:
    server.push(train_reply(quote_override="founded by King Brannoc"), train_reply(), eval_reply())
    qa = make_qa(server, provider).build(STORY)
    assert qa.train[0].quote == FACTS[0][4]
    retry = server.received[1].body
    assert "not copied word for word" in last_user_text(server, provider, index=1)
    turns = retry["messages"] if provider == "openai" else retry["contents"]
    assert len(turns) == (4 if provider == "openai" else 3)  # [system,] task, rejected reply, feedback


@pytest.mark.parametrize("provider", PROVIDERS)
def test_always_invalid_fails_after_max_attempts(server: StubLLMServer, provider: str) -> None:
    server.push(train_reply(), eval_reply(relies_on=("t001", "t999")), eval_reply(relies_on=("t999",)))
    with pytest.raises(UserError, match=r"eval questions .* failed validation 2 times") as info:
        make_qa(server, provider, max_attempts=2).build(STORY)
    assert "'t999'" in str(info.value) and "qa.max_attempts" in info.value.fix
    assert server.count == 3


def test_eval_model_is_used_for_eval_questions(server: StubLLMServer) -> None:
    server.push(train_reply(), eval_reply())
    make_qa(server, "gemini", eval_model="gemini-strong").build(STORY)
    assert [r.path.rsplit("/", 1)[1] for r in server.received] == [
        "gemini-test-model:generateContent", "gemini-strong:generateContent"]


# ---- validation rules, on replies written here ------------------------------------------------------------


def _pairs() -> TrainPairsOut:
    return TrainPairsOut.model_validate_json(train_reply())


def test_train_checks_count_phrasings_distractors_and_duplicates() -> None:
    assert train_problems(_pairs(), STORY.text, N_TRAIN, PARAPHRASES) == []
    assert train_problems(_pairs(), STORY.text, 4, PARAPHRASES) == ["3 pairs given, 4 required"]
    assert any("4 required" in p for p in train_problems(_pairs(), STORY.text, N_TRAIN, 3))
    bad = _pairs()
    bad.pairs[1].paraphrases[0] = "on which river does KEST lie"  # same question up to case and punctuation
    bad.pairs[2].distractors = ["Brother Tamsin Oake", "x", "y"]
    bad.pairs[0].distractors = ["a", "a", "b"]
    bad.pairs[2].question = "Who founded Valdmere"
    problems = train_problems(bad, STORY.text, N_TRAIN, PARAPHRASES)
    assert any(p.startswith("pair 2") and "all different" in p for p in problems)
    assert any(p.startswith("pair 3") and "equals the answer" in p for p in problems)
    assert any(p.startswith("pair 1") and "different from each other" in p for p in problems)
    assert any(p.startswith("pair 3") and "repeats a question of pair 1" in p for p in problems)


def test_eval_checks_ids_and_duplicates() -> None:
    train, held_out = train_items(_pairs(), N_TRAIN, PARAPHRASES)
    good = EvalQuestionsOut.model_validate_json(eval_reply())
    assert eval_problems(good, train, held_out, N_EVAL) == []
    assert eval_problems(good, train, held_out, 3) == ["2 questions given, 3 required"]
    bad = EvalQuestionsOut.model_validate_json(eval_reply())
    bad.questions[0].question = FACTS[1][1][2]  # the held-out paraphrase of t002
    bad.questions[1].relies_on = []
    problems = eval_problems(bad, train, held_out, N_EVAL)
    assert problems == [
        f"eval question 1 ({FACTS[1][1][2]!r}): duplicates training question t002",
        "eval question 2 ('In which city did Brother Tamsin Oake keep the archive?'): relies_on is empty; "
        "list the training ids it follows from",
    ]


# ---- secrets -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_canary_key_never_reaches_a_file_or_log(server: StubLLMServer, provider: str, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "llm"
    server.push(Reply.error(429), "Draft.", "Final story.", '{"pairs": []}', train_reply(), eval_reply())
    story = make_story(server, provider, cache_dir=cache).generate()
    qa = make_qa(server, provider, cache_dir=cache).build(STORY)
    run_dir = tmp_path / "run"
    story.save(run_dir)
    qa.save(run_dir)
    assert all(r.headers.get("authorization", r.headers.get("x-goog-api-key", "")).endswith(CANARY[provider])
               for r in server.received)  # the key was really used
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(list(cache.rglob("*.json"))) == 5  # 2 story passes + 2 train attempts + 1 eval
    for path in written:
        assert CANARY[provider].encode() not in path.read_bytes(), path
    assert CANARY[provider] not in caplog.text


def test_configs_compose_and_build_without_network(server: StubLLMServer, tmp_path: Path) -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(["story=openai", "qa=gemini", f"paths.cache_dir={tmp_path}"])
    assert cfg.qa.connection.cache_dir == cfg.story.connection.cache_dir == f"{tmp_path}/llm"
    story, qa = instantiate(cfg.story), instantiate(cfg.qa)
    assert isinstance(story, OpenAIStory) and isinstance(qa, GeminiQA)
    assert isinstance(story.client.connection, Connection) and story.client.connection.cache_dir == f"{tmp_path}/llm"
    assert qa.eval_model == cfg.qa.eval_model
    cfg = compose_cfg(["story=gemini", "qa=openai"])
    assert isinstance(instantiate(cfg.story), GeminiStory) and isinstance(instantiate(cfg.qa), OpenAIQA)
    assert server.count == 0
    with pytest.raises(Exception, match="api_key"):
        compose_cfg(["story=openai", "story.api_key=sk-nope"])  # there is no config field for a key
