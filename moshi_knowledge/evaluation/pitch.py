"""Voice drift: the median F0 of Moshi's generated speech, measured with librosa's pYIN pitch tracker.

The published attempt's model drifted from Moshi's voice to the TTS voice it was finetuned on; the median
F0 of what the model says, compared with its own step-0 speech and with the training Moshi voice, makes
such a drift visible as a number (in Hz and in semitones).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path

import librosa
import numpy as np
from joblib import Parallel, delayed

from moshi_knowledge.dataset.format import CONVERSATIONS, read_alignments, read_conversations_index
from moshi_knowledge.speech.audio import read_stereo
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE

_TRACK_RATE = 16_000  # pYIN cost grows with the rate; speech F0 needs far less than 24 kHz
_FMIN, _FMAX = 50.0, 500.0  # covers low male to high female/child voices
_FRAME = 1024  # 64 ms at 16 kHz: more than two periods of the lowest F0


def median_f0(clips: Iterable[np.ndarray], sample_rate: int) -> float:
    """Median F0 in Hz over the voiced frames of all clips pooled; NaN when none is voiced.

    pYIN runs on the CPU at 0.1-0.2 s per second of audio, mostly in a Viterbi pass that holds the GIL, so the
    clips are tracked in worker processes, on half the cores: recall scores multiple choice meanwhile, and the
    process feeding the GPU keeps cores of its own. Each clip is tracked on its own either way, so the numbers
    equal a one-after-the-other run.
    """
    clips = [np.asarray(clip, dtype=np.float32) for clip in clips]
    jobs = min(len(clips), max(1, (os.cpu_count() or 1) // 2))
    if jobs > 1:
        compile_pyin()
    voiced = Parallel(n_jobs=jobs)(delayed(_voiced_f0)(clip, sample_rate) for clip in clips) if clips else []
    pooled = np.concatenate(voiced) if voiced else np.zeros(0)
    return float(np.median(pooled)) if len(pooled) else float("nan")


def semitones(f0: float, reference: float) -> float:
    """Pitch difference in semitones (12 per octave), positive when `f0` is higher; NaN if either is unknown."""
    if not (f0 > 0 and reference > 0):
        return float("nan")
    return 12.0 * math.log2(f0 / reference)


@functools.cache
def compile_pyin() -> None:
    """Compile librosa's numba kernels here, once, before any worker does.

    librosa caches them on disk, and numba writes a kernel's cache files non-atomically: workers compiling at the
    same time can load each other's halves and crash (SIGSEGV, seen with 16 workers on a fresh install). With the
    cache written first, workers only read it. Recall calls it while it sets up, since compiling holds the GIL
    for seconds that the first evaluation would otherwise lose (with one worker the kernels compile at first use
    anyway, so it costs nothing more).
    """
    tone = np.sin(2 * np.pi * 120.0 * np.arange(4 * _FRAME) / _TRACK_RATE).astype(np.float32)
    _voiced_f0(tone, _TRACK_RATE)


def _voiced_f0(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    if sample_rate != _TRACK_RATE:
        samples = librosa.resample(samples, orig_sr=sample_rate, target_sr=_TRACK_RATE)
    if len(samples) < _FRAME or not np.isfinite(samples).all() or not np.any(samples):
        return np.zeros(0)
    f0, voiced, _ = librosa.pyin(samples, fmin=_FMIN, fmax=_FMAX, sr=_TRACK_RATE, frame_length=_FRAME)
    return f0[voiced & np.isfinite(f0)]


def training_voice_f0(dataset_dir: Path, max_clips: int = 32) -> float:
    """Median F0 of Moshi's speech in the training conversations: the voice the finetuned model should keep.

    That speech is the answers of the Q/A turns; a conversation without turns (imported by `dataset=moshi_finetune`,
    or a narration passage) gives its Moshi words, one clip per conversation."""
    clips = []
    for entry in read_conversations_index(Path(dataset_dir) / CONVERSATIONS):
        if entry.split != "train":
            continue
        wav = Path(dataset_dir) / entry.path
        left, _, rate = read_stereo(wav)
        spans = [t.answer for t in entry.turns]
        if spans:
            clips += [left[round(s * rate):round(e * rate)] for s, e in spans]
        else:
            words = [w for w in read_alignments(wav.with_suffix(".json")) if w.speaker == MOSHI_SPEAKER]
            clips += [np.concatenate([left[round(w.start * rate):round(w.end * rate)] for w in words])] if words else []
        if len(clips) >= max_clips:
            break
    return median_f0(clips[:max_clips], SAMPLE_RATE)
