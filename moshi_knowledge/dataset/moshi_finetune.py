"""`dataset=moshi_finetune dataset.path=...`: train on an existing dataset in kyutai-labs/moshi-finetune's format.

`dataset.path` is a folder holding one jsonl manifest of any name (or that manifest itself): one
{"path", "duration"} row per conversation, the path relative to the manifest's folder or absolute; each wav is
stereo (left = Moshi, right = the user) with a JSON of word times beside it. Its conversations become the run's
training split, copied into the dataset stage's output (resampled to 24 kHz where they are not), so the stage's
output stays whole if the folder later changes; the folder's identity is part of the stage's cache key.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from moshi_knowledge.dataset.format import read_alignments, read_manifest, write_alignments
from moshi_knowledge.dataset.source import DatasetSource, Written
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.audio import read_stereo, resample_to, write_stereo_wav
from moshi_knowledge.speech.layout_base import Aligner
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, Conversation, SpeakerWord

log = logging.getLogger(__name__)

SETTING = "dataset.path"
IMPORTED = "imported.json"  # in the dataset stage's output: where each training conversation came from
# Other tools round manifest durations; a larger difference means the row describes another file.
DURATION_TOLERANCE_SEC = 0.05
_SHOWN = 20  # problems listed in the error before "... and N more"


@dataclass(frozen=True)
class _Row:
    line: int  # in the manifest, from 1
    listed: str  # the path as the manifest gives it
    wav: Path
    duration: float


class MoshiFinetuneDataset(DatasetSource):
    """The `dataset=moshi_finetune` option. Building it only finds the manifest; `check` (run by the preflight)
    reads every wav's header and alignment, so a bad file costs a second rather than the stages before it."""

    def __init__(self, path: str) -> None:
        self.manifest = find_manifest(Path(path).expanduser())

    def rows(self) -> list[_Row]:
        """The manifest's rows, each wav resolved against the manifest's folder."""
        found = read_manifest(self.manifest)
        return [_Row(i, r["path"], self.manifest.parent / r["path"], float(r["duration"]))
                for i, r in enumerate(found, start=1)]

    def problems(self) -> list[str]:
        """Every problem, as "<path as listed>: <what is wrong>"; empty when the dataset can be trained on."""
        try:
            rows = self.rows()
        except UserError as e:
            return [e.message]
        if not rows:
            return [f"{self.manifest}: no conversations to train on"]
        return [p for row in rows for p in _row_problems(row, self.manifest.name)]

    def check(self) -> None:
        problems = self.problems()
        if problems:
            more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise UserError(
                f"{SETTING}={self.manifest.parent}: {len(problems)} problem(s) in {self.manifest.name}:\n  "
                + "\n  ".join(problems[:_SHOWN]) + more,
                f"fix the files named (python -m moshi_knowledge.validate {self.manifest.parent} --moshi-finetune "
                "lists them all), or point dataset.path at another dataset")

    def identity(self) -> str:
        """The manifest's bytes and each wav's and alignment's size and mtime: a changed dataset is a new key,
        without reading hours of audio on every run."""
        h = hashlib.sha256(self.manifest.read_bytes())
        for row in self.rows():
            for path in (row.wav, row.wav.with_suffix(".json")):
                stat = path.stat()
                h.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return h.hexdigest()

    def write_train(self, laid_out: list[Conversation], aligner: Aligner, out: Path) -> list[Written]:
        """Copy each conversation as `conv/train-<n>.wav` (24 kHz as is, another rate resampled) with its Moshi
        words; the layout's training conversations are not used."""
        written, imported, resampled = [], [], []
        for n, row in enumerate(tqdm(self.rows(), desc="dataset import", unit="conv", mininterval=1.0)):
            rel = f"conv/train-{n:05d}.wav"
            rate = sf.info(row.wav).samplerate
            frames = _copy_at_24k(row.wav, out / rel, rate)
            if rate != SAMPLE_RATE:
                resampled.append(f"{row.listed} ({rate} Hz)")
            duration = frames / SAMPLE_RATE
            write_alignments((out / rel).with_suffix(".json"), _moshi_words(read_alignments(
                row.wav.with_suffix(".json")), duration))
            written.append(Written({"path": rel, "duration": duration}, {"path": rel, "split": "train", "turns": []}))
            imported.append({"path": rel, "source": str(row.wav.resolve()), "sample_rate": rate})
        atomic_write_json(out / IMPORTED, {"manifest": str(self.manifest.resolve()), "conversations": imported})
        if resampled:
            shown = ", ".join(resampled[:5]) + (f" and {len(resampled) - 5} more" if len(resampled) > 5 else "")
            log.info("%s: resampled %d of %d conversation(s) to %d Hz: %s", SETTING, len(resampled), len(written),
                     SAMPLE_RATE, shown)
        return written


