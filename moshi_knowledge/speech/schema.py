"""Audio in memory: utterances with word times, and stereo conversations ready to be written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SAMPLE_RATE = 24_000  # Mimi's rate: everything we write is 24 kHz
MOSHI_SPEAKER = "SPEAKER_MAIN"  # moshi-finetune's label for the left (Moshi) channel
USER_SPEAKER = "SPEAKER_USER"  # our label for right-channel (user) words

Role = Literal["moshi", "user", "heldout"]


@dataclass
class Voice:  # not frozen: it types the tts voices' config nodes, which OmegaConf would make read-only
    """A TTS voice: a backend voice name plus speaking rate (words/min) and pitch (0-99 for espeak)."""

    name: str
    rate: int = 160
    pitch: int = 50


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: float  # seconds
    end: float


@dataclass
class Utterance:
    """Mono 24 kHz float32 speech and the time span of every word in it."""

    samples: np.ndarray
    words: list[WordSpan]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class Line:
    """One text to speak: `role` picks the voice (user voices rotate by `voice_index`)."""

    id: str
    text: str
    role: Role
    voice_index: int = 0


@dataclass(frozen=True)
class SpeakerWord:
    word: str
    start: float
    end: float
    speaker: str  # MOSHI_SPEAKER or USER_SPEAKER


@dataclass(frozen=True)
class Turn:
    """Where one Q/A sits inside a conversation, so training and eval can find it."""

    qid: str
    question: tuple[float, float]
    answer: tuple[float, float]


@dataclass
class Conversation:
    """A stereo conversation: LEFT is Moshi, RIGHT is the user (moshi-finetune's convention)."""

    id: str
    split: Literal["train", "eval"]
    left: np.ndarray
    right: np.ndarray
    words: list[SpeakerWord] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return len(self.left) / SAMPLE_RATE
