"""The `dataset` group: where the dataset stage's training conversations come from.

The eval conversations, the questions and meta.json are always the run's own (laid out from its Q/A by the
`layout` group), so recall, its nulls and voice drift are measured the same way whatever the model trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tqdm import tqdm

from moshi_knowledge.dataset.format import write_conversation
from moshi_knowledge.specs import init_schema
from moshi_knowledge.speech.layout_base import Aligner
from moshi_knowledge.speech.schema import Conversation


@dataclass(frozen=True)
class Written:
    """One conversation written into the dataset folder: its manifest row and its conversations.json item."""

    row: dict[str, Any]
    entry: dict[str, Any]


class DatasetSource(ABC):
    # whether the training split is the layout's own conversations (whose facts the dataset stage then records)
    trains_on_layout: ClassVar[bool] = False

    @abstractmethod
    def identity(self) -> str:
        """Cache-key material for what the source reads besides its config (files that may change in place)."""

    @abstractmethod
    def check(self) -> None:
        """Raise UserError for bad input; called before any stage runs."""

    @abstractmethod
    def write_train(self, laid_out: list[Conversation], aligner: Aligner, out: Path) -> list[Written]:
        """Write the training split into `out`, given the conversations the layout made of the training Q/A."""


class BuiltDataset(DatasetSource):
    """The default: train on the conversations the layout made of the run's own training Q/A."""

    trains_on_layout = True

    def identity(self) -> str:
        return ""  # everything it reads (Q/A, speech, layout, aligner) is already in the stage's key

    def check(self) -> None:
        pass

    def write_train(self, laid_out: list[Conversation], aligner: Aligner, out: Path) -> list[Written]:
        return [write_laid_out(conv, aligner, out) for conv in tqdm(laid_out, desc="dataset", unit="conv",
                                                                     mininterval=1.0)]


def write_laid_out(conv: Conversation, aligner: Aligner, out: Path) -> Written:
    """A conversation of the layout, written as `conv/<id>.wav` with its word times and its Q/A turns."""
    rel = f"conv/{conv.id}.wav"
    row = write_conversation(conv, aligner.align(conv), out, rel)
    turns = [{"qid": t.qid, "question": list(t.question), "answer": list(t.answer)} for t in conv.turns]
    return Written(row, {"path": rel, "split": conv.split, "turns": turns})


SCHEMAS = {("dataset", "built_schema"): init_schema(BuiltDataset)}
