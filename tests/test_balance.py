"""Counterbalanced candidate sets and twin-aware hold-out, over many seeds of every preset that builds Q/A.

A tier is free of candidate priors when every strategy that sees a question's candidates but not the question
scores exactly chance on it; the tests try the priors that were once found (the most trained answer, the relation's
usual Q/A answer, length, the alphabet, the year) and check the property that makes all of them fail.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_cfg
from moshi_knowledge.qa.balance import Slot, group, is_balanced, take
from moshi_knowledge.qa.schema import TIERS, QAItem, QASet
from moshi_knowledge.world.schema import World

PRESETS = ("demo", "knowledge", "regime_qa", "regime_mixed", "regime_narration", "moshiko_h200", "seed_replication")
SEEDS = range(20)
LARGE_SEEDS = range(3)  # qa=facts_large: 1,500 questions a seed, more than 20 seeds of the default's 330
NEVER_TRAINED = ("unseen_facts", "heldout_facts")


def _distinct_builds() -> dict[str, tuple[str, ...]]:
    """Each distinct (story, qa) config of the presets -> the presets that use it (several share one)."""
    out: dict[str, tuple[str, ...]] = {}
    for preset in PRESETS:
        cfg = compose_cfg([f"experiment={preset}"])
        key = OmegaConf.to_yaml(OmegaConf.create({"story": cfg.story, "qa": cfg.qa}))
        out[key] = (*out.get(key, ()), preset)
    return out


BUILDS = _distinct_builds()


class _Builds(list):
    """(seed, Q/A, world) per seed, and the qa config they were built with."""

    def __init__(self, items: list, qa_cfg: Any) -> None:
        super().__init__(items)
        self.qa_cfg = qa_cfg


@pytest.fixture(scope="module", params=list(BUILDS.values()), ids=lambda p: "+".join(p))
def built(request: pytest.FixtureRequest) -> list[tuple[int, QASet, World]]:
    """Q/A of one preset's settings for seeds 0-19 (0-2 for the large world), data only."""
    out = []
    qa_cfg = compose_cfg([f"experiment={request.param[0]}"]).qa
    for seed in LARGE_SEEDS if qa_cfg.n_train > 200 else SEEDS:
        cfg = compose_cfg([f"experiment={request.param[0]}", f"seed={seed}"])
        story = instantiate(cfg.story).generate()
        out.append((seed, instantiate(cfg.qa).build(story), story.world))
    return _Builds(out, qa_cfg)


def _candidates(q: QAItem) -> frozenset[str]:
    return frozenset((q.answer, *q.distractors))


def _strategies(qa: QASet) -> dict[str, Callable[[QAItem], str]]:
    """Question-blind pickers: each sees only a question's candidates (and what training did), never its words."""
    trained = Counter(q.answer for q in qa.train)
    usual: dict[str, Counter[str]] = {}
    for q in qa.train:
        usual.setdefault(q.relation or "", Counter())[q.answer] += 1

    def by(key: Callable[[str], object]) -> Callable[[QAItem], str]:
        return lambda q: min(sorted(_candidates(q)), key=key)

    return {
        "most trained": by(lambda c: -trained[c]),
        "least trained": by(lambda c: trained[c]),
        "relation's usual answer": lambda q: min(sorted(_candidates(q)),
                                                 key=lambda c: -usual.get(q.relation or "", Counter())[c]),
        "longest": by(lambda c: -len(c)),
        "shortest": by(len),
        "first in the alphabet": by(lambda c: c),
        "latest year": by(lambda c: -int(c) if c.isdigit() else 0),
        "a fixed coin per set": lambda q: random.Random(str(sorted(_candidates(q)))).choice(sorted(_candidates(q))),
    }


@pytest.mark.slow
def test_every_question_of_every_tier_sits_in_a_counterbalanced_set(built) -> None:
    for seed, qa, _ in built:
        for tier in TIERS:
            unbalanced = [q.id for q in getattr(qa, tier) if not q.balanced]
            assert not unbalanced, (seed, tier, unbalanced)


