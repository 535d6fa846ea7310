"""Controls for multiple-choice recall: the same scoring, in conditions where the question cannot pick the answer.

- `shuffled`: each question's audio is scored against the candidates (and gold) of another question of its tier,
  paired by a seeded derangement within the tier;
- `silence`: the question's audio is replaced by silence of the same length, candidates unchanged.

A model that answers from the question scores near chance (1 / number of candidates) in both. A control above
chance means answers are picked by something else (how often an answer was trained, its length, the layout), and
the real figure is inflated by about as much. Both are scored at every evaluation, in one pass with the real
questions; their figures are registered metrics (metrics.CONTROLS).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from moshi_knowledge.evaluation.mc import MCQuestion, MCResult
from moshi_knowledge.evaluation.metrics import correct_field
from moshi_knowledge.evaluation.prompts import PreparedQuestion
from moshi_knowledge.evaluation.questions import EvalQuestion

SHUFFLED_QID = "shuffled_qid"  # prediction-row field: whose candidates the shuffled control scored


@dataclass(frozen=True)
class SilentQuestion(EvalQuestion):
    """A question whose audio is silence of its own length."""

    def samples(self) -> np.ndarray:
        return np.zeros_like(super().samples())


def derangement(n: int, rng: random.Random) -> list[int]:
    """A random permutation without fixed points (Sattolo's algorithm: one cycle through all n); n >= 2."""
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def shuffled_pairs(questions: Sequence[EvalQuestion], seed: int) -> list[tuple[int, int]]:
    """(question, the question whose candidates it is scored against), within each tier of two or more."""
    by_tier: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_tier[q.tier].append(i)
    pairs = []
    for tier, members in by_tier.items():
        if len(members) > 1:
            perm = derangement(len(members), random.Random(f"{seed}-{tier}-shuffled"))
            pairs += [(members[k], members[perm[k]]) for k in range(len(members))]
    return sorted(pairs)


class Controls:
    """The control questions of one question set, prepared once (like the real ones) and scored at each evaluation."""

    def __init__(self, questions: Sequence[EvalQuestion],
                 prepare: Callable[[Sequence[EvalQuestion]], list[PreparedQuestion]], seed: int) -> None:
        """`prepare` turns questions into model inputs exactly as the real questions were prepared."""
        pairs = shuffled_pairs(questions, seed)
        self.shuffled_qid = {i: questions[j].id for i, j in pairs}
        variants = {
            "shuffled": [(i, replace(questions[i], gold=questions[j].gold, distractors=questions[j].distractors,
                                     aliases=questions[j].aliases)) for i, j in pairs],
            "silence": [(i, SilentQuestion(**{f.name: getattr(q, f.name) for f in fields(q)}))
                        for i, q in enumerate(questions)],
        }
        self.index = {name: [i for i, _ in items] for name, items in variants.items()}
        self.prepared = {name: prepare([q for _, q in items]) if items else [] for name, items in variants.items()}

    def mc_questions(self) -> list[MCQuestion]:
        """Every control's multiple-choice question, to be scored with the real ones (mc.score runs a prefix the
        real question shares with its shuffled control once); `row_fields` reads their results in this order."""
        return [p.mc for prepared in self.prepared.values() for p in prepared]

    def row_fields(self, results: Sequence[MCResult], weights_finite: bool) -> dict[int, dict[str, Any]]:
        """Question index -> the control fields of its prediction row, from the scores of `mc_questions` (with
        non-finite weights, or scores, gold never counts as picked: as for the real questions)."""
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        for i, qid in self.shuffled_qid.items():
            out[i][SHUFFLED_QID] = qid
        results = iter(results)
        for name, prepared in self.prepared.items():
            for i, result in zip(self.index[name], [next(results) for _ in prepared]):
                out[i][correct_field(name)] = weights_finite and result.correct
        return dict(out)

