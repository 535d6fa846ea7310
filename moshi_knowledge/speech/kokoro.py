"""`tts=kokoro`: Kokoro-82M through its `KPipeline`, with word times from the pipeline's token timestamps.

Kokoro lives in the `[kokoro]` extra and its weights are never downloaded here: they are read from the
Hugging Face cache, and anything missing is a UserError that says what and how to fix it (never a silent
fallback to another engine). The model is shared by one pipeline per accent (a voice's first letter);
only the English pipelines time their tokens, so only English voices are accepted.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.audio import resample_to
from moshi_knowledge.speech.schema import SAMPLE_RATE, Utterance, Voice, WordSpan
from moshi_knowledge.speech.tts_base import TTSBackend

KOKORO_RATE = 24_000  # Kokoro's output rate (its timestamps count 600-sample frames at this rate)
NOMINAL_WPM = 160  # Voice.rate that maps to Kokoro's speed 1.0
INSTALL_FIX = ("pip install 'moshi-knowledge[kokoro]'; its weights (hexgrad/Kokoro-82M) must then be in the "
               "Hugging Face cache (HF_HOME), since nothing is downloaded during a run")
SPACY_MODEL = "en_core_web_sm"  # misaki's English G2P; it would pip-install this on first use
ENGLISH_ACCENTS = ("a", "b")  # voice-name prefixes whose pipelines (misaki G2P) give token timestamps


class Token(Protocol):
    """misaki's MToken, as KPipeline leaves it: timestamps in seconds from the start of its chunk, or None."""

    text: str
    whitespace: str
    start_ts: float | None
    end_ts: float | None


class Chunk(Protocol):
    """One `KPipeline.Result`: the tokens of one text chunk and that chunk's audio."""

    tokens: Sequence[Token] | None
    audio: Any  # torch tensor or numpy array, mono, KOKORO_RATE; None for a quiet pipeline


def _numpy(audio: Any) -> np.ndarray:
    if hasattr(audio, "detach"):
        audio = audio.detach().cpu().numpy()
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def _words(tokens: Sequence[Token], offset: float, chunk_end: float) -> list[WordSpan]:
    """Whitespace-separated words from tokens (punctuation joins its word). A word without timestamps
    (e.g. one the G2P could not phonemize) fills the gap between its timed neighbours."""
    groups: list[list[Token]] = [[]]
    for token in tokens:
        groups[-1].append(token)
        if token.whitespace:
            groups.append([])
    timed = []
    for group in groups:
        text = "".join(t.text for t in group).strip()
        if not any(c.isalnum() for c in text):
            continue  # bare punctuation is not spoken
        starts = [t.start_ts for t in group if t.start_ts is not None]
        ends = [t.end_ts for t in group if t.end_ts is not None]
        timed.append((text, min(starts) + offset if starts else None, max(ends) + offset if ends else None))
    spans = []
    for i, (text, start, end) in enumerate(timed):
        prev_end = spans[-1].end if spans else offset
        next_start = next((s for _, s, _ in timed[i + 1:] if s is not None), chunk_end)
        start = prev_end if start is None else start
        end = max(start, next_start if end is None else end)
        spans.append(WordSpan(text, start, min(end, chunk_end)))
    return spans


def utterance_from_chunks(chunks: Iterable[Chunk], rate: int = KOKORO_RATE) -> Utterance:
    """Concatenate the chunks' audio and shift each chunk's word times by the audio before it."""
    audio: list[np.ndarray] = []
    words: list[WordSpan] = []
    offset = 0.0
    for chunk in chunks:
        if chunk.audio is None:
            continue
        samples = _numpy(chunk.audio)
        end = offset + len(samples) / rate
        words += _words(chunk.tokens or [], offset, end)
        audio.append(samples)
        offset = end
    samples = resample_to(np.concatenate(audio) if audio else np.zeros(0, np.float32), rate, SAMPLE_RATE)
    return Utterance(samples, words)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"tts=kokoro: the optional extra is not installed (cannot import {module}: {exc})",
                        INSTALL_FIX) from exc


