"""espeak-ng through ctypes (library and data from the espeakng-loader wheel): offline speech with word times.

Word times come from the engine's own phoneme events, so they are exact for the audio it returns; no aligner
model is needed. Facts this relies on (docs/tools.md): 22,050 Hz int16 output, a 40-byte espeak_EVENT,
1-based character positions, several WORD events for one number, one event for some word pairs ("for the").
"""

from __future__ import annotations

import bisect
import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.audio import resample_to
from moshi_knowledge.speech.schema import SAMPLE_RATE, Utterance, Voice, WordSpan
from moshi_knowledge.speech.tts_base import TTSBackend

ESPEAK_RATE = 22_050  # espeak-ng's fixed output rate; 22050 * 160 / 147 = 24000
RATE_RANGE = (80, 450)  # words per minute, espeak-ng's own limits
PITCH_RANGE = (0, 99)
VOICE_FIX = "use a language voice such as `en`, `en-us` or `en-029`, optionally with a variant: `en+m3`, `en-us+f2`"

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_END, _EVENT_MSG_TERMINATED, _EVENT_PHONEME = 5, 6, 7
_PARAM_RATE, _PARAM_PITCH = 1, 3
_MIN_WORD_SEC = 0.01  # a word made only of zero-length phonemes still gets a visible span


class _Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h (40 bytes on 64-bit); `id` holds the phoneme name for phoneme events."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Phoneme:
    """One sounded or silent phoneme: `position` is the 1-based character offset of the text it came from."""

    name: str
    position: int
    start: int  # samples at ESPEAK_RATE
    end: int

    @property
    def silent(self) -> bool:
        return self.name.startswith("_")  # "_", "_:", "_!": pauses


