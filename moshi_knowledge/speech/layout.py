"""Layouts: how spoken questions and answers become stereo conversations (LEFT = Moshi, RIGHT = user).

`DialogueLayout` is the proposed recipe: the user asks on the right channel, Moshi answers on the left.
`MonoDuplicateLayout` reproduces the published attempt for comparison: one voice reads
"Question: ... Answer: ..." and the same clip goes on both channels.
Both pack turns greedily, in order, into conversations no longer than `max_duration_sec`.
Channel work is plain numpy placement into zero buffers: exact, lossless and sample-aligned
(pydub would round-trip through int16 for no gain; writing wavs is the dataset stage's job).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.layout_base import Layout
from moshi_knowledge.speech.schema import (
    MOSHI_SPEAKER,
    SAMPLE_RATE,
    USER_SPEAKER,
    Conversation,
    Line,
    SpeakerWord,
    Turn,
    Utterance,
)
from moshi_knowledge.speech.script import answer_line_id, question_line_id
from moshi_knowledge.world.schema import Story


def qa_line_id(qid: str, phrasing: int = 0) -> str:
    """Line id of a mono "Question: ... Answer: ..." clip (phrasing k of item `qid`)."""
    return f"qa-{qid}-{phrasing}"


@dataclass
class _Block:
    """One Q/A turn before packing: equal-length channels; words and spans in seconds from the block start."""

    qid: str
    left: np.ndarray
    right: np.ndarray
    words: list[SpeakerWord]
    question: tuple[float, float]
    answer: tuple[float, float]


def pack_in_order(lengths: Sequence[int], limit: int, edges: int, gap: int,
                  max_items: int | None) -> Iterator[list[int]]:
    """Indices of consecutive items, greedy in order: an item that would take its group past `limit` samples (its
    items, `gap` between two, `edges` around them all) or past `max_items` starts the next group. Every item must
    fit alone (the callers check, to name the one that does not)."""
    group: list[int] = []
    length = 0
    for i, n in enumerate(lengths):
        full = max_items is not None and len(group) == max_items
        if group and (full or edges + length + gap + n > limit):
            yield group
            group, length = [], 0
        length += n + (gap if group else 0)
        group.append(i)
    if group:
        yield group


def _samples(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def _span(words: list[SpeakerWord]) -> tuple[float, float]:
    return min(w.start for w in words), max(w.end for w in words)


def _shifted(utterance: Utterance, offset: float, speaker: str) -> list[SpeakerWord]:
    return [SpeakerWord(w.word, w.start + offset, w.end + offset, speaker) for w in utterance.words]


def _check_seconds(name: str, value: float, positive: bool = False) -> None:
    if value < 0 or (positive and value == 0):
        raise UserError(f"layout.{name} = {value} must be {'> 0' if positive else '>= 0'}",
                        f"set layout.{name} to a {'positive' if positive else 'non-negative'} number of seconds")


class _PackingLayout(Layout):
    """Shared packing: turns in order, `lead_sec` of silence at both ends, `turn_gap_sec` between turns."""

    def __init__(self, lead_sec: float, turn_gap_sec: float, max_duration_sec: float,
                 max_turns: int | None = None) -> None:
        _check_seconds("lead_sec", lead_sec)
        if max_turns is not None and max_turns < 1:
            raise UserError(f"layout.max_turns = {max_turns} must be >= 1", "set it to a positive count or null")
        self.max_turns = max_turns
        _check_seconds("turn_gap_sec", turn_gap_sec)
        _check_seconds("max_duration_sec", max_duration_sec, positive=True)
        self.lead_sec = lead_sec
        self.turn_gap_sec = turn_gap_sec
        self.max_duration_sec = max_duration_sec

    @abstractmethod
    def _block(self, item: QAItem, phrasing: int, speech: Mapping[str, Utterance]) -> _Block:
        """The stereo turn for phrasing `phrasing` of `item`."""

    @staticmethod
    def _turn_keys(qa: QASet) -> tuple[list[tuple[QAItem, int]], list[tuple[QAItem, int]]]:
        """(item, phrasing) of every train turn (all phrasings) and every eval turn (the question itself).

        Train turns go round by round (every item's first phrasing, then every item's second, ...), so the
        phrasings of one item land in different conversations: otherwise the model could copy an answer from
        the previous turn instead of recalling it, and learn context-copying rather than the fact.
        """
        rounds = max(len(item.phrasings) for item in qa.train)
        train = [(item, k) for k in range(rounds) for item in qa.train if k < len(item.phrasings)]
        return train, [(item, 0) for item in qa.eval]

    def compose(self, qa: QASet, speech: Mapping[str, Utterance], story: Story | None = None) -> list[Conversation]:
        train, evals = self._turn_keys(qa)
        return [*self._pack([self._block(item, k, speech) for item, k in train], "train"),
                *self._pack([self._block(item, k, speech) for item, k in evals], "eval")]

    def _pack(self, blocks: list[_Block], split: Literal["train", "eval"]) -> list[Conversation]:
        return [self._render(group, f"{split}-{i:04d}", split) for i, group in enumerate(self._groups(blocks))]

    def _groups(self, blocks: list[_Block]) -> Iterator[list[_Block]]:
        """Greedy in order: a turn that would push the conversation past max_duration_sec (or max_turns) starts a new
        one."""
        ends, limit = 2 * _samples(self.lead_sec), int(self.max_duration_sec * SAMPLE_RATE)
        for block in blocks:
            if ends + len(block.left) > limit:
                raise UserError(
                    f"layout: the turn of item {block.qid!r} lasts {(ends + len(block.left)) / SAMPLE_RATE:.1f} s "
                    f"with its silences, longer than layout.max_duration_sec = {self.max_duration_sec}",
                    "raise layout.max_duration_sec, or shorten that question or answer")
        for group in pack_in_order([len(b.left) for b in blocks], limit, ends, _samples(self.turn_gap_sec),
                                   self.max_turns):
            yield [blocks[i] for i in group]

    def _render(self, group: list[_Block], conv_id: str, split: Literal["train", "eval"]) -> Conversation:
        lead, gap = _samples(self.lead_sec), _samples(self.turn_gap_sec)
        total = 2 * lead + sum(len(b.left) for b in group) + gap * (len(group) - 1)
        left, right = np.zeros(total, np.float32), np.zeros(total, np.float32)
        words: list[SpeakerWord] = []
        turns: list[Turn] = []
        pos = lead
        for block in group:
            left[pos:pos + len(block.left)] = block.left
            right[pos:pos + len(block.right)] = block.right
            t = pos / SAMPLE_RATE
            words += [SpeakerWord(w.word, w.start + t, w.end + t, w.speaker) for w in block.words]
            turns.append(Turn(block.qid, (block.question[0] + t, block.question[1] + t),
                              (block.answer[0] + t, block.answer[1] + t)))
            pos += len(block.left) + gap
        words.sort(key=lambda w: w.start)  # stable: tokens sharing a start keep their text order
        return Conversation(conv_id, split, left, right, words, turns)


def _utterance(speech: Mapping[str, Utterance], line_id: str, qid: str) -> Utterance:
    try:
        return speech[line_id]
    except KeyError:
        raise UserError(f"layout: no speech for line {line_id!r} of item {qid!r}",
                        "rerun the tts stage so that it speaks every line of this QA set") from None


class DialogueLayout(_PackingLayout):
    """Question on the RIGHT (user), `gap_sec` of silence, then the answer on the LEFT (Moshi)."""

    name = "dialogue"

    def __init__(self, lead_sec: float = 0.3, gap_sec: float = 0.4, turn_gap_sec: float = 0.8,
                 max_duration_sec: float = 60.0, max_turns: int | None = None) -> None:
        super().__init__(lead_sec, turn_gap_sec, max_duration_sec, max_turns)
        _check_seconds("gap_sec", gap_sec)
        self.gap_sec = gap_sec

    def lines(self, qa: QASet, story: Story | None = None) -> list[Line]:
        return []  # questions and answers are the script's own lines

    def _block(self, item: QAItem, phrasing: int, speech: Mapping[str, Utterance]) -> _Block:
        question = _utterance(speech, question_line_id(item.id, phrasing), item.id)
        answer = _utterance(speech, answer_line_id(item.id), item.id)
        answer_at = len(question.samples) + _samples(self.gap_sec)
        right = np.zeros(answer_at + len(answer.samples), np.float32)
        left = np.zeros_like(right)
        right[:len(question.samples)] = question.samples
        left[answer_at:] = answer.samples
        q_words = _shifted(question, 0.0, USER_SPEAKER)
        a_words = _shifted(answer, answer_at / SAMPLE_RATE, MOSHI_SPEAKER)
        return _Block(item.id, left, right, q_words + a_words, _span(q_words), _span(a_words))


_QUESTION, _ANSWER = "Question:", "Answer:"


def mono_text(question: str, answer: str) -> str:
    return f"{_QUESTION} {question} {_ANSWER} {answer}"


class MonoDuplicateLayout(_PackingLayout):
    """The published attempt: one Moshi voice reads question and answer, copied to both channels.

    Every word is labelled MOSHI_SPEAKER, as that attempt's annotation (channel 0 only) produced.
    By default each clip is its own file (`max_turns=1`), as in that attempt.
    """

    name = "mono_duplicate"

    def __init__(self, lead_sec: float = 0.3, turn_gap_sec: float = 0.8, max_duration_sec: float = 60.0,
                 max_turns: int | None = 1) -> None:
        super().__init__(lead_sec, turn_gap_sec, max_duration_sec, max_turns)
        self.gap_sec = 0.0  # one clip: no silence is inserted, the reader's own pause is inside it

    def lines(self, qa: QASet, story: Story | None = None) -> list[Line]:
        train, evals = self._turn_keys(qa)
        return [Line(qa_line_id(item.id, k), mono_text(item.phrasings[k], item.answer), "moshi")
                for item, k in train + evals]

    def _block(self, item: QAItem, phrasing: int, speech: Mapping[str, Utterance]) -> _Block:
        clip = _utterance(speech, qa_line_id(item.id, phrasing), item.id)
        words = _shifted(clip, 0.0, MOSHI_SPEAKER)
        n_question = 1 + len(item.phrasings[phrasing].split())  # "Question:" and the question's tokens
        return _Block(item.id, clip.samples, clip.samples.copy(), words,
                      _span(words[:n_question]), _span(words[n_question:]))


SCHEMAS = {("layout", "dialogue_schema"): init_schema(DialogueLayout),
           ("layout", "mono_duplicate_schema"): init_schema(MonoDuplicateLayout)}
