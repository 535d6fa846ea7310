"""The retain tier: general knowledge a pretrained Moshi already answers, asked but never trained.

Finetuning on invented facts can erase what the model knew; recall on these questions, before and after
training, measures that forgetting. The questions ship with the package (retain.json: capitals, arithmetic,
colours, animals, days and months), each with three wrong answers of its own kind, so multiple choice between
capitals stays a choice between capitals. They are spoken and scored like every other tier but never laid out
in a conversation (the layouts read only the train and eval tiers).
"""

from __future__ import annotations

import json
from pathlib import Path

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.schema import TIERS, QAItem, QASet
from moshi_knowledge.text_norm import normalise

RETAIN_FILE = Path(__file__).with_name("retain.json")


def retain_items() -> list[QAItem]:
    """The shipped questions as `retain` items, ids retain-000, retain-001, ... in file order."""
    entries = json.loads(RETAIN_FILE.read_text(encoding="utf-8"))
    return [QAItem(id=f"retain-{i:03d}", tier="retain", **entry) for i, entry in enumerate(entries)]


def with_retain(qa: QASet, retain: bool) -> QASet:
    """`qa` plus the retain tier when `retain` is on (qa.retain).

    A retain question that the set already asks (compared normalised, any phrasing) is an error: it would be
    trained, and recall on it would no longer measure what the model kept.
    """
    if not retain:
        return qa
    items = retain_items()
    asked = {normalise(text): q.id for q in qa.all_items() for text in q.phrasings}
    for item in items:
        if normalise(item.question) in asked:
            raise UserError(
                f"qa.retain=true: the retain question {item.question!r} is also {asked[normalise(item.question)]} "
                "of this Q/A set, so it would be trained and could not measure forgetting",
                fix="set qa.retain=false, or remove that question from your Q/A",
            )
    return QASet(**{**{tier: getattr(qa, tier) for tier in TIERS}, "retain": items})