class _Engine:
    """The process-wide espeak-ng instance. The C library keeps global state, so all use goes through `lock`."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data_path = Path(espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(),
                                     _INITIALIZE_PHONEME_EVENTS)
        if rate != ESPEAK_RATE:
            raise RuntimeError(f"espeak-ng initialised at {rate} Hz, expected {ESPEAK_RATE}")
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str]] = []  # type, text_position, sample, phoneme name
        self._callback = _Callback(self._on_synth)  # kept alive: C holds only the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, n_samples: int, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            e = events[i]
            name = e.id.decode("ascii", "replace") if e.type == _EVENT_PHONEME else ""
            self._events.append((e.type, e.text_position, e.sample, name))
            i += 1
        return 0  # 0 = go on synthesising

    def voice_problem(self, name: str) -> str | None:
        """Why `name` is not a usable voice, or None. espeak ignores unknown variants silently, so check them here."""
        language, _, variant = name.partition("+")
        if "+" in name and not (self.data_path / "voices" / "!v" / variant).is_file():
            return f"variant {variant!r} is not in espeak-ng-data/voices/!v"
        with self.lock:
            if self._lib.espeak_SetVoiceByName(language.encode()) != 0:
                return f"espeak-ng has no voice {language!r}"
        return None

    def speak(self, text: str, voice: Voice) -> tuple[np.ndarray, list[Phoneme]]:
        """Int16 samples at ESPEAK_RATE and every phoneme with its sample span."""
        data = text.encode("utf-8")
        with self.lock:
            if self._lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise UserError(f"tts voice {voice.name!r}: espeak-ng has no such voice", VOICE_FIX)
            self._lib.espeak_SetParameter(_PARAM_RATE, voice.rate, 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, voice.pitch, 0)
            # Noise is drawn from a time-seeded PRNG: a fixed seed makes a fresh process reproduce its audio.
            # (Within one process a pitch-flutter counter carries over, so a repeated text varies by ~1%.)
            self._lib.espeak_ng_SetRandSeed(0)
            self._chunks, self._events = [], []
            err = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed with code {err} for {text[:60]!r}")
            chunks, events = self._chunks, self._events
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return audio, _phonemes(events, len(audio))


def _phonemes(events: list[tuple[int, int, int, str]], n_samples: int) -> list[Phoneme]:
    """A phoneme lasts until the next phoneme or clause end (WORD events can fire mid-phoneme, so they are no bound)."""
    boundaries = [(i, sample) for i, (kind, _, sample, _) in enumerate(events)
                  if kind in (_EVENT_PHONEME, _EVENT_END, _EVENT_MSG_TERMINATED)]
    out = []
    for j, (i, start) in enumerate(boundaries):
        kind, position, _, name = events[i]
        if kind == _EVENT_PHONEME:
            end = boundaries[j + 1][1] if j + 1 < len(boundaries) else n_samples
            out.append(Phoneme(name, position, start, min(max(end, start), n_samples)))
    return out


def word_spans(text: str, phonemes: list[Phoneme], duration: float) -> list[WordSpan]:
    """One span per whitespace token of `text` (punctuation kept, as in the input).

    A token's span runs from its first sounded phoneme to the end of its last one, so pauses are excluded.
    Tokens espeak spoke together with a neighbour ("for the") or not at all ("—") share the neighbour's span.
    """
    tokens = list(re.finditer(r"\S+", text))
    starts = [t.start() for t in tokens]
    spans: list[list[int] | None] = [None] * len(tokens)
    for p in phonemes:
        if p.silent:
            continue
        k = max(bisect.bisect_right(starts, p.position - 1) - 1, 0)
        span = spans[k]
        spans[k] = [p.start, p.end] if span is None else [min(span[0], p.start), max(span[1], p.end)]
    _share_with_neighbours(spans)
    out = []
    for token, span in zip(tokens, spans):
        start = min(span[0] / ESPEAK_RATE, duration - _MIN_WORD_SEC)
        end = min(max(span[1] / ESPEAK_RATE, start + _MIN_WORD_SEC), duration)
        out.append(WordSpan(token.group(), start, end))
    return out


def _share_with_neighbours(spans: list) -> None:
    """Fill silent tokens in place: first with the previous token's span (merged pairs), at the start the next's."""
    for k in range(1, len(spans)):
        if spans[k] is None:
            spans[k] = spans[k - 1]
    for k in range(len(spans) - 2, -1, -1):
        if spans[k] is None:
            spans[k] = spans[k + 1]


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> _Engine:
    """The one espeak-ng engine of this process, started on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def check_voice(voice: Voice, field: str) -> None:
    """Raise UserError naming `field` for an unknown voice or an out-of-range rate or pitch."""
    for key, (low, high) in (("rate", RATE_RANGE), ("pitch", PITCH_RANGE)):
        value = getattr(voice, key)
        if not low <= value <= high:
            raise UserError(f"{field}.{key} = {value} is outside espeak-ng's range {low}..{high}",
                            f"set {field}.{key} between {low} and {high}")
    problem = engine().voice_problem(voice.name)
    if problem:
        raise UserError(f"{field}.name = {voice.name!r}: {problem}", VOICE_FIX)


class EspeakTTS(TTSBackend):
    """Offline TTS with exact word times; every configured voice is checked when the backend is built."""

    built_before_stages = True

    def __init__(self, moshi_voice: Voice, user_voices: list[Voice], heldout_voice: Voice,
                 voices_per_fact: int | None = None) -> None:
        super().__init__(moshi_voice, user_voices, heldout_voice, voices_per_fact)
        self._checked: list[Voice] = []  # a few voices, each checked once
        self._check(self.moshi_voice, "tts.moshi_voice")
        for i, voice in enumerate(self.user_voices):
            self._check(voice, f"tts.user_voices[{i}]")
        self._check(self.heldout_voice, "tts.heldout_voice")

    def _check(self, voice: Voice, field: str) -> None:
        if voice not in self._checked:
            check_voice(voice, field)
            self._checked.append(voice)

    def synthesize(self, text: str, voice: Voice) -> Utterance:
        if not text.strip():
            raise UserError(f"tts: cannot speak empty text {text!r} (voice {voice.name!r})",
                            "every question and answer needs some words")
        self._check(voice, "voice")
        audio, phonemes = engine().speak(text, voice)
        if all(p.silent for p in phonemes):
            raise UserError(f"tts: espeak-ng spoke nothing for {text!r}", "give text with pronounceable words")
        samples = resample_to(audio.astype(np.float32) / 32768.0, ESPEAK_RATE, SAMPLE_RATE)
        return Utterance(samples, word_spans(text, phonemes, len(samples) / SAMPLE_RATE))


SCHEMAS = {("tts", "espeak_schema"): init_schema(EspeakTTS)}
