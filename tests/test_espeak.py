"""espeak-ng backend on real speech: format, word times against the audio, voices, rate/pitch, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import librosa
import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import compose_cfg
from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.espeak import EspeakTTS
from moshi_knowledge.speech.schema import SAMPLE_RATE, Utterance, Voice

TRICKY = ("In 1984, it's 3,500 people for the king; don't forget $5 — O'Brien's café! "
          "Then Queen Maren, who ruled Aldon, was crowned.")


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    return instantiate(compose_cfg(["tts=espeak"]).tts)  # the configured voices


@pytest.fixture(scope="module")
def tricky(tts: EspeakTTS) -> Utterance:
    return tts.synthesize(TRICKY, tts.moshi_voice)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def cut(u: Utterance, start: float, end: float) -> np.ndarray:
    return u.samples[int(start * SAMPLE_RATE):int(end * SAMPLE_RATE)]


def median_f0(u: Utterance) -> float:
    f0, voiced, _ = librosa.pyin(u.samples, fmin=50, fmax=400, sr=SAMPLE_RATE, frame_length=1024)
    return float(np.nanmedian(f0[voiced]))


def test_output_is_24k_float32_with_one_span_per_token(tricky: Utterance) -> None:
    assert tricky.samples.dtype == np.float32 and tricky.samples.ndim == 1
    assert 0.05 < np.abs(tricky.samples).max() <= 1.0
    # 24 kHz: the duration matches what espeak speaks at this rate (~3 words/s), not 22.05/24 of it
    assert [w.word for w in tricky.words] == TRICKY.split()
    starts = [w.start for w in tricky.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start < w.end <= tricky.duration for w in tricky.words)


def test_sample_rate_is_24k(tts: EspeakTTS) -> None:
    """The last word ends at the end of the audio: times (seconds) and samples (24 kHz) agree."""
    u = tts.synthesize("A single sentence ends here", tts.moshi_voice)
    assert u.duration - u.words[-1].end < 0.05
    assert len(u.samples) == pytest.approx(u.words[-1].end * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)


def test_word_spans_land_on_energy(tricky: Utterance) -> None:
    inside = [rms(cut(tricky, w.start, w.end)) for w in tricky.words]
    assert min(inside) > 0.02
    gaps = [(a.end, b.start) for a, b in zip(tricky.words, tricky.words[1:]) if b.start - a.end > 0.05]
    assert len(gaps) >= 4  # the pauses at , ; — ! ,
    for start, end in gaps:
        assert rms(cut(tricky, start, end)) < 0.002 < np.median(inside) / 20


def test_numbers_apostrophes_and_merged_words(tricky: Utterance) -> None:
    spans = {w.word: w for w in tricky.words}
    assert spans["1984,"].end - spans["1984,"].start > 0.8  # "nineteen eighty-four" in one token
    assert spans["3,500"].end - spans["3,500"].start > 0.8
    for token in ("it's", "don't", "O'Brien's", "$5"):
        assert rms(cut(tricky, spans[token].start, spans[token].end)) > 0.02
    # espeak speaks "for the" as one word: both tokens share its span
    assert (spans["for"].start, spans["for"].end) == (spans["the"].start, spans["the"].end)


def test_rate_changes_duration(tts: EspeakTTS) -> None:
    text = "The old mill stands beside the river."
    slow = tts.synthesize(text, Voice("en", rate=100))
    fast = tts.synthesize(text, Voice("en", rate=250))
    assert slow.duration > 1.8 * fast.duration


def test_pitch_changes_f0(tts: EspeakTTS) -> None:
    text = "Where was the queen crowned?"
    low = median_f0(tts.synthesize(text, Voice("en", pitch=20)))
    high = median_f0(tts.synthesize(text, Voice("en", pitch=80)))
    assert 60 < low < 95 and high > 1.5 * low


def test_default_voices_exist_and_differ(tts: EspeakTTS) -> None:
    """The variants in conf/tts/espeak.yaml are applied: female variants speak far higher than Moshi's voice."""
    text = "Who ruled the city of Aldon?"
    moshi = median_f0(tts.synthesize(text, tts.moshi_voice))
    female = [v for v in [*tts.user_voices, tts.heldout_voice] if "+f" in v.name]
    assert female and all(median_f0(tts.synthesize(text, v)) > 1.8 * moshi for v in female)


def test_threads_share_the_engine_safely(tts: EspeakTTS) -> None:
    """Unguarded, the shared callback would mix chunks of different texts; guarded, each clip is whole."""
    texts = [f"Question number {i} is about the river{' Aldon' * i}." for i in range(6)]
    expected = [tts.synthesize(t, tts.user_voices[i % 3]) for i, t in enumerate(texts)]
    got: dict[int, Utterance] = {}

    def work(i: int) -> None:
        got[i] = tts.synthesize(texts[i], tts.user_voices[i % 3])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):  # pitch flutter carries over between calls: lengths agree to a few %
        assert got[i].duration == pytest.approx(want.duration, rel=0.05)
        assert [w.word for w in got[i].words] == texts[i].split()


def test_fresh_processes_reproduce_the_same_audio() -> None:
    script = ("import hashlib; from moshi_knowledge.speech.espeak import EspeakTTS; "
              "from moshi_knowledge.speech.schema import Voice; v = Voice('en+m3'); t = EspeakTTS(v, [v], v); "
              "print(hashlib.sha1(b''.join(t.synthesize(f'Item {i} was crowned.', t.moshi_voice).samples.tobytes() "
              "for i in range(3))).hexdigest())")
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].strip()) == 40


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_a_user_error(tts: EspeakTTS, text: str) -> None:
    with pytest.raises(UserError, match="empty"):
        tts.synthesize(text, tts.moshi_voice)


@pytest.mark.parametrize("name", ["en-gb", "nosuchvoice", "en+nosuchvariant"])
def test_unknown_voice_is_a_user_error(tts: EspeakTTS, name: str) -> None:
    with pytest.raises(UserError, match=re.escape(name)) as err:
        tts.synthesize("Hello", Voice(name))
    assert "en+m3" in err.value.fix


@pytest.mark.parametrize(("field", "voice"), [("rate", Voice("en", rate=20)), ("pitch", Voice("en", pitch=150))])
def test_out_of_range_voice_settings_name_the_field(tts: EspeakTTS, field: str, voice: Voice) -> None:
    with pytest.raises(UserError, match=field):
        tts.synthesize("Hello", voice)


def test_bad_configured_voice_fails_at_construction() -> None:
    with pytest.raises(UserError, match=r"tts\.user_voices\[1\]\.name"):
        EspeakTTS(Voice("en"), [Voice("en-us"), Voice("en-gb")], Voice("en+f4"))
