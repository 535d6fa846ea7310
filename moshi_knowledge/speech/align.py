"""The `tts` aligner: word times straight from the TTS engine, checked and clipped to the conversation."""

from __future__ import annotations

import math

from moshi_knowledge.speech.layout_base import Aligner
from moshi_knowledge.speech.schema import Conversation, SpeakerWord


class TTSAligner(Aligner):
    """Trusts the layout's words; clips float drift at the edges and rejects spans that cannot be right."""

    def align(self, conversation: Conversation) -> list[SpeakerWord]:
        duration = conversation.duration
        out = []
        for w in conversation.words:
            if not (math.isfinite(w.start) and math.isfinite(w.end) and w.start < w.end
                    and w.start < duration and w.end > 0):
                raise ValueError(f"conversation {conversation.id}: word {w.word!r} has span "
                                 f"[{w.start}, {w.end}] outside its {duration:.3f} s of audio")
            out.append(SpeakerWord(w.word, max(w.start, 0.0), min(w.end, duration), w.speaker))
        return sorted(out, key=lambda w: w.start)
