"""One tokenized conversation: the [17, T] code tensor the LM reads, plus where each Q/A turn sits in frames.

Row 0 is the text stream, rows 1-8 Moshi's audio (left channel), rows 9-16 the user's audio (right channel).
Times become frames at Mimi's 12.5 Hz; -1 is moshi's zero token (no embedding, no loss).
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from moshi_knowledge.io_utils import atomic_write_bytes
from moshi_knowledge.speech.schema import Turn

FRAME_RATE = 12.5  # Mimi frames per second
N_STREAMS = 17
MOSHI_AUDIO = slice(1, 9)  # Moshi's 8 codebooks: the only audio the LM predicts
USER_AUDIO = slice(9, 17)  # the user's 8 codebooks
ZERO_TOKEN = -1


@dataclass(frozen=True)
class TurnSpan:
    """A Q/A turn in frames, half-open [start, end)."""

    qid: str
    question: tuple[int, int]
    answer: tuple[int, int]


def frame_span(span_sec: tuple[float, float], n_frames: int) -> tuple[int, int]:
    """Seconds to the half-open frame range that covers them (start rounded down, end up), clipped to the clip."""
    start = min(max(math.floor(span_sec[0] * FRAME_RATE), 0), n_frames)
    end = min(max(math.ceil(span_sec[1] * FRAME_RATE), start), n_frames)
    return start, end


def turn_spans(turns: Sequence[Turn], n_frames: int) -> list[TurnSpan]:
    return [TurnSpan(t.qid, frame_span(t.question, n_frames), frame_span(t.answer, n_frames)) for t in turns]


@dataclass
class ConversationCodes:
    id: str
    codes: torch.Tensor  # [17, T] int64
    turns: list[TurnSpan]

    def __post_init__(self) -> None:
        if self.codes.dim() != 2 or self.codes.shape[0] != N_STREAMS:
            raise ValueError(f"conversation {self.id}: codes must be [{N_STREAMS}, T], got {list(self.codes.shape)}")
        self.codes = self.codes.long()

    @property
    def n_frames(self) -> int:
        return int(self.codes.shape[1])

    def save(self, path: str | Path) -> Path:
        buf = io.BytesIO()
        turns = [[t.qid, list(t.question), list(t.answer)] for t in self.turns]
        torch.save({"id": self.id, "codes": self.codes, "turns": turns}, buf)
        return atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "ConversationCodes":
        data = torch.load(path, weights_only=True)
        turns = [TurnSpan(q, (qs[0], qs[1]), (a[0], a[1])) for q, qs, a in data["turns"]]
        return cls(data["id"], data["codes"], turns)


def drop_answer_audio(sample: ConversationCodes, fraction: float, rng: random.Random) -> torch.Tensor:
    """Codes where, in about `fraction` of the answer turns, Moshi's audio is the zero token.

    Why: a model that always hears its own answer audio learns to read answer words off it, and then fails
    when the audio is absent at evaluation time (docs/moshi.md: training and scoring). The text stays.
    """
    codes = sample.codes
    dropped = [t.answer for t in sample.turns if rng.random() < fraction]
    if not dropped:
        return codes
    codes = codes.clone()
    for start, end in dropped:
        codes[MOSHI_AUDIO, start:end] = ZERO_TOKEN
    return codes