def _cached_file(repo_id: str, filename: str, field: str) -> str:
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename)
    if not isinstance(path, str):
        raise UserError(
            f"tts=kokoro: {field}: {filename} of {repo_id} is not in the Hugging Face cache "
            "(weights are never downloaded during a run)",
            f"on a machine with internet: huggingface-cli download {repo_id} {filename}, then copy the HF cache "
            "(HF_HOME) here",
        )
    return path


def _load_model(kokoro: Any, repo_id: str, device: str) -> Any:
    model_name = kokoro.KModel.MODEL_NAMES.get(repo_id)
    if model_name is None:
        raise UserError(f"tts=kokoro: unknown tts.repo_id {repo_id!r}",
                        f"use one of {sorted(kokoro.KModel.MODEL_NAMES)}")
    config = _cached_file(repo_id, "config.json", "tts.repo_id")
    weights = _cached_file(repo_id, model_name, "tts.repo_id")
    return kokoro.KModel(repo_id=repo_id, config=config, model=weights).to(device).eval()


class KokoroTTS(TTSBackend):
    """Voices are Kokoro voice names (am_michael, af_heart, ...); `rate` scales the speed, `pitch` is unused."""

    def __init__(self, moshi_voice: Voice, user_voices: list[Voice], heldout_voice: Voice,
                 repo_id: str = "hexgrad/Kokoro-82M", device: str = "cpu", voices_per_fact: int | None = None) -> None:
        super().__init__(moshi_voice, user_voices, heldout_voice, voices_per_fact)
        fields = {"moshi_voice": self.moshi_voice, "heldout_voice": self.heldout_voice,
                  **{f"user_voices[{i}]": v for i, v in enumerate(self.user_voices)}}
        for f, v in fields.items():
            if v.name[:1] not in ENGLISH_ACCENTS:
                raise UserError(f"tts.{f}: voice {v.name!r} is not an English Kokoro voice; only English "
                                "pipelines give word timestamps", "use an a* (American) or b* (British) voice")
        self._kokoro = _require("kokoro")
        if not _require("spacy").util.is_package(SPACY_MODEL):
            raise UserError(f"tts=kokoro: the spaCy model {SPACY_MODEL} that Kokoro's English G2P needs is missing",
                            f"python -m spacy download {SPACY_MODEL}")
        self._voice_files = {v.name: _cached_file(repo_id, f"voices/{v.name}.pt", f"tts.{f}")
                             for f, v in fields.items()}
        self._model = _load_model(self._kokoro, repo_id, device)
        self._repo_id = repo_id
        self._pipelines: dict[str, Any] = {}

    def _pipeline(self, voice: Voice) -> Any:
        lang = voice.name[0]
        if lang not in self._pipelines:
            self._pipelines[lang] = self._kokoro.KPipeline(lang_code=lang, repo_id=self._repo_id, model=self._model)
        return self._pipelines[lang]

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        if not text.strip():
            raise UserError("tts=kokoro: asked to speak an empty text", "check the Q/A set for empty questions")
        if voice.name not in self._voice_files:
            raise UserError(f"tts=kokoro: voice {voice.name!r} is not one of the configured voices",
                            "use a voice from tts.moshi_voice / tts.user_voices / tts.heldout_voice")
        chunks = self._pipeline(voice)(text, voice=self._voice_files[voice.name],
                                       speed=voice.rate / NOMINAL_WPM, split_pattern=None)
        utterance = utterance_from_chunks(chunks)
        if not utterance.words:
            raise UserError(f"tts=kokoro: no speech came out for {text[:60]!r}",
                            "check the text is English words Kokoro can pronounce")
        return utterance


SCHEMAS = {("tts", "kokoro_schema"): init_schema(KokoroTTS)}
