"""The pitch tracker on real espeak speech: low- and high-pitched voices are told apart and ordered."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moshi_knowledge.evaluation.pitch import median_f0, semitones
from moshi_knowledge.speech.espeak import EspeakTTS
from moshi_knowledge.speech.schema import SAMPLE_RATE, Voice

TEXT = "The old castle stood on the hill above the river for many hundreds of years."


@pytest.fixture(scope="module")
def tts() -> EspeakTTS:
    voice = Voice("en", rate=170)
    return EspeakTTS(voice, [voice], voice)


def test_median_f0_ranks_low_and_high_espeak_pitch(tts: EspeakTTS) -> None:
    low = median_f0([tts.synthesize(TEXT, Voice("en", 170, 20)).samples], SAMPLE_RATE)
    high = median_f0([tts.synthesize(TEXT, Voice("en", 170, 90)).samples], SAMPLE_RATE)
    assert 60 < low < 110 < high < 200  # docs/tools.md: about 80 Hz at pitch 20, 153 Hz at pitch 90
    assert semitones(high, low) > 7  # well over half an octave apart


def test_silence_has_no_pitch() -> None:
    assert math.isnan(median_f0([np.zeros(SAMPLE_RATE, np.float32)], SAMPLE_RATE))
    assert math.isnan(semitones(float("nan"), 100.0))
    assert semitones(220.0, 110.0) == pytest.approx(12.0)
