"""The tts stage: speak every line of the script once and store it as wav + word times."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.speech.audio import read_mono_wav, write_mono_wav
from moshi_knowledge.speech.schema import SAMPLE_RATE, Line, Utterance, WordSpan
from moshi_knowledge.speech.tts_base import TTSBackend


def script_fingerprint(lines: Iterable[Line]) -> str:
    """The script's content, for the cache key: the tts stage depends on what is said, not on layout knobs."""
    return json.dumps([asdict(line) for line in lines], sort_keys=True)


def synthesize_script(tts: TTSBackend, lines: list[Line], out_dir: Path) -> None:
    """Write `<line_id>.wav` (24 kHz mono) and `<line_id>.words.json` per line, plus `index.json`."""
    index = []
    for line in tqdm(lines, desc="tts", unit="line", mininterval=1.0):
        voice = tts.voice_for(line)
        utt = tts.synthesize(line.text, voice)
        save_utterance(utt, out_dir, line.id)
        index.append({**asdict(line), "voice": asdict(voice), "duration": utt.duration})
    atomic_write_json(out_dir / "index.json", index)


def save_utterance(utt: Utterance, out_dir: Path, line_id: str) -> None:
    write_mono_wav(utt.samples, out_dir / f"{line_id}.wav")
    atomic_write_json(out_dir / f"{line_id}.words.json", [asdict(w) for w in utt.words])


def load_utterance(out_dir: Path, line_id: str) -> Utterance:
    samples, rate = read_mono_wav(out_dir / f"{line_id}.wav")
    if rate != SAMPLE_RATE:
        raise ValueError(f"{out_dir / line_id}.wav is {rate} Hz, expected {SAMPLE_RATE}")
    words = [WordSpan(**w) for w in read_json(out_dir / f"{line_id}.words.json")]
    return Utterance(samples=samples, words=words)
