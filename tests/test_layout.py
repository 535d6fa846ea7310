"""Layouts and the tts aligner on real espeak speech: channel separation, packing, word placement."""

from __future__ import annotations

import numpy as np
import pytest

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.speech.align import TTSAligner
from moshi_knowledge.speech.espeak import EspeakTTS
from moshi_knowledge.speech.layout import DialogueLayout, MonoDuplicateLayout, qa_line_id
from moshi_knowledge.speech.schema import (
    MOSHI_SPEAKER,
    SAMPLE_RATE,
    USER_SPEAKER,
    Conversation,
    SpeakerWord,
    Utterance,
    Voice,
)
from moshi_knowledge.speech.script import answer_lines, question_lines


def _item(qid: str, tier: str, phrasings: list[str], answer: str, **extra) -> QAItem:
    return QAItem(id=qid, tier=tier, question=phrasings[0], answer=answer, phrasings=phrasings, **extra)


@pytest.fixture(scope="module")
def qa() -> QASet:
    return QASet(
        train=[
            _item("t1", "train", ["Who founded the city of Aldon?", "Which queen founded Aldon?"], "Queen Maren"),
            _item("t2", "train", ["In what year was the Velder bridge built?", "When was the Velder bridge built?"],
                  "In 1712"),
            _item("t3", "train", ["What river flows past the old mill?"], "The river Sorn"),
            _item("t4", "train", ["Who won the battle of Kessa?", "Which army won at Kessa?",
                                  "Who was victorious at Kessa?"], "The northern league"),
        ],
        eval=[_item("e1", "eval", ["Where was Queen Maren crowned?"], "In Aldon"),
              _item("e2", "eval", ["What is the Velder bridge made of?"], "Grey stone")],
        paraphrase=[_item("p1", "paraphrase", ["Aldon was founded by whom?"], "Queen Maren", source_id="t1")],
    )


@pytest.fixture(scope="module")
def speech(qa: QASet) -> dict[str, Utterance]:
    tts = EspeakTTS(Voice("en+m3", rate=165, pitch=35), [Voice("en-us+m1"), Voice("en+f2", pitch=65)], Voice("en+f4"))
    lines = question_lines(qa) + answer_lines(qa) + MonoDuplicateLayout().lines(qa)
    return {line.id: tts.synthesize(line.text, tts.voice_for(line)) for line in lines}


@pytest.fixture(scope="module")
def dialogue(qa: QASet, speech: dict[str, Utterance]) -> list[Conversation]:
    return DialogueLayout().compose(qa, speech)


def round_robin(qa: QASet) -> list[tuple]:
    """Train turns in layout order: every item's first phrasing, then every item's second, ..."""
    return [(q, k) for k in range(3) for q in qa.train if k < len(q.phrasings)]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def cut(x: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    return x[int(span[0] * SAMPLE_RATE):int(np.ceil(span[1] * SAMPLE_RATE))]


def test_dialogue_turns_cover_every_phrasing_round_by_round(qa: QASet, dialogue: list[Conversation]) -> None:
    train = [c for c in dialogue if c.split == "train"]
    evals = [c for c in dialogue if c.split == "eval"]
    assert [c.id for c in train] == [f"train-{i:04d}" for i in range(len(train))]
    assert [c.id for c in evals] == ["eval-0000"]
    assert [t.qid for c in train for t in c.turns] == ["t1", "t2", "t3", "t4", "t1", "t2", "t4", "t4"]
    assert [t.qid for c in evals for t in c.turns] == ["e1", "e2"]
    assert DialogueLayout().lines(qa) == []
    assert (DialogueLayout.name, MonoDuplicateLayout.name) == ("dialogue", "mono_duplicate")


def test_phrasings_of_one_item_never_share_a_conversation(qa: QASet, speech: dict[str, Utterance]) -> None:
    """An answer must be recalled, not copied from an earlier turn of the same conversation."""
    two_items = QASet(train=qa.train[:2], eval=qa.eval)  # t1 and t2, two phrasings each
    convs = [c for c in DialogueLayout(max_duration_sec=12.0).compose(two_items, speech) if c.split == "train"]
    assert sum(len(c.turns) for c in convs) == 4 and len(convs) == 2
    for conv in convs:
        qids = [t.qid for t in conv.turns]
        assert len(qids) == len(set(qids)), qids


def test_dialogue_channels_are_separated(dialogue: list[Conversation]) -> None:
    for conv in dialogue:
        assert len(conv.left) == len(conv.right) and conv.left.dtype == conv.right.dtype == np.float32
        for turn in conv.turns:
            assert turn.question[1] + 0.3 < turn.answer[0]  # gap_sec of silence between them
            assert not cut(conv.left, turn.question).any() and rms(cut(conv.right, turn.question)) > 0.03
            assert not cut(conv.right, turn.answer).any() and rms(cut(conv.left, turn.answer)) > 0.03
        assert not conv.left[:int(0.3 * SAMPLE_RATE)].any() and not conv.right[:int(0.3 * SAMPLE_RATE)].any()


def test_dialogue_words_sit_on_their_channel(dialogue: list[Conversation], speech: dict[str, Utterance]) -> None:
    conv = dialogue[0]
    assert [w.start for w in conv.words] == sorted(w.start for w in conv.words)
    first = conv.turns[0]
    question = [w.word for w in conv.words if w.speaker == USER_SPEAKER and w.end <= first.question[1] + 1e-9]
    assert question == [w.word for w in speech["q-t1-0"].words]
    for w in conv.words:
        own, other = (conv.left, conv.right) if w.speaker == MOSHI_SPEAKER else (conv.right, conv.left)
        assert rms(cut(own, (w.start, w.end))) > 0.02 and not cut(other, (w.start, w.end)).any()
        turn = next(t for t in conv.turns if t.question[0] <= w.start <= t.answer[1])
        span = turn.answer if w.speaker == MOSHI_SPEAKER else turn.question
        assert span[0] <= w.start < w.end <= span[1]


def test_dialogue_respects_max_duration(qa: QASet, speech: dict[str, Utterance]) -> None:
    convs = DialogueLayout(max_duration_sec=9.0).compose(qa, speech)
    train = [c for c in convs if c.split == "train"]
    assert len(train) > 2 and all(c.duration <= 9.0 for c in convs)
    assert [t.qid for c in train for t in c.turns] == [q.id for q, _ in round_robin(qa)]
    # greedy: the next conversation's first turn would not have fitted into the previous one
    for a, b in zip(train, train[1:]):
        first = b.turns[0]
        assert a.duration + 0.8 + (first.answer[1] - first.question[0]) > 9.0 - 0.1


def test_dialogue_turn_longer_than_max_is_a_user_error(qa: QASet, speech: dict[str, Utterance]) -> None:
    with pytest.raises(UserError, match=r"t1.*max_duration_sec"):
        DialogueLayout(max_duration_sec=2.0).compose(qa, speech)


def test_missing_speech_is_a_user_error(qa: QASet, speech: dict[str, Utterance]) -> None:
    partial = {k: v for k, v in speech.items() if k != "a-t3"}
    with pytest.raises(UserError, match="a-t3"):
        DialogueLayout().compose(qa, partial)


def test_layouts_are_deterministic(qa: QASet, speech: dict[str, Utterance], dialogue: list[Conversation]) -> None:
    again = DialogueLayout().compose(qa, speech)
    assert all(np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right) and a.words == b.words
               for a, b in zip(dialogue, again))


