"""qa=file: the published Q/A format, a JSON list of {"question": ..., "answer": ...}.

Optional keys per item: "aliases" and "distractors" (lists of strings). Item indices in error messages
are 0-based, as in the JSON list. A file gives no paraphrases, so that tier stays empty. Each question (compared
normalised, across both files) is asked once: an exact repeat is dropped with a warning, a repeat with another
answer is an error.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.balance import give_candidates, group, slot
from moshi_knowledge.qa.retain import with_retain
from moshi_knowledge.qa.schema import QAItem, QASet, Tier
from moshi_knowledge.specs import init_schema
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.schema import Story

N_DISTRACTORS = 3
REQUIRED_KEYS = ("question", "answer")
LIST_KEYS = ("aliases", "distractors")
FORMAT_HINT = 'a JSON list of {"question": "...", "answer": "..."} objects'
_YEAR = re.compile(r"\d{3,4}")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RawItem:
    question: str
    answer: str
    aliases: list[str]
    distractors: list[str] | None  # None: none given, draw them from the other answers
    where: str  # "qa.train_path=<file> item <i>", for messages


def answer_type(answer: str) -> str:
    """Years are told apart from names so a year's distractors are years (a name among years is a giveaway)."""
    return "year" if _YEAR.fullmatch(answer.strip()) else "text"


class FileQA:
    """Builds the train and eval tiers from the user's files; the story is not needed (the file holds the facts)."""

    def __init__(self, train_path: str, eval_path: str | None = None, n_eval: int = 20, seed: int = 0,
                 retain: bool = True) -> None:
        self.train_path = train_path
        self.eval_path = eval_path
        self.n_eval = n_eval
        self.seed = seed
        self.retain = retain

    def build(self, story: Story) -> QASet:
        train_raw = _read_items(self.train_path, "qa.train_path")
        eval_raw = _read_items(self.eval_path, "qa.eval_path") if self.eval_path is not None else []
        train_raw, eval_raw = _without_repeats(train_raw, eval_raw)
        if self.eval_path is None:
            train_raw, eval_raw = self._hold_out(train_raw)
        train = [_item(raw, "train", f"train-{i:03d}") for i, raw in enumerate(train_raw)]
        evals = [_item(raw, "eval", f"eval-{i:03d}") for i, raw in enumerate(eval_raw)]
        _fill_distractors([*train, *evals], self.seed)
        return with_retain(QASet(train=train, eval=evals), self.retain)

    def _hold_out(self, items: list[_RawItem]) -> tuple[list[_RawItem], list[_RawItem]]:
        """A seeded choice of `n_eval` items becomes the eval tier; both tiers keep the file's order."""
        if self.n_eval < 0:
            raise UserError(f"qa.n_eval={self.n_eval} is negative", fix="set qa.n_eval to 0 or more")
        if self.n_eval >= len(items):
            raise UserError(
                f"qa.n_eval={self.n_eval} holds out all {len(items)} items of qa.train_path={self.train_path}, "
                "leaving no training items",
                fix=f"set qa.n_eval below {len(items)}, or give the eval questions in qa.eval_path",
            )
        held = set(random.Random(self.seed).sample(range(len(items)), self.n_eval))
        train = [q for i, q in enumerate(items) if i not in held]
        return train, [q for i, q in enumerate(items) if i in held]


def _without_repeats(train: list[_RawItem], evals: list[_RawItem]) -> tuple[list[_RawItem], list[_RawItem]]:
    """Each normalised question once, train first. A repeat with the same normalised answer is dropped (a question
    in both tiers would score a trained fact as held out); one with another answer is an error, since recall could
    be scored against either."""
    first: dict[str, _RawItem] = {}
    kept: tuple[list[_RawItem], list[_RawItem]] = ([], [])
    for items, out in zip((train, evals), kept):
        for item in items:
            seen = first.setdefault(normalise(item.question), item)
            if seen is item:
                out.append(item)
            elif normalise(seen.answer) == normalise(item.answer):
                log.warning("%s repeats the question and answer of %s; keeping only the first", item.where, seen.where)
            else:
                raise UserError(
                    f"{seen.where} and {item.where} ask the same question {item.question!r} with different "
                    f"answers {seen.answer!r} and {item.answer!r}",
                    fix="keep one of the two items (list other right answers in its 'aliases'), or reword one",
                )
    return kept


def _item(raw: _RawItem, tier: Tier, qid: str) -> QAItem:
    return QAItem(
        id=qid,
        tier=tier,
        question=raw.question,
        answer=raw.answer,
        aliases=raw.aliases,
        answer_type=answer_type(raw.answer),
        distractors=raw.distractors or [],
    )


