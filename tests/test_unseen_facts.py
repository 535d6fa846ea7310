"""The unseen_facts tier on real dataset files: asked and scored like the others, never heard in training."""

from __future__ import annotations

import json
from pathlib import Path

from moshi_knowledge.dataset.format import read_alignments, read_conversations_index
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.questions import AnswerSpeech, load_questions
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, USER_SPEAKER, SpeakerWord
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.prose import label
from moshi_knowledge.world.schema import Story


def _turn_texts(data: Path) -> list[tuple[str, str, str]]:
    """(split, what the user says, what Moshi answers) of every turn of every conversation, from its alignment."""
    out = []
    for conv in read_conversations_index(data / "conversations.json"):
        words = read_alignments((data / conv.path).with_suffix(".json"))
        for turn in conv.turns:
            said = _said(words, USER_SPEAKER, turn.question), _said(words, MOSHI_SPEAKER, turn.answer)
            out.append((conv.split, *said))
    return out


def _said(words: list[SpeakerWord], speaker: str, span: tuple[float, float]) -> str:
    return normalise(" ".join(w.word for w in words if w.speaker == speaker and span[0] <= w.start <= span[1]))


def test_no_conversation_holds_an_unseen_question_or_pairs_its_subject_with_its_answer(small_data_run) -> None:
    _, run_dir, _ = small_data_run
    data = run_dir / "dataset"
    qa = QASet.load(run_dir / "qa")
    world = Story.load(run_dir / "story").world
    facts = {f.id: f for f in world.facts}
    assert len(qa.unseen_facts) == 4
    turns = _turn_texts(data)
    assert {split for split, _, _ in turns} == {"train", "eval"} and all(q and a for _, q, a in turns)
    indexed = {t.qid for c in read_conversations_index(data / "conversations.json") for t in c.turns}
    assert not indexed & {q.id for q in qa.unseen_facts}
    for item in qa.unseen_facts:
        subject = normalise(label(world.entity(facts[item.fact_ids[0]].subject)))
        for _, question, answer in turns:
            assert normalise(item.question) != question
            assert not (subject in question and normalise(item.answer) == answer), (item.id, question, answer)


def test_unseen_questions_have_audio_and_speech_for_every_candidate(small_data_run) -> None:
    _, run_dir, _ = small_data_run
    data = run_dir / "dataset"
    entries = [e for e in json.loads((data / "questions.json").read_text())["questions"] if e["tier"] == "unseen_facts"]
    assert len(entries) == 4 and all((data / e["audio"]).stat().st_size > 1000 for e in entries)
    assert all(e["relation"] and "untrained_candidates" in e for e in entries)
    unseen = [q for q in load_questions(data, EvalConfig().tiers) if q.tier == "unseen_facts"]
    speech = AnswerSpeech(run_dir / "tts")  # every candidate spoken by the tts stage
    assert len(unseen) == 4 and all(speech(c).samples.size > 0 for q in unseen for c in q.candidates)
