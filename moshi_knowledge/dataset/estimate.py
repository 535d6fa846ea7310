"""The training conversations a config would build, from the text alone: for `moshi-knowledge plan`, which must not
synthesise speech to say how long a run trains.

Each Q/A turn and narrated sentence lasts its words at its voice's speaking rate (`tts.*_voices[].rate`, words per
minute); conversations are grouped as the layouts group them (`speech.layout.pack_in_order`), with their silences.
On the tiny default data the lines' total came within 5% of espeak's real durations, though one line may be off by
2x (a year is one word written and three spoken). Which facts each conversation states follows dataset/facts.py
exactly: only the lengths, hence the packing into rows, are estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from moshi_knowledge.codes.samples import FRAME_RATE
from moshi_knowledge.dataset.facts import item_facts, narrated_facts_by_line
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.layout import mono_text, pack_in_order
from moshi_knowledge.speech.narration import Narration
from moshi_knowledge.world.schema import Story

_MS = 1000  # lengths are packed in milliseconds, as the layouts pack samples


@dataclass(frozen=True)
class Said:
    """One Q/A turn or narrated sentence: how long it lasts and the facts it states."""

    seconds: float
    facts: tuple[str, ...]


@dataclass(frozen=True)
class EstimatedConversation:
    id: str
    frames: int
    facts: tuple[str, ...]


def speech_sec(text: str, words_per_min: float) -> float:
    return len(text.split()) * 60.0 / words_per_min


def qa_turns(qa: QASet, layout: Any, tts: DictConfig) -> list[Said]:
    """The training items' turns in the layouts' order (every item's first phrasing, then every second, ...), each
    question in its rotating user voice (speech/script.py: one voice per phrasing, in item order)."""
    rates = [float(v.rate) for v in tts.user_voices]
    moshi = float(tts.moshi_voice.rate)
    first_voice, turn = {}, 0
    for item in qa.train:
        first_voice[item.id] = turn
        turn += len(item.phrasings)
    out = []
    for k in range(max(len(item.phrasings) for item in qa.train)):
        for item in (i for i in qa.train if k < len(i.phrasings)):
            if layout.name == "mono_duplicate":
                seconds = speech_sec(mono_text(item.phrasings[k], item.answer), moshi)
            else:
                user = rates[(first_voice[item.id] + k) % len(rates)]
                seconds = speech_sec(item.phrasings[k], user) + layout.gap_sec + speech_sec(item.answer, moshi)
            out.append(Said(seconds, tuple(item_facts(item))))
    return out


def narrated_rounds(narration: Narration, story: Story, qa: QASet, tts: DictConfig) -> list[list[Said]]:
    """Moshi's narrated sentences, round by round, as the narration layouts pack them."""
    facts = narrated_facts_by_line(narration, story, qa)
    moshi = float(tts.moshi_voice.rate)
    return [[Said(speech_sec(line.text, moshi), tuple(facts[line.id])) for line in r]
            for r in narration.rounds(story, qa)]


def _group(said: list[Said], layout: Any, gap_sec: float, max_items: int | None, name: str
           ) -> list[EstimatedConversation]:
    """Conversations of consecutive turns or sentences, up to layout.max_duration_sec, with their silences."""
    lengths = [round(s.seconds * _MS) for s in said]
    edges, gap = round(2 * layout.lead_sec * _MS), round(gap_sec * _MS)
    out = []
    for group in pack_in_order(lengths, round(layout.max_duration_sec * _MS), edges, gap, max_items):
        ms = edges + sum(lengths[i] for i in group) + gap * (len(group) - 1)
        out.append(EstimatedConversation(f"{name}-{len(out):04d}", math.ceil(ms / _MS * FRAME_RATE),
                                         tuple(f for i in group for f in said[i].facts)))
    return out


def training_conversations(qa: QASet, story: Story, layout: Any, tts: DictConfig) -> list[EstimatedConversation]:
    """The training split a built dataset (dataset=built) of this layout would hold, lengths estimated."""
    out = []
    narration = getattr(layout, "narration", None)
    if isinstance(narration, Narration):
        for k, said in enumerate(narrated_rounds(narration, story, qa, tts)):
            out += _group(said, layout, layout.sentence_gap_sec, layout.max_sentences, f"train-narration-{k}")
    if getattr(layout, "qa_turns", True):
        out += _group(qa_turns(qa, layout, tts), layout, layout.turn_gap_sec, layout.max_turns, "train")
    return out