def _fill_distractors(items: list[QAItem], seed: int) -> None:
    """Give each item without distractors the other answers of a counterbalanced set of its tier (qa/balance.py:
    up to four items of one answer type with distinct answers, each answer gold once), where the file's answers
    allow; an item left without a set gets N_DISTRACTORS of the other items' answers and stays unbalanced (the
    run reports how many are, `recall/<tier>/n_balanced`).

    A leftover's preference: same answer type before other types, then train answers before eval answers (every
    train answer has been trained as an answer, so picking the gold shows the model tied it to this question).
    Within a preference group the order is a shuffle seeded by `seed` and the item id.
    """
    rng = random.Random(f"{seed}:sets")
    left: list[QAItem] = []
    for tier in ("train", "eval"):
        open_items = [q for q in items if q.tier == tier and not q.distractors]
        sets, rest = group([slot(q) for q in open_items], rng)
        give_candidates(open_items, sets, rng)
        left += [open_items[i] for i in rest]
    pool: list[QAItem] = []
    seen: set[str] = set()
    for other in items:  # train items come first in `items`
        key = normalise(other.answer)
        if key not in seen:
            seen.add(key)
            pool.append(other)
    for item in left:
        excluded = {normalise(a) for a in [item.answer, *item.aliases]}
        candidates = [o for o in pool if normalise(o.answer) not in excluded]
        rng = random.Random(f"{seed}:{item.id}")
        rng.shuffle(candidates)
        candidates.sort(key=lambda o: (o.answer_type != item.answer_type, o.tier != "train"))  # stable
        item.distractors = [o.answer for o in candidates[:N_DISTRACTORS]]


def _read_items(path_str: str, field: str) -> list[_RawItem]:
    where = f"{field}={path_str}"
    data = _load_json(path_str, where)
    if not isinstance(data, list):
        raise UserError(f"{where}: the top level is a JSON {_json_kind(data)}, not a list", fix=f"write {FORMAT_HINT}")
    if not data:
        raise UserError(f"{where}: the list is empty", fix=f"write {FORMAT_HINT}")
    return [_parse_item(obj, f"{where} item {i}") for i, obj in enumerate(data)]


def _load_json(path_str: str, where: str) -> Any:
    path = Path(path_str)
    if not path.is_file():
        raise UserError(f"{where}: file not found", fix=f"point {where.split('=')[0]} at an existing JSON file")
    try:
        return json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte offset {e.start})", fix="save the file as UTF-8") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}",
            fix=f"fix the JSON syntax there; the file must be {FORMAT_HINT}",
        ) from None


def _parse_item(obj: Any, where: str) -> _RawItem:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: is a JSON {_json_kind(obj)}, not an object", fix=f"write {FORMAT_HINT}")
    unknown = sorted(set(obj) - {*REQUIRED_KEYS, *LIST_KEYS})
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r}",
            fix=f"allowed keys: {', '.join(REQUIRED_KEYS + LIST_KEYS)} (a misspelt key would be silently lost)",
        )
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise UserError(f"{where}: missing key {key!r}", fix=f"give every item a non-empty {key!r} string")
        _check_string(obj[key], f"{where}: {key!r}")
    lists = {key: _string_list(obj[key], f"{where}: {key!r}") if key in obj else None for key in LIST_KEYS}
    distractors = lists["distractors"]
    if distractors is not None:
        _check_distractors(distractors, obj["answer"], where)
    return _RawItem(obj["question"].strip(), obj["answer"].strip(), lists["aliases"] or [], distractors, where)


def _check_string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise UserError(f"{where} must be a string, got JSON {_json_kind(value)} {value!r}", fix="quote the value")
    if not value.strip():
        raise UserError(f"{where} is empty", fix="give it some text, or remove the item")


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{where} must be a non-empty list of strings", fix='write ["...", ...] or drop the key')
    for i, element in enumerate(value):
        _check_string(element, f"{where}[{i}]")
    return [element.strip() for element in value]


def _check_distractors(distractors: list[str], answer: str, where: str) -> None:
    gold = normalise(answer)
    for i, d in enumerate(distractors):
        if normalise(d) == gold:
            raise UserError(
                f"{where}: 'distractors'[{i}] {d!r} is the answer {answer!r} itself",
                fix="a distractor must be a wrong answer; remove it",
            )


def _json_kind(value: Any) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


SCHEMAS = {("qa", "file_schema"): init_schema(FileQA)}
