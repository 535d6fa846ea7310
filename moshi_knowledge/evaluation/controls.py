"""Controls for multiple-choice recall: the same scoring, in conditions where the question cannot pick the answer.

- `shuffled`: each question's audio is scored against the candidates (and gold) of another question of its tier,
  paired by a seeded derangement within the tier, once for each of `eval.shuffles` derangements; its figure is the
  share of them in which the other question's gold was picked (one derangement alone is a draw that can sit well
  above chance on a small tier);
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

SHUFFLED_QIDS = "shuffled_qids"  # prediction-row field: whose candidates the shuffled control scored, per derangement


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


def shuffled_pairs(questions: Sequence[EvalQuestion], seed: int, draw: int = 0) -> list[tuple[int, int]]:
    """(question, the question whose candidates it is scored against), within each tier of two or more; `draw`
    numbers the derangements of one seed."""
    by_tier: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_tier[q.tier].append(i)
    pairs = []
    for tier, members in by_tier.items():
        if len(members) > 1:
            perm = derangement(len(members), random.Random(f"{seed}-{tier}-shuffled" + (f"-{draw}" if draw else "")))
            pairs += [(members[k], members[perm[k]]) for k in range(len(members))]
    return sorted(pairs)


class Controls:
    """The control questions of one question set, prepared once (like the real ones) and scored at each evaluation."""

    def __init__(self, questions: Sequence[EvalQuestion],
                 prepare: Callable[[Sequence[EvalQuestion]], list[PreparedQuestion]], seed: int,
                 shuffles: int = 1) -> None:
        """`prepare` turns questions into model inputs exactly as the real questions were prepared; `shuffles`
        derangements are scored for the shuffled control."""
        pairs = [pair for draw in range(shuffles) for pair in shuffled_pairs(questions, seed, draw)]
        self.shuffled_qids: dict[int, list[str]] = defaultdict(list)
        for i, j in pairs:
            self.shuffled_qids[i].append(questions[j].id)
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
        non-finite weights, or scores, gold never counts as picked: as for the real questions). A control scored
        several times (the shuffled one, once per derangement) gives the share of its scorings that picked gold."""
        out: dict[int, dict[str, Any]] = defaultdict(dict)
        for i, qids in self.shuffled_qids.items():
            out[i][SHUFFLED_QIDS] = qids
        results = iter(results)
        for name, prepared in self.prepared.items():
            picked: dict[int, list[bool]] = defaultdict(list)
            for i, result in zip(self.index[name], [next(results) for _ in prepared]):
                picked[i].append(weights_finite and result.correct)
            for i, scorings in picked.items():
                out[i][correct_field(name)] = scorings[0] if len(scorings) == 1 else sum(scorings) / len(scorings)
        return dict(out)