@pytest.mark.slow
def test_no_question_blind_strategy_beats_chance_on_any_tier(built) -> None:
    for seed, qa, _ in built:
        for name, pick in _strategies(qa).items():
            for tier in TIERS:
                items = getattr(qa, tier)
                if not items:
                    continue
                accuracy = sum(pick(q) == q.answer for q in items) / len(items)
                chance = sum(1 / len(_candidates(q)) for q in items) / len(items)
                assert accuracy == pytest.approx(chance, abs=1e-12), (seed, tier, name, accuracy, chance)


@pytest.mark.slow
def test_no_never_trained_question_shares_its_entity_and_answer_with_a_trained_one(built) -> None:
    """Twin facts ("reigned until 981", "died in 981") are trained or kept out together; the narration states the
    held-out facts, so the never-trained null shares nothing with them either."""
    for seed, qa, world in built:
        facts = {f.id: f for f in world.facts}
        trained = {(facts[i].subject, facts[i].object) for q in qa.train for i in q.fact_ids}
        narrated = {(facts[i].subject, facts[i].object) for q in qa.heldout_facts for i in q.fact_ids}
        for q in qa.heldout_facts:
            (fact,) = (facts[i] for i in q.fact_ids)
            assert (fact.subject, fact.object) not in trained, (seed, q.id, q.question)
        for q in qa.unseen_facts:
            (fact,) = (facts[i] for i in q.fact_ids)
            assert (fact.subject, fact.object) not in trained | narrated, (seed, q.id, q.question)


@pytest.mark.slow
def test_tiers_keep_their_sizes_and_the_null_its_chance(built) -> None:
    """Sets of four wherever the world allows: the tiers' chance stays near 1/4, not 1/2."""
    cfg = built.qa_cfg
    for seed, qa, _ in built:
        assert len(qa.eval) == cfg.n_eval and len(qa.unseen_facts) == cfg.n_unseen, seed
        assert len(qa.train) + len(qa.heldout_facts) in range(round(0.97 * cfg.n_train), cfg.n_train + 1), seed
        for tier in ("train", "eval", "unseen_facts", *(("heldout_facts",) if qa.heldout_facts else ())):
            items = getattr(qa, tier)
            assert sum(1 / len(_candidates(q)) for q in items) / len(items) < 0.4, (seed, tier)


def _item(qid: str, answer: str, distractors: list[str]) -> QAItem:
    return QAItem(id=qid, tier="train", question=f"Question {qid}?", answer=answer, distractors=distractors)


def test_is_balanced_tells_a_shared_set_from_a_matched_one() -> None:
    shared = [_item(str(i), a, [b for b in "ABCD" if b != a]) for i, a in enumerate("ABCD")]
    assert is_balanced(shared) == [True] * 4
    # the same candidates, but A is gold twice and D never: "always A" would score 1/2
    skewed = [_item(str(i), a, [b for b in "ABCD" if b != a]) for i, a in enumerate("ABCA")]
    assert is_balanced(skewed) == [False] * 4
    # one question per set, as distractors matched to the gold gave
    assert is_balanced([_item("0", "A", ["B", "C", "D"])]) == [False]


def test_group_makes_sets_of_distinct_answers_that_no_question_names() -> None:
    slots = [Slot("succeeded", gold, (subject,)) for subject, gold in
             [("King B", "King A"), ("King C", "King B"), ("King D", "King C"), ("King E", "King D"),
              ("King F", "King E"), ("King G", "King A")]]
    sets, left = group(slots, random.Random(0))
    for members in sets:
        golds = [slots[i].gold for i in members]
        assert len(set(golds)) == len(golds) >= 2
        named = {slots[i].names[0] for i in members}
        assert not set(golds) & named, golds
    assert sorted([*(i for s in sets for i in s), *left]) == list(range(len(slots)))  # each question once


def test_take_cuts_sets_but_never_to_one() -> None:
    sets = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    for n in range(2, 12):
        chosen = take(sets, n)
        assert all(len(s) >= 2 for s in chosen)
        assert sum(map(len, chosen)) == n
