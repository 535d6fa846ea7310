"""The TTS backend contract: voices by role, and text -> 24 kHz utterance with word times."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.schema import Line, Utterance, Voice


class TTSBackend(ABC):
    """Moshi speaks in one voice; users rotate through `user_voices`; `heldout_voice` is never trained on."""

    # True for a backend that loads no model: it is built before the first stage, so its own checks (voice names,
    # ranges) stop a bad setting before the story and Q/A stages run. A backend with weights is checked when used.
    built_before_stages: ClassVar[bool] = False

    def __init__(self, moshi_voice: Voice, user_voices: list[Voice], heldout_voice: Voice,
                 voices_per_fact: int | None = None) -> None:
        """`voices_per_fact`: how many user voices one trained fact's phrasings rotate through (1: every phrasing
        in one voice); null gives each phrasing the next voice, as many as there are phrasings and voices."""
        if not user_voices:
            raise UserError("tts.user_voices is empty", "give at least one user voice")
        if voices_per_fact is not None and voices_per_fact < 1:
            raise UserError(f"tts.voices_per_fact={voices_per_fact}: a fact is spoken in at least one voice",
                            "set tts.voices_per_fact to 1 or more, or null for one voice per phrasing")
        self.moshi_voice, self.user_voices, self.heldout_voice = moshi_voice, list(user_voices), heldout_voice
        self.voices_per_fact = voices_per_fact

    def voice_for(self, line: Line) -> Voice:
        if line.role == "moshi":
            return self.moshi_voice
        if line.role == "heldout":
            return self.heldout_voice
        return self.user_voices[line.voice_index % len(self.user_voices)]

    @abstractmethod
    def synthesize(self, text: str, voice: Voice) -> Utterance:
        """Speak `text`; raise UserError for empty text or an unknown voice."""
