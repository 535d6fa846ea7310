"""What recall is measured on: the dataset's questions.json, and Moshi-voice speech for every candidate answer.

Candidates need speech even when no answer audio is fed: their words go on the text stream at the times
Moshi's voice would say them, exactly as training places answer words, so a candidate is scored in the layout
the model was trained on. Gold answers, the distractors (other questions' gold answers) and the retain tier's own
distractors were all spoken by the tts stage; anything else is synthesized in Moshi's voice on first use.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from moshi_knowledge.dataset.format import QUESTIONS
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.speech.audio import read_mono_wav
from moshi_knowledge.speech.schema import SAMPLE_RATE, Utterance
from moshi_knowledge.speech.synthesize import load_utterance
from moshi_knowledge.speech.tts_base import TTSBackend
from moshi_knowledge.tracking.contract import HALVES, SPLIT_TIERS

_TTS_INDEX = "index.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalQuestion:
    """One entry of questions.json, with its audio path resolved."""

    id: str
    tier: str
    text: str
    audio: Path
    gold: str
    distractors: list[str]
    aliases: list[str] = field(default_factory=list)
    source_id: str | None = None
    untrained_candidates: list[str] = field(default_factory=list)  # the distractor contract's flags (qa/schema.py)
    balanced: bool = False  # its candidate set is counterbalanced within its tier (qa/balance.py)
    spiked: bool = False  # heldout_facts: its Q/A was trained on purpose (qa.spike_in, a calibration run)
    fact_ids: list[str] = field(default_factory=list)
    entity_ids: list[str] = field(default_factory=list)  # the entities it names (qa/schema.py)
    group: str | None = None  # set by load_questions: the first id among the questions of its tier sharing a fact,
    # a named entity or a gold answer
    half: str | None = None  # set by load_questions for a split tier: tune or test (contract.HALVES)
    shift_sec: float = 0.0  # silence before the question's audio (the shifted tier)

    @property
    def cluster(self) -> str:
        """The questions that share evidence count as one in intervals and paired tests: those of a tier linked by
        shared facts or named entities (`group`), else a paraphrase with the training item it rephrases."""
        return self.group or self.source_id or self.id

    @property
    def candidates(self) -> list[str]:
        """Gold first, then the distractors."""
        return [self.gold, *self.distractors]

    def samples(self) -> np.ndarray:
        """The question's audio, mono float32 at 24 kHz, after `shift_sec` of silence."""
        samples, rate = read_mono_wav(self.audio)
        if rate != SAMPLE_RATE:
            raise UserError(f"{self.audio}: {rate} Hz, expected {SAMPLE_RATE}", "rebuild the dataset")
        return np.concatenate([np.zeros(round(self.shift_sec * SAMPLE_RATE), np.float32), samples])


def load_questions(dataset_dir: Path, tiers: Sequence[str], max_per_tier: int | None = None,
                   seed: int = 0) -> list[EvalQuestion]:
    """The questions of `tiers` (in that order); with `max_per_tier`, the same random subset at every call.

    A tier the dataset lacks (Q/A from a file has no paraphrases) is skipped with a warning; none at all is an error.
    """
    path = Path(dataset_dir) / QUESTIONS
    if not path.is_file():
        raise UserError(f"{path} is missing", "run the dataset stage first (it writes questions.json)")
    entries = read_json(path)["questions"]
    present = sorted({e["tier"] for e in entries})
    if not set(tiers) & set(present):
        raise UserError(f"eval.tiers={list(tiers)}: {path} has no question of these tiers",
                        f"choose tiers among {present}")
    out: list[EvalQuestion] = []
    for tier in tiers:
        items = [_question(e, Path(dataset_dir), path) for e in entries if e["tier"] == tier]
        if not items:
            log.warning("eval.tiers: the dataset has no %r questions; that tier is not scored", tier)
            continue
        items = _grouped(items, random.Random(f"{seed}-{tier}-halves") if tier in SPLIT_TIERS else None)
        if max_per_tier is not None and len(items) > max_per_tier:
            items = sorted(random.Random(f"{seed}-{tier}").sample(items, max_per_tier), key=items.index)
        out += items
    return out


def _grouped(items: list[EvalQuestion], rng: random.Random | None) -> list[EvalQuestion]:
    """`items` with their groups (questions linked by a shared fact, a named entity or a gold answer, directly or
    through others: knowing one answer helps with every question it answers)
    and, with `rng`, each group's half: half of the groups, drawn by `rng`, tune and the rest test, so no fact and
    no entity asked about is in both halves."""
    links = [[f"fact:{f}" for f in q.fact_ids] + [f"entity:{e}" for e in q.entity_ids] + [f"gold:{q.gold.lower()}"]
             for q in items]
    column = {link: k for k, link in enumerate(sorted({link for q in links for link in q}))}
    pairs = [(i, column[link]) for i, q in enumerate(links) for link in q]
    incidence = coo_matrix((np.ones(len(pairs)), ([i for i, _ in pairs], [k for _, k in pairs])),
                           shape=(len(items), max(len(column), 1)))
    _, labels = connected_components(incidence @ incidence.T, directed=False)
    first: dict[int, str] = {}
    for q, label in zip(items, labels):
        first.setdefault(label, q.id)
    groups = list(first.values())
    tune = set(rng.sample(groups, len(groups) // 2)) if rng is not None else set()
    return [replace(q, group=first[label], half=None if rng is None else HALVES[first[label] not in tune])
            for q, label in zip(items, labels)]


def _question(entry: dict, dataset_dir: Path, path: Path) -> EvalQuestion:
    if not entry.get("distractors"):
        raise UserError(f"{path}: question {entry['id']} has no distractors, so it cannot be scored by choice",
                        "rebuild the qa stage with distractors for every question")
    return EvalQuestion(id=entry["id"], tier=entry["tier"], text=entry["text"], audio=dataset_dir / entry["audio"],
                        gold=entry["gold"], distractors=list(entry["distractors"]),
                        aliases=list(entry.get("aliases") or []), source_id=entry.get("source_id"),
                        untrained_candidates=list(entry.get("untrained_candidates") or []),
                        balanced=bool(entry.get("balanced")), spiked=bool(entry.get("spiked")),
                        fact_ids=list(entry.get("fact_ids") or []), entity_ids=list(entry.get("entity_ids") or []),
                        shift_sec=float(entry.get("shift_sec") or 0.0))


class AnswerSpeech:
    """text -> Utterance in Moshi's voice: the tts stage's answer clip if it spoke that text, else `backend`."""

    def __init__(self, tts_dir: Path | None = None, backend: TTSBackend | None = None) -> None:
        self._dir = Path(tts_dir) if tts_dir is not None else None
        self._backend = backend
        self._line_of: dict[str, str] = {}
        if self._dir is not None and (self._dir / _TTS_INDEX).is_file():
            for line in read_json(self._dir / _TTS_INDEX):
                if line.get("role") == "moshi":
                    self._line_of.setdefault(line["text"], line["id"])
        self._cache: dict[str, Utterance] = {}

    def __call__(self, text: str) -> Utterance:
        if text not in self._cache:
            self._cache[text] = self._speak(text)
        return self._cache[text]

    def _speak(self, text: str) -> Utterance:
        if text in self._line_of:
            return load_utterance(self._dir, self._line_of[text])
        if self._backend is None:
            raise UserError(f"eval: no Moshi-voice speech for the candidate answer {text!r}",
                            "pass the tts backend so that candidates the tts stage never spoke can be synthesized")
        return self._backend.synthesize(text, self._backend.moshi_voice)
