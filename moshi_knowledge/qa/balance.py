"""Counterbalanced candidate sets: multiple choice whose priors cancel by construction.

A candidate set is shared by several questions of one tier, and each of its candidates is the gold answer of
equally many of them (e.g. four facts of one relation with four distinct answers share one set of four; each
answer is gold once and a distractor three times). Whatever a question-blind strategy knows about the candidates
(how often each was trained, its kind, its length, its year), it picks the same candidate for every question of
the set, so it scores exactly 1/k on the set and on the tier. Matching distractors to the gold by hand can only
remove the priors someone thought of; this removes them all.

`group` forms such sets from a pool of questions, `give_candidates` writes them into the questions, and
`is_balanced` checks the property on any set of questions (QASet computes it for every backend).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

from moshi_knowledge.text_norm import normalise

SET_SIZE = 4  # candidates per question (gold + 3 distractors) where a tier has that many distinct answers
_HEAD = 2 * SET_SIZE  # answers ranked per set before the full order is needed (only when clashes skip several)


class QAItem(Protocol):
    """What balancing reads and writes of a Q/A item (schema.QAItem): spelled here because schema imports this
    module, and an import back would be a cycle."""

    answer: str
    phrasings: list[str]
    aliases: list[str]
    answer_type: str
    relation: str | None
    distractors: list[str]


@dataclass(frozen=True)
class Slot:
    """What grouping needs of a question: questions of one `key` (a relation) may share candidates; `gold` is its
    answer and `names` the texts its question says (a candidate named by a question of its set would be a prior)."""

    key: Hashable
    gold: str
    names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other right answers: a candidate equal to one would be a second gold


def slot(item: QAItem) -> Slot:
    """The slot of a Q/A item: its relation (or answer type), its answer and aliases, and every phrasing it is asked
    in."""
    return Slot(item.relation or item.answer_type, item.answer, tuple(item.phrasings), tuple(item.aliases))


def clash(a: Slot, b: Slot) -> bool:
    """Two questions may not share a set when one's answer is a right answer of the other (its gold or an alias),
    or either's answer is said in the other's question."""
    return any(_norm(x.gold) in {_norm(t) for t in (y.gold, *y.aliases)} for x, y in ((a, b), (b, a))) \
        or any(_norm(x.gold) in f" {_norm(t)} " for x, y in ((a, b), (b, a)) for t in y.names)


@lru_cache(maxsize=65536)
def _norm(text: str) -> str:
    return normalise(text)


def group(slots: Sequence[Slot], rng: random.Random, size: int = SET_SIZE) -> tuple[list[list[int]], list[int]]:
    """Indices of `slots` in sets of 2 to `size` questions of one key with distinct answers, and those left over.

    Within each key the next set takes one question of each of the answers with the most questions left (ties at
    random), skipping any that clashes with a question already taken: that order leaves the fewest questions out.
    """
    sets: list[list[int]] = []
    left: list[int] = []
    by_key: dict[Hashable, list[int]] = defaultdict(list)
    for i in rng.sample(range(len(slots)), len(slots)):
        by_key[slots[i].key].append(i)
    for key in sorted(by_key, key=str):
        by_gold: dict[str, list[int]] = defaultdict(list)
        for i in by_key[key]:
            by_gold[normalise(slots[i].gold)].append(i)
        stacks = list(by_gold.values())  # each answer's questions, the next one taken last
        counts = np.array([len(members) for members in stacks])
        while True:
            taken: list[int] = []  # answers, as indices of `stacks`
            for g in _ranked(counts, _draws(rng, len(stacks))):
                i = stacks[g][-1]
                if not any(clash(slots[i], slots[stacks[h][-1]]) for h in taken):
                    taken.append(g)
                    if len(taken) == size:
                        break
            if len(taken) < 2:
                break
            sets.append([stacks[g].pop() for g in taken])
            counts[taken] -= 1
        left += [i for members in stacks for i in members]
    return sets, left


def _draws(rng: random.Random, n: int) -> np.ndarray:
    """`[rng.random() for _ in range(n)]`, bit for bit and leaving `rng` in the same state, from one call: random()
    makes its 53-bit float of two 32-bit outputs (a >> 5, b >> 6), and getrandbits(64 * n) returns the same outputs
    as one little-endian integer. Grouping draws one number per answer per set, so this is its inner loop."""
    pairs = np.frombuffer(rng.getrandbits(64 * n).to_bytes(8 * n, "little"), dtype="<u8")
    return (((pairs & 0xFFFFFFFF) >> 5) << 26 | (pairs >> 38)) * (1.0 / (1 << 53))


def _ranked(counts: np.ndarray, draws: np.ndarray) -> Iterator[int]:
    """The answers with questions left, most questions first and ties by their draw: the order of
    `sorted(range(len(counts)), key=lambda g: (-counts[g], draws[g]))`, lazily. A set needs only the first few, and
    sorting every answer for every set made grouping quadratic in Python."""
    most = counts.max()
    if most == 0:
        return
    top = np.flatnonzero(counts == most)
    if len(top) > _HEAD:
        top = top[np.argpartition(draws[top], _HEAD)[:_HEAD]]
    yield from top[np.argsort(draws[top], kind="stable")].tolist()
    # a set that clashed past the head: the full order, of which the head is the start
    yield from np.lexsort((draws, -counts))[len(top):np.count_nonzero(counts)].tolist()


def take(sets: Sequence[list[int]], n: int, weight: Callable[[list[int]], Hashable] | None = None,
         share: dict[Hashable, float] | None = None) -> list[list[int]]:
    """Whole sets adding up to exactly `n` questions where the sets allow (a set may be cut to 2 or more: a part of
    a counterbalanced set is one), in the given order or, with `weight` and `share`, keeping each weight's share of
    the questions near `share` (the null follows the relation mix of the tiers it is compared with)."""
    pool = [list(s) for s in sets]
    chosen: list[list[int]] = []
    count: Counter[Hashable] = Counter()
    total = 0
    while pool and total < n - 1:
        if weight is not None and share is not None:
            # the set whose key is furthest below its share (by whole questions), the largest of those
            best = max(range(len(pool)), key=lambda k: (
                round(share.get(weight(pool[k]), 0.0) * n - count[weight(pool[k])]), len(pool[k]), -k))
        else:
            best = 0
        members = pool.pop(best)[:n - total]
        chosen.append(members)
        total += len(members)
        if weight is not None:
            count[weight(members)] += len(members)
    if total == n - 1 and pool and any(len(s) > 2 for s in chosen):
        # one question short: no set of one exists, so a set of three or more gives one back for a pair
        donor = next(s for s in reversed(chosen) if len(s) > 2)
        donor.pop()
        chosen.append(pool[0][:2])
    return chosen


def give_candidates(items: Sequence[QAItem], sets: Iterable[Sequence[int]], rng: random.Random) -> None:
    """Each question's distractors are the other answers of its set, in a seeded order."""
    for members in sets:
        for i in members:
            others = [items[j].answer for j in members if j != i]
            items[i].distractors = rng.sample(others, len(others))


def is_balanced(items: Sequence[QAItem]) -> list[bool]:
    """Per question of one tier: whether its candidate set is counterbalanced within the tier, i.e. every question
    with exactly its candidates has one of them as gold and each candidate is gold equally often among them."""
    keys = [frozenset(_norm(c) for c in (q.answer, *q.distractors)) for q in items]
    golds: dict[frozenset[str], Counter[str]] = defaultdict(Counter)
    for q, candidates in zip(items, keys):
        golds[candidates][_norm(q.answer)] += 1

    def balanced(q: QAItem, candidates: frozenset[str]) -> bool:
        counts = golds[candidates]
        return len(candidates) == len(q.distractors) + 1 >= 2 and set(counts) == candidates \
            and len(set(counts.values())) == 1
    return [balanced(q, candidates) for q, candidates in zip(items, keys)]
