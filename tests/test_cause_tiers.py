"""Tiers that change one thing of a trained question: its voice, its wording, or where its audio sits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import compose_cfg
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.evaluation.questions import load_questions
from moshi_knowledge.qa.facts import FactsQA
from moshi_knowledge.qa.schema import CAUSE_TIERS, QASet
from moshi_knowledge.speech.schema import SAMPLE_RATE
from moshi_knowledge.speech.script import question_line_id, question_lines
from moshi_knowledge.world.schema import Story


@pytest.fixture(scope="module")
def qa(story: Story) -> QASet:
    return FactsQA(seed=0, n_per_cause=20, shift_sec=0.4).build(story)


def test_each_cause_tier_asks_trained_facts_with_one_change(qa: QASet) -> None:
    train = {q.id: q for q in qa.train}
    rephrased = {q.source_id: q.question for q in qa.paraphrase}
    for tier in CAUSE_TIERS:
        items = getattr(qa, tier)
        assert len(items) == 20 and len({q.source_id for q in items}) == 20
        for item in items:
            source = train[item.source_id]
            assert (item.answer, item.aliases, item.distractors, item.fact_ids, item.relation) == (
                source.answer, source.aliases, source.distractors, source.fact_ids, source.relation)
            assert item.untrained_candidates == source.untrained_candidates
    for item in qa.unseen_voice:
        assert item.question == train[item.source_id].question and item.shift_sec == 0.0
    for item in qa.unseen_wording:
        assert item.question == rephrased[item.source_id] and item.question not in train[item.source_id].phrasings
    for item in qa.shifted:
        assert item.question == train[item.source_id].question and item.shift_sec == 0.4


def test_voices_held_out_only_where_the_tier_says(qa: QASet) -> None:
    lines = {line.id: line for line in question_lines(qa)}
    for item in qa.unseen_voice:
        assert lines[question_line_id(item.id)].role == "heldout"
    for item in qa.unseen_wording:
        line, source = lines[question_line_id(item.id)], lines[question_line_id(item.source_id)]
        assert (line.role, line.voice_index) == ("user", source.voice_index)
    assert not {question_line_id(q.id) for q in qa.shifted} & set(lines)  # it plays the trained recording


def test_the_shifted_question_is_the_trained_speech_after_silence(small_data_run) -> None:
    _, run_dir, _ = small_data_run
    data = run_dir / "dataset"
    entries = json.loads((data / "questions.json").read_text())["questions"]
    assert {e["tier"] for e in entries} >= set(CAUSE_TIERS)
    questions = {q.id: q for q in load_questions(data, EvalConfig().tiers)}
    shifted = [q for q in questions.values() if q.tier == "shifted"]
    assert len(shifted) == 3
    for q in shifted:
        source = questions[q.source_id].samples()
        shift = round(0.4 * SAMPLE_RATE)
        assert np.abs(source).max() > 0.05 and q.samples().shape == (shift + len(source),)
        assert not q.samples()[:shift].any() and np.array_equal(q.samples()[shift:], source)
    for q in (q for q in questions.values() if q.tier == "unseen_voice"):
        source = questions[q.source_id].samples()
        assert q.text == questions[q.source_id].text
        assert len(q.samples()) != len(source) or not np.array_equal(q.samples(), source)  # another voice


@pytest.mark.parametrize("per_fact", [None, 1, 2])
def test_voices_per_fact_sets_how_many_voices_speak_each_trained_fact(qa: QASet, per_fact: int | None) -> None:
    """`tts.voices_per_fact`: a fact's phrasings rotate through that many voices (null: one per phrasing); each
    tier's first phrasing keeps the voice its other tiers play."""
    lines = {line.id: line for line in question_lines(qa, per_fact)}
    n_voices = 3  # conf/tts/espeak.yaml
    for item in qa.train:
        voices = {lines[question_line_id(item.id, k)].voice_index % n_voices for k in range(len(item.phrasings))}
        expected = len(item.phrasings) if per_fact is None else min(per_fact, len(item.phrasings))
        assert len(voices) == min(expected, n_voices), item.id
    for item in qa.unseen_wording:
        assert lines[question_line_id(item.id)].voice_index == lines[question_line_id(item.source_id)].voice_index
    if per_fact is None:  # the default: each phrasing of each trained fact the next voice in turn
        indices = [lines[question_line_id(i.id, k)].voice_index for i in qa.train for k in range(len(i.phrasings))]
        assert indices == list(range(len(indices)))


def test_voices_per_fact_below_one_is_refused_before_any_stage() -> None:
    from moshi_knowledge.errors import UserError
    from moshi_knowledge.speech.espeak import EspeakTTS

    tts = compose_cfg(["tts.voices_per_fact=0"]).tts
    with pytest.raises(UserError, match="tts.voices_per_fact=0"):
        EspeakTTS(tts.moshi_voice, list(tts.user_voices), tts.heldout_voice, tts.voices_per_fact)
