"""Check a written dataset before hours of training are spent on it: every problem names its file.

Beyond the moshi-finetune format itself, the Q/A conversations of a dialogue (or narration, mixed) dataset are
checked for what the experiment depends on: the question is heard only on the user's channel and the answer only
on Moshi's, and Moshi's words are where the text stream says they are. Conversations imported from another
dataset (`dataset=moshi_finetune`, no Q/A turns) are real dialogue, where both may speak at once, and narration
passages have no turn either: only their format is checked (tests/test_narration.py checks the passages' silent
user channel).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from moshi_knowledge.dataset.format import (
    CONVERSATIONS,
    EVAL_MANIFEST,
    META,
    QA_CHANNEL_LAYOUTS,
    QUESTIONS,
    TRAIN_MANIFEST,
    ConversationEntry,
    read_alignments,
    read_conversations_index,
    read_manifest,
    read_meta,
)
from moshi_knowledge.errors import UserError
from moshi_knowledge.speech.audio import read_stereo
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, USER_SPEAKER, SpeakerWord

SILENCE_DBFS = -50.0  # a channel quieter than this (RMS) over a span counts as silent
_SILENCE_RMS = 10 ** (SILENCE_DBFS / 20)
_FRAME = 1 / SAMPLE_RATE
_KNOWN_SPEAKERS = {MOSHI_SPEAKER, USER_SPEAKER}
_Problems = Iterator[str]
_Tagged = Iterator[tuple[str, str]]  # (kind of problem, message)


def validate_dataset(dataset_dir: Path) -> list[str]:
    """Every problem found, as "<file relative to the dataset>: <what is wrong>"; empty when the dataset is sound.

    Raises UserError when `dataset_dir` is not a dataset at all (no manifest and no meta.json).
    """
    root = Path(dataset_dir)
    if not root.is_dir() or not any((root / name).exists() for name in (TRAIN_MANIFEST, EVAL_MANIFEST, META)):
        raise UserError(
            f"{root} is not a dataset folder (no {TRAIN_MANIFEST}, {EVAL_MANIFEST} or {META})",
            fix="pass the dataset/ folder that the dataset stage wrote",
        )
    problems: list[str] = []
    manifests = {
        split: _read_manifest(root, name, problems)
        for split, name in (("train", TRAIN_MANIFEST), ("eval", EVAL_MANIFEST))
    }
    layout = _read_layout(root, problems)
    entries = _read_index(root, manifests, problems)
    for rows in manifests.values():
        for row in rows:
            problems += _check_conversation(root, row, entries.get(row["path"]), layout)
    problems += _check_questions(root)
    return problems


def count_conversations(dataset_dir: Path) -> int:
    root = Path(dataset_dir)
    return sum(len(read_manifest(root / name)) for name in (TRAIN_MANIFEST, EVAL_MANIFEST) if (root / name).exists())


def _read_manifest(root: Path, name: str, problems: list[str]) -> list[dict]:
    if not (root / name).is_file():
        problems.append(f"{name}: missing")
        return []
    try:
        rows = read_manifest(root / name)
    except UserError as e:
        problems.append(f"{name}: {e.message}")
        return []
    if name == TRAIN_MANIFEST and not rows:
        problems.append(f"{name}: no conversations to train on")
    return rows


def _read_layout(root: Path, problems: list[str]) -> str | None:
    try:
        return read_meta(root / META).layout
    except FileNotFoundError:
        problems.append(f"{META}: missing (it says which layout the dataset has)")
    except UserError as e:
        problems.append(f"{META}: {e.message}")
    return None


def _read_index(root: Path, manifests: dict[str, list[dict]], problems: list[str]) -> dict[str, ConversationEntry]:
    """conversations.json by path; each entry must match a manifest row of its split."""
    try:
        entries = read_conversations_index(root / CONVERSATIONS)
    except FileNotFoundError:
        problems.append(f"{CONVERSATIONS}: missing (it says where each Q/A turn sits)")
        return {}
    except UserError as e:
        problems.append(f"{CONVERSATIONS}: {e.message}")
        return {}
    split_of = {row["path"]: split for split, rows in manifests.items() for row in rows}
    for entry in entries:
        if split_of.get(entry.path) != entry.split:
            problems.append(f"{CONVERSATIONS}: {entry.path} ({entry.split}) is not in {entry.split}.jsonl")
    for path in split_of.keys() - {e.path for e in entries}:
        problems.append(f"{CONVERSATIONS}: no entry for {path}")
    return {e.path: e for e in entries}


def _check_conversation(root: Path, row: dict, entry: ConversationEntry | None, layout: str | None) -> list[str]:
    rel = row["path"]
    wav = root / rel
    if Path(rel).is_absolute():
        return [f"{rel}: manifest path is absolute; it must be relative to the dataset folder"]
    if not wav.is_file():
        return [f"{rel}: listed in a manifest but missing"]
    format_problems = _wav_format(wav, channels=2)
    if format_problems:
        return [f"{rel}: {p}" for p in format_problems]
    left, right, _ = read_stereo(wav)
    duration = len(left) / SAMPLE_RATE
    problems = []
    if abs(row["duration"] - duration) > _FRAME:
        problems.append(f"{rel}: manifest duration {row['duration']:.6f} s, but the wav lasts {duration:.6f} s")
    json_rel = str(Path(rel).with_suffix(".json"))
    try:
        words = read_alignments(root / json_rel)
    except FileNotFoundError:
        return [*problems, f"{json_rel}: missing (every wav needs its alignment JSON)"]
    except UserError as e:
        return [*problems, f"{json_rel}: {e.message}"]
    problems += _first_of(json_rel, _alignment_problems(words, duration))
    if entry is not None:
        problems += [f"{CONVERSATIONS}: {rel}: {p}" for p in _turn_span_problems(entry, duration)]
    # an imported conversation has no Q/A turns, nor does a narration (its user channel is checked by the tests)
    if layout in QA_CHANNEL_LAYOUTS and (entry is None or entry.turns):
        if entry is not None:
            problems += [f"{rel}: {p}" for p in _channel_separation(entry, left, right)]
        problems += _first_of(rel, _moshi_words_on_left(words, left, right))
    return problems


def _wav_format(path: Path, channels: int) -> list[str]:
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as e:
        return [f"not a readable wav ({e})"]
    problems = []
    if info.channels != channels:
        problems.append(f"{info.channels} channel(s), expected {'stereo' if channels == 2 else 'mono'}")
    if info.samplerate != SAMPLE_RATE:
        problems.append(f"sample rate {info.samplerate} Hz, expected {SAMPLE_RATE}")
    return problems


def _alignment_problems(words: list[SpeakerWord], duration: float) -> _Tagged:
    if not any(w.speaker == MOSHI_SPEAKER for w in words):
        yield "empty", f"no {MOSHI_SPEAKER} words: Moshi's text stream would be empty"
    for prev, w in zip([None, *words], words):
        if prev is not None and w.start < prev.start:
            yield "order", f"not sorted by start: {w.word!r} at {w.start:.3f} s after {prev.word!r} at {prev.start:.3f}"
        if not 0 <= w.start < w.end <= duration + _FRAME:
            yield "span", f"bad span for {w.word!r}: [{w.start:.3f}, {w.end:.3f}] s (audio lasts {duration:.3f} s)"
        if w.speaker not in _KNOWN_SPEAKERS:
            yield "speaker", f"unknown speaker {w.speaker!r} for {w.word!r} (expected {sorted(_KNOWN_SPEAKERS)})"


def _turn_span_problems(entry: ConversationEntry, duration: float) -> _Problems:
    for turn in entry.turns:
        for name, (start, end) in (("question", turn.question), ("answer", turn.answer)):
            if not 0 <= start < end <= duration + _FRAME:
                yield f"turn {turn.qid} {name} span [{start:.3f}, {end:.3f}] s is outside the audio ({duration:.3f} s)"


def _channel_separation(entry: ConversationEntry, left: np.ndarray, right: np.ndarray) -> _Problems:
    """The question must reach Moshi only on the user's channel, and the answer come only from Moshi."""
    for turn in entry.turns:
        for name, span, channel, label in (
            ("question", turn.question, left, "left (Moshi)"),
            ("answer", turn.answer, right, "right (user)"),
        ):
            level = _dbfs(channel, *span)
            if level > SILENCE_DBFS:
                yield (
                    f"turn {turn.qid} {name} [{span[0]:.3f}, {span[1]:.3f}] s: the {label} channel is not silent "
                    f"({level:.1f} dBFS > {SILENCE_DBFS:.0f})"
                )