def test_mono_duplicate_lines(qa: QASet) -> None:
    lines = MonoDuplicateLayout().lines(qa)
    assert [line.id for line in lines] == [qa_line_id(q.id, k) for q, k in round_robin(qa)] \
        + ["qa-e1-0", "qa-e2-0"]
    assert lines[4].text == "Question: Which queen founded Aldon? Answer: Queen Maren"  # t1, second phrasing
    assert {line.role for line in lines} == {"moshi"}


def test_mono_duplicate_copies_one_voice_to_both_channels(qa: QASet, speech: dict[str, Utterance]) -> None:
    convs = MonoDuplicateLayout(max_duration_sec=20.0).compose(qa, speech)
    assert [t.qid for c in convs if c.split == "eval" for t in c.turns] == ["e1", "e2"]
    for conv in convs:
        assert np.array_equal(conv.left, conv.right) and conv.duration <= 20.0
        assert {w.speaker for w in conv.words} == {MOSHI_SPEAKER}
        for turn in conv.turns:
            assert turn.question[1] <= turn.answer[0]
            answer_words = [w for w in conv.words if turn.answer[0] <= w.start < turn.answer[1]]
            assert answer_words[0].word == "Answer:"
            assert rms(cut(conv.left, turn.question)) > 0.03 and rms(cut(conv.left, turn.answer)) > 0.03


def test_bad_layout_settings_name_the_field() -> None:
    with pytest.raises(UserError, match="layout.gap_sec"):
        DialogueLayout(gap_sec=-1.0)
    with pytest.raises(UserError, match="layout.max_duration_sec"):
        MonoDuplicateLayout(max_duration_sec=0.0)


def test_tts_aligner_returns_sorted_words_within_the_audio(dialogue: list[Conversation]) -> None:
    conv = dialogue[0]
    assert TTSAligner().align(conv) == conv.words
    end = conv.duration
    drifted = Conversation("x", "train", conv.left, conv.right, [
        SpeakerWord("late", end - 0.2, end + 1e-7, MOSHI_SPEAKER), SpeakerWord("early", -1e-7, 0.1, USER_SPEAKER)])
    words = TTSAligner().align(drifted)
    assert [w.word for w in words] == ["early", "late"]
    assert words[0].start == 0.0 and words[1].end == end


@pytest.mark.parametrize("span", [(0.5, 0.5), (0.6, 0.5), (-2.0, -1.0), (1e6, 1e6 + 1)])
def test_tts_aligner_rejects_impossible_spans(dialogue: list[Conversation], span: tuple[float, float]) -> None:
    conv = dialogue[0]
    bad = Conversation("x", "train", conv.left, conv.right, [SpeakerWord("w", *span, MOSHI_SPEAKER)])
    with pytest.raises(ValueError, match="conversation x"):
        TTSAligner().align(bad)


def test_max_turns_one_makes_every_turn_its_own_conversation(qa: QASet, speech: dict[str, Utterance]) -> None:
    convs = DialogueLayout(max_turns=1).compose(qa, speech)
    assert all(len(c.turns) == 1 for c in convs)
    assert [c.turns[0].qid for c in convs if c.split == "train"] == [q.id for q, _ in round_robin(qa)]
