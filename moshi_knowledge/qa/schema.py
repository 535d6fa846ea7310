"""Questions of every tier, saved as `qa.json` and validated on load."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, Field, model_validator

from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.qa.balance import is_balanced

Tier = Literal["train", "eval", "paraphrase", "retain", "unseen_facts", "unseen_voice", "unseen_wording", "shifted",
               "heldout_facts"]
# Trained facts asked with one thing changed (qa/facts.py), each tier's source_id naming the training item.
CAUSE_TIERS = ("unseen_voice", "unseen_wording", "shifted")


TIERS: tuple[Tier, ...] = get_args(Tier)


class QAItem(BaseModel):
    """A question with its gold answer and everything needed to score it later."""

    id: str
    tier: Tier
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    # Training phrasings of the question (the first is `question`); one element for other tiers.
    phrasings: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    answer_type: str = "text"  # person, place, year, ...: distractors share it
    # The relation whose answer is asked (qa=facts; "<relation>^-1" asked backwards): distractors share it.
    relation: str | None = None
    distractors: list[str] = Field(default_factory=list)
    # Candidates (gold first, then distractors) that no training item of the same relation (or, without
    # relations, the same answer_type) has as its answer: set by QASet, so the contract holds for every backend.
    untrained_candidates: list[str] = Field(default_factory=list)
    # Whether its candidate set is counterbalanced within its tier (qa/balance.py): set by QASet for every backend.
    balanced: bool = False
    # qa.spike_in (a calibration run): this held-out fact's Q/A is trained on purpose; the heldout_facts question
    # and the train item that trains it are both marked
    spiked: bool = False
    fact_ids: list[str] = Field(default_factory=list)  # supporting facts (or training item ids)
    # qa=facts: the entities the question names (its subject; the object of a reversed question). Questions about
    # one entity lean on the same knowledge of it, so recall counts them as one cluster.
    entity_ids: list[str] = Field(default_factory=list)
    # paraphrase and CAUSE_TIERS: the training item it asks again; a spiked heldout_facts item: the one training it
    source_id: str | None = None
    shift_sec: float = Field(default=0.0, ge=0.0)  # shifted tier: silence put before the question's audio
    quote: str | None = None  # LLM backends: the story passage that supports the answer

    @model_validator(mode="after")
    def _phrasings_start_with_question(self) -> "QAItem":
        if not self.phrasings:
            self.phrasings = [self.question]
        elif self.phrasings[0] != self.question:
            raise ValueError("phrasings[0] must equal question")
        if self.answer in self.distractors:
            raise ValueError(f"gold answer {self.answer!r} is among its own distractors")
        return self


class QASet(BaseModel):
    train: list[QAItem] = Field(min_length=1)
    eval: list[QAItem] = Field(default_factory=list)
    paraphrase: list[QAItem] = Field(default_factory=list)
    retain: list[QAItem] = Field(default_factory=list)  # general knowledge, never trained (qa/retain.py)
    unseen_facts: list[QAItem] = Field(default_factory=list)  # qa=facts: facts never trained, the null tier
    unseen_voice: list[QAItem] = Field(default_factory=list)  # a trained phrasing in the held-out voice
    unseen_wording: list[QAItem] = Field(default_factory=list)  # a held-out phrasing in the trained voice
    shifted: list[QAItem] = Field(default_factory=list)  # a trained question's audio, later in the prompt
    # qa=facts with qa.heldout_share: facts narrated by the narration layouts whose Q/A no training conversation
    # holds (under layout=dialogue they are never trained at all: a second null)
    heldout_facts: list[QAItem] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "QASet":
        ids = [q.id for q in self.all_items()]
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate question ids: {dupes}")
        for tier in TIERS:
            for q in getattr(self, tier):
                if q.tier != tier:
                    raise ValueError(f"item {q.id} has tier {q.tier!r} but is listed under {tier!r}")
        train_ids = {q.id for q in self.train}
        for q in [*self.paraphrase, *(q for tier in CAUSE_TIERS for q in getattr(self, tier))]:
            if q.source_id not in train_ids:
                raise ValueError(f"{q.tier} item {q.id} asks again unknown training item {q.source_id!r}")
        self._check_heldout()
        self._flag_untrained()
        for tier in TIERS:
            items = getattr(self, tier)
            for q, balanced in zip(items, is_balanced(items)):
                q.balanced = balanced
        return self

    def _check_heldout(self) -> None:
        """A held-out fact's Q/A must never be trained (no training item shares its fact or asks its question), unless
        it is spiked in on purpose; a spiked one's question is trained."""
        trained_facts = {f for q in self.train for f in q.fact_ids}
        trained_questions = {p for q in self.train for p in q.phrasings}
        for q in self.heldout_facts:
            trains = next((t for t in self.train if t.id == q.source_id), None) if q.spiked else None
            if q.spiked and (trains is None or trains.question != q.question):
                raise ValueError(f"heldout_facts item {q.id} is spiked in, but its training item {q.source_id!r} "
                                 "does not ask its question")
            if not q.spiked and (set(q.fact_ids) & trained_facts or q.question in trained_questions):
                raise ValueError(f"heldout_facts item {q.id} asks a fact or question that a training item trains")

    def _flag_untrained(self) -> None:
        """The distractor contract: every candidate was trained as an answer of the item's relation, or is listed
        in `untrained_candidates`. The retain tier is exempt: none of its candidates is ever trained, gold included.
        A held-out fact's answer counts as an answer of its relation: the narration layouts narrate it, so its
        candidates share the training status of its gold (under layout=dialogue none of them was ever trained)."""
        trained: dict[str, set[str]] = defaultdict(set)
        for q in [*self.train, *self.heldout_facts]:
            trained[q.relation or q.answer_type].add(q.answer)
        for q in self.all_items():
            if q.tier != "retain":
                answers = trained[q.relation or q.answer_type]
                q.untrained_candidates = [c for c in (q.answer, *q.distractors) if c not in answers]

    def all_items(self) -> list[QAItem]:
        return [q for tier in TIERS for q in getattr(self, tier)]

    def save(self, out_dir: Path) -> None:
        atomic_write_json(out_dir / "qa.json", self.model_dump())

    @classmethod
    def load(cls, out_dir: Path) -> "QASet":
        return cls.model_validate(read_json(out_dir / "qa.json"))
