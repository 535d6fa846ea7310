"""`align=whisperx`: word times from the audio itself, as moshi-finetune's annotation script gets them.

Each channel is transcribed and word-aligned on its own (left -> SPEAKER_MAIN, right -> SPEAKER_USER),
unlike `align=tts`, which trusts the TTS engine's times. WhisperX lives in the `[whisperx]` extra and its
weights are only read from the local caches; anything missing is a UserError, never a silent fallback.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.audio import resample_to
from moshi_knowledge.speech.layout_base import Aligner
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, USER_SPEAKER, Conversation, SpeakerWord

WHISPER_RATE = 16_000  # what WhisperX's models take
INSTALL_FIX = ("pip install 'moshi-knowledge[whisperx]'; its Whisper and alignment weights must then be in the "
               "Hugging Face / torch hub caches, since nothing is downloaded during a run")
log = logging.getLogger(__name__)


def speaker_words(aligned: Mapping[str, Any], speaker: str, duration: float) -> list[SpeakerWord]:
    """`whisperx.align`'s result -> our words, clipped to [0, duration] and sorted. Words it could not
    time (no `start`/`end`, e.g. some numerals) are dropped and counted in the log."""
    entries = aligned.get("word_segments")
    if entries is None:
        entries = [w for segment in aligned.get("segments", []) for w in segment.get("words", [])]
    words, untimed = [], 0
    for entry in entries:
        text = str(entry.get("word", "")).strip()
        start, end = entry.get("start"), entry.get("end")
        if not text:
            continue
        if start is None or end is None or np.isnan(start) or np.isnan(end):
            untimed += 1
            continue
        start = min(max(float(start), 0.0), duration)
        words.append(SpeakerWord(text, start, min(max(float(end), start), duration), speaker))
    if untimed:
        log.warning("align=whisperx: %d %s words had no time and were dropped", untimed, speaker)
    return sorted(words, key=lambda w: (w.start, w.end))


def _load(what: str, load: Any, *args: Any, **kwargs: Any) -> Any:
    """Loading fails in many library-specific ways when weights are absent; all become one clear error."""
    try:
        return load(*args, **kwargs)
    except Exception as exc:
        raise UserError(
            f"align=whisperx: could not load the {what} from the local caches ({type(exc).__name__}: {exc})",
            "weights are never downloaded during a run: on a machine with internet run whisperx once with the "
            "same align.model and align.language, then copy its Hugging Face cache (HF_HOME) and torch hub "
            "cache (TORCH_HOME) here",
        ) from exc


class WhisperXAligner(Aligner):
    def __init__(self, model: str = "large-v2", language: str = "en", device: str = "cpu",
                 compute_type: str = "int8", batch_size: int = 8, align_model: str | None = None) -> None:
        try:
            self._whisperx = importlib.import_module("whisperx")
        except ImportError as exc:
            raise UserError(f"align=whisperx: the optional extra is not installed ({exc})", INSTALL_FIX) from exc
        self.device, self.batch_size, self.language = device, batch_size, language
        self._asr = _load(f"Whisper model {model!r}", self._whisperx.load_model, model, device,
                          compute_type=compute_type, language=language, local_files_only=True)
        self._align_model, self._metadata = _load(
            f"alignment model for language {language!r}", self._whisperx.load_align_model,
            language_code=language, device=device, model_name=align_model, model_cache_only=True)

    def _channel(self, samples: np.ndarray, speaker: str, duration: float) -> list[SpeakerWord]:
        audio = resample_to(samples, SAMPLE_RATE, WHISPER_RATE)
        transcript = self._asr.transcribe(audio, batch_size=self.batch_size, language=self.language)
        if not transcript["segments"]:
            return []
        aligned = self._whisperx.align(transcript["segments"], self._align_model, self._metadata, audio,
                                       self.device, return_char_alignments=False)
        return speaker_words(aligned, speaker, duration)

    def align(self, conversation: Conversation) -> list[SpeakerWord]:
        words = [*self._channel(conversation.left, MOSHI_SPEAKER, conversation.duration),
                 *self._channel(conversation.right, USER_SPEAKER, conversation.duration)]
        return sorted(words, key=lambda w: (w.start, w.end))


SCHEMAS = {("align", "whisperx_schema"): init_schema(WhisperXAligner)}
