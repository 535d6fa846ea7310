"""Small-sample statistics for recall: Wilson intervals, exact paired tests, clustering by fact.

Eval sets here are tens of questions, so normal-approximation intervals and chi-square tests would be wrong
exactly where it matters (accuracies near 0 or 1, few discordant pairs). A fact asked in several phrasings
is one piece of evidence, not several, so the paraphrase tier is clustered by the fact it rephrases.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, fisher_exact, permutation_test
from scipy.stats import t as student_t

Z95 = 1.959963984540054  # two-sided 95% standard normal quantile
_TIE = 1e-9  # a summed difference of shares within rounding of zero is a tie (1 - 1/3 - 2/3 is not exactly 0)


@dataclass(frozen=True)
class Interval:
    """A proportion with its 95% interval; `n_eff` is the sample size the interval was computed for."""

    value: float
    low: float
    high: float
    n: int
    n_eff: float


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval; accepts non-integer (effective) counts for clustered data."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends, free of rounding residue
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def accuracy_interval(correct: Sequence[bool], clusters: Sequence[str] | None = None) -> Interval:
    """Accuracy with a Wilson 95% interval, widened for clustering by the design effect.

    With clusters, the variance of the pooled accuracy is the cluster-robust (sandwich) one and the Wilson
    interval uses the effective sample size n * p(1-p) / (n^2 var); when that cannot be estimated (accuracy
    0 or 1) it falls back to the number of clusters, the conservative choice. The effective size is capped
    at n: clustering never makes the evidence stronger than independent items would.
    """
    n = len(correct)
    if n == 0:
        return Interval(float("nan"), 0.0, 1.0, 0, 0.0)
    k = sum(bool(c) for c in correct)
    p = k / n
    n_eff = float(n)
    if clusters is not None:
        if len(clusters) != n:
            raise ValueError(f"{len(clusters)} cluster labels for {n} items")
        groups = _group(correct, clusters)
        g = len(groups)
        if g < n:
            residual = sum((sum(v) - p * len(v)) ** 2 for v in groups.values())
            var = g / max(g - 1, 1) * residual / (n * n)
            n_eff = min(float(n), p * (1 - p) / var) if var > 0 and 0 < p < 1 else float(g)
    low, high = wilson(p * n_eff, n_eff)
    return Interval(p, low, high, n, n_eff)


def paired_p_value(before: Sequence[float], after: Sequence[float], clusters: Sequence[str] | None = None,
                   alternative: str = "two-sided") -> float:
    """Exact McNemar test of `after` against `before` on the same items (1.0 when nothing changed);
    `alternative="greater"` asks only whether `after` is better.

    With clusters it is the exact sign test on clusters: a cluster counts as improved (worsened) when more
    (fewer) of its items are correct after. With one item per cluster this is exactly McNemar's exact test. An
    item may be a share instead of a bool (a control scored several times): the sign test reads the sign of each
    cluster's summed difference.
    """
    if len(before) != len(after):
        raise ValueError(f"paired test needs equal lengths, got {len(before)} and {len(after)}")
    labels = clusters if clusters is not None else [str(i) for i in range(len(before))]
    diffs: dict[str, float] = defaultdict(float)
    for b, a, label in zip(before, after, labels, strict=True):
        diffs[label] += float(a) - float(b)
    better = sum(d > _TIE for d in diffs.values())
    worse = sum(d < -_TIE for d in diffs.values())
    return mcnemar_exact(better, worse, alternative)


def mcnemar_exact(b: int, c: int, alternative: str = "two-sided") -> float:
    """Exact McNemar p-value from the discordant counts b (0->1) and c (1->0)."""
    if b + c == 0:
        return 1.0
    return float(binomtest(b, b + c, 0.5, alternative=alternative).pvalue)


UNPAIRED_RESAMPLES = 9_999  # permutations of the clustered unpaired test: p-values resolve to 1e-4


def unpaired_p_value(correct: Sequence[bool], null: Sequence[bool], clusters: Sequence[str] | None = None,
                     null_clusters: Sequence[str] | None = None, chance: Sequence[float] | None = None,
                     null_chance: Sequence[float] | None = None) -> float:
    """One-sided test that `correct` (one set of questions) beats `null` (another set, e.g. facts never trained);
    1.0 when either is empty.

    With every question its own cluster and one chance level on both sides it is Fisher's exact test. When
    questions share a cluster (a fact asked twice is one piece of evidence), or the sides' questions have different
    numbers of candidates (`chance`, `null_chance`: 1/k per question), it compares the clusters' mean excess over
    chance instead, by permutation of whole clusters between the two sets (seeded: the same rows give the same
    p-value); a question-blind strategy has no excess on either side. A side of one cluster (a small tier whose
    questions all ask about one entity) has no spread to compare: 1.0, as for no evidence.
    """
    if not correct or not null:
        return 1.0
    base = list(chance) if chance is not None else [0.0] * len(correct)
    null_base = list(null_chance) if null_chance is not None else [0.0] * len(null)
    excess = [float(bool(c)) - b for c, b in zip(correct, base, strict=True)]
    null_excess = [float(bool(c)) - b for c, b in zip(null, null_base, strict=True)]
    groups = list(_group(excess, clusters or [str(i) for i in range(len(correct))]).values())
    null_groups = list(_group(null_excess, null_clusters or [str(i) for i in range(len(null))]).values())
    if all(len(g) == 1 for g in [*groups, *null_groups]) and len(set(base + null_base)) == 1:
        k, m = sum(map(bool, correct)), sum(map(bool, null))
        table = [[k, len(correct) - k], [m, len(null) - m]]
        return float(fisher_exact(table, alternative="greater").pvalue)
    if len(groups) < 2 or len(null_groups) < 2:
        return 1.0
    means = [np.array([sum(g) / len(g) for g in gs]) for gs in (groups, null_groups)]
    test = permutation_test(means, lambda a, b: np.mean(a) - np.mean(b), permutation_type="independent",
                            alternative="greater", n_resamples=UNPAIRED_RESAMPLES, rng=np.random.default_rng(0))
    return float(test.pvalue)


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its two-sided 95% Student t interval (nan for a single value): runs of one
    config under several seeds are independent draws, few of them."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, float(student_t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def _group(values: Sequence[float], labels: Sequence[str]) -> dict[str, list[float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for v, label in zip(values, labels):
        groups[label].append(float(v))
    return groups