def find_manifest(path: Path) -> Path:
    """The one manifest `path` names: a .jsonl file, or the only *.jsonl in a folder."""
    if path.is_file() and path.suffix == ".jsonl":
        return path
    fix = "point dataset.path at a folder holding one *.jsonl manifest of moshi-finetune's format, or at the manifest"
    if not path.is_dir():
        raise UserError(f"{SETTING}={path}: {'not a .jsonl manifest' if path.exists() else 'no such folder'}", fix)
    manifests = sorted(path.glob("*.jsonl"))
    if not manifests:
        raise UserError(f"{SETTING}={path}: no *.jsonl manifest in this folder", fix)
    if len(manifests) > 1:
        names = ", ".join(m.name for m in manifests)
        raise UserError(f"{SETTING}={path}: {len(manifests)} manifests ({names}); which one to train on is unclear",
                        f"name the manifest itself, e.g. {SETTING}={manifests[0]}")
    return manifests[0]


def _row_problems(row: _Row, manifest: str) -> list[str]:
    where = row.listed
    if not row.wav.is_file():
        return [f"{where}: listed in {manifest} line {row.line} but missing"]
    try:
        info = sf.info(row.wav)
    except (sf.LibsndfileError, RuntimeError) as e:
        return [f"{where}: not a readable wav ({e})"]
    if info.channels != 2:
        return [f"{where}: {info.channels} channel(s), expected stereo (left = Moshi, right = the user)"]
    problems = []
    duration = info.frames / info.samplerate
    if abs(row.duration - duration) > DURATION_TOLERANCE_SEC:
        problems.append(f"{where}: {manifest} line {row.line} says {row.duration:.3f} s, "
                        f"but the wav lasts {duration:.3f} s")
    json_path = row.wav.with_suffix(".json")
    json_where = str(Path(row.listed).with_suffix(".json"))
    if not json_path.is_file():
        return [*problems, f"{json_where}: missing (every wav needs its alignment JSON beside it)"]
    try:
        words = read_alignments(json_path)
    except UserError as e:
        return [*problems, f"{json_where}: {e.message.removeprefix(f'{json_path}: ')}"]
    spoken = [w for w in words if w.speaker == MOSHI_SPEAKER]
    if not any(w.start < min(w.end, duration) for w in spoken):
        problems.append(f"{json_where}: no {MOSHI_SPEAKER} word spoken within the audio, so Moshi's text stream "
                        "would be empty")
    outside = [w for w in spoken if not 0 <= w.start <= w.end <= duration + DURATION_TOLERANCE_SEC]
    if outside:
        w = outside[0]
        problems.append(f"{json_where}: {len(outside)} word span(s) outside the {duration:.3f} s of audio, "
                        f"the first {w.word!r} [{w.start:.3f}, {w.end:.3f}] s")
    return problems


def _copy_at_24k(source: Path, dest: Path, rate: int) -> int:
    """Copy a 24 kHz wav byte for byte, or write it resampled to 24 kHz; returns its frames at 24 kHz."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if rate == SAMPLE_RATE:
        shutil.copyfile(source, dest)
        return sf.info(dest).frames
    left, right, _ = read_stereo(source)
    left, right = (resample_to(c, rate, SAMPLE_RATE) for c in (left, right))
    write_stereo_wav(left, right, dest)
    return len(left)


def _moshi_words(words: list[SpeakerWord], duration: float) -> list[SpeakerWord]:
    """Moshi's words, sorted, within the audio: the only words its text stream reads (moshi-finetune's
    `keep_main_only`). Spans end at the audio's end; a word left with no duration would never be read."""
    kept = [SpeakerWord(w.word, w.start, min(w.end, duration), w.speaker) for w in words if w.speaker == MOSHI_SPEAKER]
    return sorted((w for w in kept if w.start < w.end), key=lambda w: w.start)


def describe(dataset: MoshiFinetuneDataset) -> str:
    """The validator's summary of a sound dataset: conversations, minutes of audio and sample rates."""
    rows = dataset.rows()
    rates: dict[int, int] = {}
    for row in rows:
        rate = sf.info(row.wav).samplerate
        rates[rate] = rates.get(rate, 0) + 1
    minutes = sum(r.duration for r in rows) / 60
    note = ", ".join(f"{n} at {r} Hz" + ("" if r == SAMPLE_RATE else " (resampled on import)")
                     for r, n in sorted(rates.items(), key=lambda item: (item[0] != SAMPLE_RATE, item[0])))
    return f"OK: {len(rows)} conversations, {minutes:.1f} min of audio ({note})"


SCHEMAS = {("dataset", "moshi_finetune_schema"): init_schema(MoshiFinetuneDataset)}
