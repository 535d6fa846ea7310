"""Which facts each conversation of the dataset states: `conversation_facts.json`, read by training to count
exposures per fact (train/exposures.py).

Why a file of its own: a Q/A turn names its item (`turns[].qid`), but a narrated passage carries no turn, and only
the dataset stage still knows which sentences went into it. A fact is a world fact id (qa=facts), or what a Q/A
backend gives as `fact_ids`, or else the Q/A item itself. Every statement counts once: a Q/A turn states its
item's facts, a narrated sentence the fact it tells (a story's own sentence, the facts of the Q/A whose answers it
gives). Conversations the layout did not make (an imported dataset=moshi_finetune) are not listed: their facts are
unknown, and so is their dose.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.speech.narration import Narration, narration_line_id
from moshi_knowledge.speech.schema import Conversation, Line, Utterance
from moshi_knowledge.world.schema import Story

CONVERSATION_FACTS = "conversation_facts.json"


def item_facts(item: QAItem) -> list[str]:
    """The facts one Q/A turn of `item` states: its supporting facts, or the item itself if the backend names none."""
    return list(item.fact_ids) or [item.id]


def narrated_facts_by_line(narration: Narration, story: Story, qa: QASet) -> dict[str, list[str]]:
    """Narration line id -> the facts that sentence states, for every restatement."""
    by_answer: dict[str, list[str]] = {}
    for item in [*qa.train, *qa.heldout_facts, *qa.eval]:
        by_answer.setdefault(item.answer, []).extend(item_facts(item))
    out = {}
    for statement in narration.statements(story, qa):
        if statement.fact is not None:
            facts = [statement.fact.id]
        else:  # a story's own sentence: the facts of the Q/A whose answers it gives
            facts = list(dict.fromkeys(f for answer in statement.keep for f in by_answer.get(answer, [])))
        for k in range(narration.restatements):
            out[narration_line_id(statement.source, k)] = facts
    return out


def _passage_lines(passage: Conversation, lines: Iterator[Line], speech: Mapping[str, Utterance]) -> list[Line]:
    """The narration lines one passage holds: the next lines, in order, whose words make up its words."""
    said = [w.word for w in passage.words]
    taken: list[Line] = []
    at = 0
    while at < len(said):
        line = next(lines, None)
        words = [] if line is None else [w.word for w in speech[line.id].words]
        if line is None or said[at:at + len(words)] != words:
            raise UserError(f"conversation {passage.id}: its words do not follow the narration's sentences",
                            "this is a bug in the narration layout's passages; please report it with the config")
        taken.append(line)
        at += len(words)
    return taken


def conversation_facts(conversations: Sequence[Conversation], qa: QASet, story: Story, layout: Any,
                       speech: Mapping[str, Utterance]) -> dict[str, list[str]]:
    """Conversation id -> the facts it states, one entry per statement, for every conversation the layout made.

    A narrated passage (a training conversation without Q/A turns, under layout=narration|mixed) holds the
    narration's next sentences in order, as the layout packed them round by round: its words are matched to them."""
    items = {item.id: item for item in qa.all_items()}
    narration = getattr(layout, "narration", None)
    lines: Iterator[Line] = iter(())
    by_line: dict[str, list[str]] = {}
    if isinstance(narration, Narration):
        lines = iter([line for r in narration.rounds(story, qa) for line in r])
        by_line = narrated_facts_by_line(narration, story, qa)
    out = {}
    for conv in conversations:
        if conv.turns or conv.split != "train" or not by_line:
            out[conv.id] = [f for turn in conv.turns for f in item_facts(items[turn.qid])]
        else:
            out[conv.id] = [f for line in _passage_lines(conv, lines, speech) for f in by_line[line.id]]
    return out


def write_conversation_facts(out: Path, facts: Mapping[str, list[str]]) -> None:
    atomic_write_json(out / CONVERSATION_FACTS, {"conversations": dict(facts)})


def read_conversation_facts(dataset_dir: Path) -> dict[str, list[str]] | None:
    """Conversation id -> facts stated; None for a dataset written without the record."""
    path = Path(dataset_dir) / CONVERSATION_FACTS
    if not path.is_file():
        return None
    data = read_json(path)
    convs = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(convs, dict) or not all(isinstance(v, list) for v in convs.values()):
        raise UserError(f"{path}: expected {{\"conversations\": {{id: [fact, ...]}}}}", "rebuild the dataset stage")
    return {str(k): [str(f) for f in v] for k, v in convs.items()}
