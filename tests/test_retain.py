"""The retain tier: shipped general-knowledge questions, spoken and scored like the others, never trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_cfg
from moshi_knowledge.dataset.format import read_alignments, read_conversations_index
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.questions import AnswerSpeech, load_questions
from moshi_knowledge.qa.balance import is_balanced
from moshi_knowledge.qa.facts import FactsQA
from moshi_knowledge.qa.file import FileQA
from moshi_knowledge.qa.retain import retain_items
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.stages import run_stages
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.schema import Story


def _retain_entries(dataset: Path) -> list[dict]:
    return [q for q in json.loads((dataset / "questions.json").read_text())["questions"] if q["tier"] == "retain"]


def test_shipped_questions_have_distinct_texts_and_share_counterbalanced_sets() -> None:
    """Questions of one kind share a set of candidates, each the answer of one of them (qa/balance.py): what a
    model knows of capitals in general cannot pick the right one."""
    items = retain_items()
    assert len(items) == 30
    assert len({normalise(q.question) for q in items}) == 30
    assert all(is_balanced(items))
    for q in items:
        gold = {normalise(a) for a in (q.answer, *q.aliases)}
        assert 1 <= len(set(q.distractors)) <= 3 and not gold & {normalise(d) for d in q.distractors}, q.id
        assert q.answer_type != "text", q.id  # each names its kind (city, number, ...), as its distractors share it


def test_the_dataset_asks_every_retain_question_with_audio_and_speech_for_every_candidate(small_data_run) -> None:
    _, run_dir, _ = small_data_run
    entries = _retain_entries(run_dir / "dataset")
    assert [e["text"] for e in entries] == [q.question for q in retain_items()]
    assert all((run_dir / "dataset" / e["audio"]).stat().st_size > 1000 for e in entries)
    questions = load_questions(run_dir / "dataset", EvalConfig().tiers)
    retain = [q for q in questions if q.tier == "retain"]
    assert len(retain) == 30 and all(2 <= len(q.candidates) <= 4 and q.balanced for q in retain)
    speech = AnswerSpeech(run_dir / "tts")  # no TTS backend: every candidate must come from the tts stage
    assert all(speech(c).samples.size > 0 for q in retain for c in q.candidates)


def test_no_training_or_eval_conversation_holds_a_retain_question_or_answer(small_data_run) -> None:
    _, run_dir, _ = small_data_run
    data = run_dir / "dataset"
    retain_ids = {e["id"] for e in _retain_entries(data)}
    conversations = read_conversations_index(data / "conversations.json")
    assert {c.split for c in conversations} == {"train", "eval"}
    assert not {t.qid for c in conversations for t in c.turns} & retain_ids
    questions = [normalise(q.question) for q in retain_items()]
    for conv in conversations:
        said = normalise(" ".join(w.word for w in read_alignments((data / conv.path).with_suffix(".json"))))
        assert said and not [q for q in questions if q in said], conv.path


def test_qa_retain_false_leaves_the_tier_out(story: Story) -> None:
    assert not FactsQA(seed=0, n_train=12, n_eval=4, paraphrases=2, retain=False).build(story).retain
    assert compose_cfg(["qa.retain=false"]).qa.retain is False
    assert len(FactsQA(seed=0, n_train=12, n_eval=4, paraphrases=2).build(story).retain) == 30


def test_qa_file_gets_the_tier_and_a_question_it_already_asks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "train.json"
    pairs = [{"question": f"What is riddle number {i}?", "answer": f"Answer {i}"} for i in range(4)]
    path.write_text(json.dumps(pairs))
    qa = FileQA(str(path), n_eval=1).build(Story(text="unused", world=None))
    assert [q.id for q in qa.retain] == [f"retain-{i:03d}" for i in range(30)]
    assert QASet.model_validate(qa.model_dump()).retain == qa.retain  # qa.json round-trips the tier

    path.write_text(json.dumps([*pairs, {"question": "what is the capital of France", "answer": "Paris"}]))
    with pytest.raises(UserError, match="qa.retain=true.*capital of France") as err:
        FileQA(str(path), n_eval=1).build(Story(text="unused", world=None))
    assert "qa.retain=false" in (err.value.fix or "")
    assert not FileQA(str(path), n_eval=1, retain=False).build(Story(text="unused", world=None)).retain


@pytest.mark.slow
def test_a_qa_file_run_builds_a_dataset_with_the_retain_tier(tmp_path: Path) -> None:
    story, train = tmp_path / "story.txt", tmp_path / "train.json"
    story.write_text("In the valley of Orvane, the river Selt runs past the town of Quillby.\n")
    train.write_text(json.dumps([{"question": f"What is riddle number {i}?", "answer": f"Answer {i}"}
                                 for i in range(5)]))
    cfg = compose_cfg(["stages=[story,qa,tts,dataset]", "logger=none", "story=file", f"story.path={story}",
                       "qa=file", f"qa.train_path={train}", "qa.n_eval=1", f"paths.cache_dir={tmp_path / 'cache'}"])
    run_stages(cfg, tmp_path / "run")
    entries = _retain_entries(tmp_path / "run" / "dataset")
    assert len(entries) == 30 and all((tmp_path / "run" / "dataset" / e["audio"]).is_file() for e in entries)
