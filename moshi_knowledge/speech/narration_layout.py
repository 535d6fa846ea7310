"""The narration regimes: Moshi (LEFT) tells the story as a monologue while the user's channel (RIGHT) stays silent.

`NarrationLayout` trains on the narration alone: the facts are learned from prose, and questions come only at
test time (continued pretraining on documents). `MixedLayout` adds the Q/A turns of the training items, one
conversation each as `DialogueLayout` lays them out: prose about every fact plus Q/A for some of them, tested on
the Q/A of the others (the heldout_facts tier, `qa.heldout_share`). Both keep the dialogue's eval split (the eval
items' Q/A), so `eval/loss` means the same in every regime, and its `lead_sec`/`gap_sec`, which recall's prompts
mirror. Moshi's words are timed by the TTS, as answers are; `audio_drop` finds no answer turn in a narration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import numpy as np

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.layout import DialogueLayout, _check_seconds, _samples, _shifted, _utterance, pack_in_order
from moshi_knowledge.speech.narration import Narration
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, Conversation, Line, SpeakerWord, Utterance
from moshi_knowledge.world.schema import Story


class NarrationLayout(DialogueLayout):
    """Moshi narrates; passages of whole sentences up to `max_duration_sec` (or `max_sentences`), one round of
    restatements each, `sentence_gap_sec` of silence between sentences."""

    name = "narration"
    qa_turns: ClassVar[bool] = False  # train on the training items' Q/A as well (the mixed regime)

    def __init__(self, narration: Any, sentence_gap_sec: float = 0.3, max_sentences: int | None = None,
                 lead_sec: float = 0.3, gap_sec: float = 0.4, turn_gap_sec: float = 0.8,
                 max_duration_sec: float = 60.0, max_turns: int | None = None) -> None:
        super().__init__(lead_sec, gap_sec, turn_gap_sec, max_duration_sec, max_turns)
        _check_seconds("sentence_gap_sec", sentence_gap_sec)
        if max_sentences is not None and max_sentences < 1:
            raise UserError(f"layout.max_sentences = {max_sentences} must be >= 1",
                            "set it to a positive count (1: one sentence per passage) or null")
        if not isinstance(narration, Narration):
            raise TypeError(f"layout.narration must build a Narration, got {type(narration).__name__}")
        self.narration = narration
        self.sentence_gap_sec = sentence_gap_sec
        self.max_sentences = max_sentences

    def lines(self, qa: QASet, story: Story | None = None) -> list[Line]:
        return [line for r in self.narration.rounds(_needs(story), qa) for line in r]

    def compose(self, qa: QASet, speech: Mapping[str, Utterance], story: Story | None = None) -> list[Conversation]:
        train, evals = self._turn_keys(qa)
        passages = [p for r in self.narration.rounds(_needs(story), qa) for p in self._passages(r, speech)]
        narrated = [self._render_passage(p, f"train-narration-{i:04d}") for i, p in enumerate(passages)]
        # the Q/A of a spiked-in held-out fact (qa.spike_in) is trained in every regime: that is the calibration
        qa_train = self._pack([self._block(item, k, speech) for item, k in train if self.qa_turns or item.spiked],
                              "train")
        return [*narrated, *qa_train, *self._pack([self._block(item, k, speech) for item, k in evals], "eval")]

    def _passages(self, sentences: list[Line], speech: Mapping[str, Utterance]) -> Iterator[list[Utterance]]:
        """Greedy in order, as Q/A turns are packed: a sentence that would pass either limit starts a passage."""
        ends, limit = 2 * _samples(self.lead_sec), int(self.max_duration_sec * SAMPLE_RATE)
        utterances = [_utterance(speech, line.id, line.id) for line in sentences]
        for line, utt in zip(sentences, utterances):
            if ends + len(utt.samples) > limit:
                seconds = (ends + len(utt.samples)) / SAMPLE_RATE
                raise UserError(f"layout: the sentence {line.text!r} lasts {seconds:.1f} s with its silences, longer "
                                f"than layout.max_duration_sec = {self.max_duration_sec}",
                                "raise layout.max_duration_sec")
        for group in pack_in_order([len(u.samples) for u in utterances], limit, ends,
                                   _samples(self.sentence_gap_sec), self.max_sentences):
            yield [utterances[i] for i in group]

    def _render_passage(self, passage: list[Utterance], conv_id: str) -> Conversation:
        lead, gap = _samples(self.lead_sec), _samples(self.sentence_gap_sec)
        total = 2 * lead + sum(len(u.samples) for u in passage) + gap * (len(passage) - 1)
        left = np.zeros(total, np.float32)
        words: list[SpeakerWord] = []
        pos = lead
        for utt in passage:
            left[pos:pos + len(utt.samples)] = utt.samples
            words += _shifted(utt, pos / SAMPLE_RATE, MOSHI_SPEAKER)
            pos += len(utt.samples) + gap
        return Conversation(conv_id, "train", left, np.zeros_like(left), words, [])


class MixedLayout(NarrationLayout):
    """The narration of every narrated fact plus the Q/A turns of the training items (those not held out)."""

    name = "mixed"
    qa_turns = True


def _needs(story: Story | None) -> Story:
    if story is None:
        raise ValueError("the narration layouts narrate the story: pass it to lines() and compose()")
    return story


SCHEMAS = {("layout", "narration_schema"): init_schema(NarrationLayout),
           ("layout", "mixed_schema"): init_schema(MixedLayout)}
