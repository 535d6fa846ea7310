"""Audio in and out: 16-bit PCM wav files at 24 kHz (utterances mono, conversations stereo) and the
sample-rate conversion shared by the TTS backends and aligners."""

from __future__ import annotations

import io
import warnings
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from moshi_knowledge.io_utils import atomic_write_bytes
from moshi_knowledge.speech.schema import SAMPLE_RATE

with warnings.catch_warnings():
    # pydub warns at import that ffmpeg is missing (needed only for compressed formats, never for wav) and
    # that audioop goes away in Python 3.13 (the project pins <3.13): neither concerns what we do with it.
    warnings.simplefilter("ignore", RuntimeWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from pydub import AudioSegment

_INT16_SCALE = 32768  # soundfile reads PCM_16 as int / 32768, so writing with the same scale round-trips


def resample_to(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (exact for the rational ratios between audio rates), clipped to [-1, 1]:
    the filter can overshoot full scale a little on peaks."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # 0.7 s to import: not on the config path (completion, --help)

    g = gcd(rate, target)
    return np.clip(resample_poly(samples, target // g, rate // g), -1.0, 1.0).astype(np.float32)


def write_mono_wav(samples: np.ndarray, path: Path) -> None:
    """A 24 kHz 16-bit mono wav: every utterance the tts stage speaks (and so every question's audio)."""
    buffer = io.BytesIO()
    _mono_segment(samples).export(buffer, format="wav")
    atomic_write_bytes(path, buffer.getvalue())


def write_stereo_wav(left: np.ndarray, right: np.ndarray, path: Path) -> None:
    """A 24 kHz 16-bit stereo wav, `left` in channel 0 (a conversation: Moshi left, the user right)."""
    if len(left) != len(right):
        raise ValueError(f"{path}: left has {len(left)} samples, right {len(right)}")
    # pydub interleaves the channels; equal frame counts (checked above) keep them in sync.
    stereo = AudioSegment.from_mono_audiosegments(_mono_segment(left), _mono_segment(right))
    buffer = io.BytesIO()
    stereo.export(buffer, format="wav")
    atomic_write_bytes(path, buffer.getvalue())


def read_mono_wav(path: Path) -> tuple[np.ndarray, int]:
    data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    if data.shape[1] != 1:
        raise ValueError(f"{path}: {data.shape[1]} channels, expected mono")
    return data[:, 0].copy(), sample_rate


def read_stereo(wav_path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(left, right, sample_rate) as float32 in [-1, 1)."""
    data, sample_rate = sf.read(wav_path, dtype="float32", always_2d=True)
    if data.shape[1] != 2:
        raise ValueError(f"{wav_path}: {data.shape[1]} channel(s), expected stereo")
    return data[:, 0].copy(), data[:, 1].copy(), sample_rate


def _mono_segment(samples: np.ndarray) -> AudioSegment:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1 or not np.isfinite(samples).all():
        raise ValueError(f"audio must be 1-D and finite, got shape {samples.shape}")
    pcm = np.clip(np.round(samples * _INT16_SCALE), -_INT16_SCALE, _INT16_SCALE - 1).astype("<i2")
    return AudioSegment(data=pcm.tobytes(), sample_width=2, frame_rate=SAMPLE_RATE, channels=1)
