"""tts=kokoro and align=whisperx: conversion of their documented outputs, errors, and (if installed) the real thing.

The extras and their weights are usually absent (no downloads here), so the conversion tests build the
libraries' output structures by hand, and the integration tests skip with the reason when they can't run.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.kokoro import KokoroTTS, utterance_from_chunks
from moshi_knowledge.speech.schema import (
    MOSHI_SPEAKER,
    SAMPLE_RATE,
    USER_SPEAKER,
    Conversation,
    SpeakerWord,
    Voice,
    WordSpan,
)
from moshi_knowledge.speech.whisperx_align import WhisperXAligner, speaker_words

VOICES = {"moshi_voice": Voice("am_michael"), "user_voices": [Voice("af_heart")], "heldout_voice": Voice("bm_george")}


def tone(seconds: float, rate: int = 24_000, hz: float = 180.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def token(text: str, whitespace: str, start: float | None, end: float | None) -> SimpleNamespace:
    return SimpleNamespace(text=text, whitespace=whitespace, start_ts=start, end_ts=end)


# kokoro 0.9 `KPipeline.__call__` yields one `KPipeline.Result` per text chunk, with
#   .tokens: list[misaki MToken] -- .text, .whitespace (the text after the token, "" or " "),
#            .phonemes, .start_ts / .end_ts in seconds from the start of THIS chunk (None if untimed);
#            punctuation is its own token with whitespace "" on the word before it;
#   .audio:  torch.FloatTensor, mono, 24 kHz (KModel.Output.audio).
def kokoro_results() -> list[SimpleNamespace]:
    first = [token("Hello", " ", 0.10, 0.40), token("there", "", 0.45, 0.70), token(",", " ", 0.70, 0.75),
             token("traveller", "", 0.80, 1.30), token(".", " ", 1.30, 1.35)]
    second = [token("Welcome", " ", 0.05, 0.60), token("—", " ", None, None), token("home", "", 0.70, 0.95),
              token(".", "", 0.95, 1.00)]
    return [SimpleNamespace(tokens=first, audio=torch.from_numpy(tone(1.5))),
            SimpleNamespace(tokens=second, audio=torch.from_numpy(tone(1.1)))]


def test_kokoro_chunks_become_one_utterance_with_word_spans() -> None:
    utt = utterance_from_chunks(kokoro_results())
    assert utt.samples.dtype == np.float32 and len(utt.samples) == int(2.6 * SAMPLE_RATE)
    assert utt.words == [
        WordSpan("Hello", 0.10, 0.40),
        WordSpan("there,", 0.45, 0.75),  # punctuation joins its word
        WordSpan("traveller.", 0.80, 1.35),
        WordSpan("Welcome", 1.55, 2.10),  # second chunk shifted by the first chunk's 1.5 s; the dash is dropped
        WordSpan("home.", 2.20, 2.50),
    ]


def test_kokoro_untimed_word_fills_the_gap_between_neighbours() -> None:
    tokens = [token("Queen", " ", 0.1, 0.4), token("Ysolde", " ", None, None), token("ruled", "", 0.9, 1.2)]
    utt = utterance_from_chunks([SimpleNamespace(tokens=tokens, audio=tone(1.5))])
    assert utt.words[1] == WordSpan("Ysolde", 0.4, 0.9)


def test_kokoro_audio_at_another_rate_is_resampled_with_times_kept() -> None:
    tokens = [token("Kest", "", 0.2, 0.6)]
    utt = utterance_from_chunks([SimpleNamespace(tokens=tokens, audio=tone(1.0, rate=22_050))], rate=22_050)
    assert len(utt.samples) == SAMPLE_RATE and utt.words == [WordSpan("Kest", 0.2, 0.6)]
    spectrum = np.abs(np.fft.rfft(utt.samples))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(utt.samples) - 180.0) < 2.0  # same pitch after resampling


# whisperx 3.x `whisperx.align(...)` returns
#   {"segments": [{"start", "end", "text", "words": [{"word", "start", "end", "score"}, ...]}, ...],
#    "word_segments": [every segment's words, in order]}
# Times are seconds in the audio given to it; a word it could not align (e.g. some numerals) has no
# "start"/"end" keys.
def whisperx_result() -> dict:
    words = [
        {"word": "Who", "start": 0.31, "end": 0.52, "score": 0.9},
        {"word": " founded", "start": 0.55, "end": 0.98, "score": 0.8},
        {"word": "1204", "score": 0.1},
        {"word": "Varn?", "start": 1.02, "end": 3.40, "score": 0.7},
    ]
    return {"segments": [{"start": 0.31, "end": 3.4, "text": "Who founded 1204 Varn?", "words": words}],
            "word_segments": [words[3], *words[:3]]}


def test_whisperx_words_are_sorted_clipped_and_untimed_dropped() -> None:
    assert speaker_words(whisperx_result(), USER_SPEAKER, duration=3.0) == [
        SpeakerWord("Who", 0.31, 0.52, USER_SPEAKER),
        SpeakerWord("founded", 0.55, 0.98, USER_SPEAKER),  # leading space stripped
        SpeakerWord("Varn?", 1.02, 3.0, USER_SPEAKER),  # clipped to the channel's duration
    ]


def test_whisperx_words_fall_back_to_segments() -> None:
    result = whisperx_result()
    del result["word_segments"]
    words = speaker_words(result, MOSHI_SPEAKER, duration=10.0)
    assert [w.word for w in words] == ["Who", "founded", "Varn?"] and {w.speaker for w in words} == {MOSHI_SPEAKER}


# ---- errors when the extras are missing ----------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("kokoro") is not None, reason="kokoro is installed")
def test_kokoro_without_the_extra_says_how_to_install() -> None:
    with pytest.raises(UserError, match="tts=kokoro: the optional extra is not installed") as info:
        KokoroTTS(**VOICES)
    assert "pip install 'moshi-knowledge[kokoro]'" in info.value.fix and "Hugging Face cache" in info.value.fix


def test_kokoro_rejects_a_voice_without_word_timestamps() -> None:
    with pytest.raises(UserError, match=r"tts.user_voices\[0\]: voice 'ef_dora' is not an English Kokoro voice"):
        KokoroTTS(**{**VOICES, "user_voices": [Voice("ef_dora")]})


@pytest.mark.skipif(importlib.util.find_spec("whisperx") is not None, reason="whisperx is installed")
def test_whisperx_without_the_extra_says_how_to_install() -> None:
    with pytest.raises(UserError, match="align=whisperx: the optional extra is not installed") as info:
        WhisperXAligner()
    assert "pip install 'moshi-knowledge[whisperx]'" in info.value.fix


def test_kokoro_and_whisperx_configs_compose() -> None:
    from conftest import compose_cfg

    cfg = compose_cfg(["tts=kokoro", "align=whisperx"])
    assert cfg.tts._target_ == "moshi_knowledge.speech.kokoro.KokoroTTS"
    assert cfg.tts.moshi_voice.name.startswith(("am_", "bm_"))  # male, like moshiko's own voice
    assert cfg.tts.heldout_voice.name not in {v.name for v in cfg.tts.user_voices}
    assert cfg.align._target_ == "moshi_knowledge.speech.whisperx_align.WhisperXAligner"


# ---- integration: only where the extras and their weights are present -------------------------------------


def _kokoro_or_skip() -> KokoroTTS:
    try:
        return KokoroTTS(**VOICES)
    except UserError as exc:
        print(f"kokoro integration skipped: {exc}")
        pytest.skip(f"kokoro unavailable: {exc.message}")


@pytest.mark.slow
def test_kokoro_speaks_with_word_times() -> None:
    torch.set_num_threads(1)
    tts = _kokoro_or_skip()
    utt = tts.synthesize("Queen Orsolya founded Valdmere.", Voice("am_michael"))
    assert utt.samples.dtype == np.float32 and utt.duration > 1.0 and np.abs(utt.samples).max() > 0.01
    assert [w.word for w in utt.words] == ["Queen", "Orsolya", "founded", "Valdmere."]
    assert all(0 <= a.start <= a.end <= b.start + 1e-6 for a, b in zip(utt.words, utt.words[1:], strict=False))
    assert utt.words[-1].end <= utt.duration


@pytest.mark.slow
def test_whisperx_aligns_both_channels() -> None:
    torch.set_num_threads(1)
    try:
        aligner = WhisperXAligner(batch_size=1)
    except UserError as exc:
        print(f"whisperx integration skipped: {exc}")
        pytest.skip(f"whisperx unavailable: {exc.message}")
    tts = _kokoro_or_skip()
    question = tts.synthesize("Who founded Valdmere?", Voice("af_heart")).samples
    answer = tts.synthesize("Queen Orsolya.", Voice("am_michael")).samples
    n = len(question) + len(answer)
    right, left = np.zeros(n, np.float32), np.zeros(n, np.float32)
    right[: len(question)], left[len(question):] = question, answer
    conv = Conversation("c0", "train", left=left, right=right)
    words = aligner.align(conv)
    assert {w.speaker for w in words} == {MOSHI_SPEAKER, USER_SPEAKER}
    assert words == sorted(words, key=lambda w: (w.start, w.end))
    assert all(0 <= w.start <= w.end <= conv.duration for w in words)
    assert all(w.start >= len(question) / SAMPLE_RATE - 0.3 for w in words if w.speaker == MOSHI_SPEAKER)