def _moshi_words_on_left(words: list[SpeakerWord], left: np.ndarray, right: np.ndarray) -> _Tagged:
    for w in words:
        if w.speaker != MOSHI_SPEAKER:
            continue
        where = f"{MOSHI_SPEAKER} word {w.word!r} [{w.start:.3f}, {w.end:.3f}] s"
        if _dbfs(left, w.start, w.end) <= SILENCE_DBFS:
            yield "silent", f"{where} is silent on the left channel"
        if _dbfs(right, w.start, w.end) > SILENCE_DBFS:
            yield "bleed", f"{where} has sound on the right channel"


def _check_questions(root: Path) -> list[str]:
    try:
        data = json.loads((root / QUESTIONS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{QUESTIONS}: missing"]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"{QUESTIONS}: not valid JSON ({e})"]
    questions = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        return [f"{QUESTIONS}: expected an object with a 'questions' list"]
    problems = []
    for i, q in enumerate(questions):
        audio = q.get("audio") if isinstance(q, dict) else None
        if not isinstance(audio, str):
            problems.append(f"{QUESTIONS}: question {i} has no 'audio' path")
        elif not (root / audio).is_file():
            problems.append(f"{audio}: missing (referenced by {QUESTIONS} question {i}, id {q.get('id')!r})")
        else:
            problems += [f"{audio}: {p}" for p in _wav_format(root / audio, channels=1)]
    return problems


def _first_of(file: str, problems: Iterable[tuple[str, str]]) -> list[str]:
    """One line per file and kind of problem: a misaligned file would otherwise print a line for every word."""
    by_kind: dict[str, list[str]] = {}
    for kind, message in problems:
        by_kind.setdefault(kind, []).append(message)
    return [
        f"{file}: {found[0]}" + (f" (and {len(found) - 1} more like it)" if len(found) > 1 else "")
        for found in by_kind.values()
    ]


def _dbfs(samples: np.ndarray, start: float, end: float) -> float:
    span = samples[int(start * SAMPLE_RATE) : max(int(end * SAMPLE_RATE), int(start * SAMPLE_RATE) + 1)]
    rms = float(np.sqrt(np.mean(np.square(span, dtype=np.float64)))) if len(span) else 0.0
    return 20 * np.log10(max(rms, 1e-10))

