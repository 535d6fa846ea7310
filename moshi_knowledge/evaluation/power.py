"""What a tier's test could have seen: its minimum detectable effect (MDE), and the plain verdict on a tier.

A p-value above 0.05 on twenty questions does not say "no effect": it may only say "too few questions to tell".
The MDE makes the difference visible: the smallest excess of true accuracy over chance that the tier's test
would detect with 80% power at one-sided alpha 0.05. The verdict then reads a tier's result against it:

    above null                   the headline p-value (Holm-adjusted where there is one) is below 0.05
    inconclusive (MDE 0.18)      not above the null, and the 95% interval still allows an excess of at least the
                                 MDE: an effect the test was built to see may be there
    no effect larger than 0.07   not above the null, and the interval's upper end lies below the MDE: every
                                 effect larger than that end is excluded

Method (exact, not a normal approximation: tiers are tens of questions and chance sits near 0.25):
the one-sided exact binomial test of "accuracy = chance" on `n` independent units rejects at `c` right answers,
the fewest whose upper tail under chance is at most alpha; its power at a true accuracy p is
P(Binomial(n, p) >= c) = P(Beta(c, n - c + 1) <= p), so the accuracy detected with 80% power is the 0.8 quantile
of that Beta distribution (scipy.stats), and the MDE is that accuracy minus chance.

Assumptions, stated once here: the units are the tier's effective sample size under clustering by fact
(`stats.accuracy_interval`'s design-effect n_eff) or its number of clusters, whichever is smaller (the headline
tests count clusters, and the smaller is the conservative choice), rounded down to whole units; chance is the
tier's mean 1/k (exact for equal k, an approximation of the Poisson-binomial otherwise). The headline test is the
largest p of three tests against nulls that are themselves estimated, so it is at most this powerful: the MDE is
a lower bound on the effect the headline can see, which makes "no effect larger than ..." the cautious reading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import beta, binom

from moshi_knowledge.evaluation.stats import accuracy_interval

ALPHA = 0.05  # one-sided significance level of the tier's test, and the verdict's threshold
POWER = 0.80  # the power at which the MDE is detected
ABOVE_NULL = "above null"
_EPS = 1e-9  # an n_eff of 8.999999999 is 9 units, not 8


def critical_count(n: int, chance: float, alpha: float = ALPHA) -> int | None:
    """The fewest right answers of `n` at which the one-sided exact binomial test rejects `chance` at `alpha`;
    None when not even all `n` right would (too few units for any effect to be detected)."""
    tails = binom.sf(np.arange(n + 1) - 1, n, chance)  # P(X >= k) for k = 0..n
    hits = np.flatnonzero(tails <= alpha)
    return int(hits[0]) if hits.size else None


def minimum_detectable_effect(n_units: float, chance: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true accuracy minus `chance` that the exact one-sided binomial test on `n_units` independent
    units (rounded down) detects with `power` at `alpha`; NaN when no accuracy can be detected (too few units) or
    chance is not a probability strictly between 0 and 1."""
    if not (math.isfinite(n_units) and 0 < chance < 1):
        return math.nan
    n = math.floor(n_units + _EPS)
    c = critical_count(n, chance, alpha) if n >= 1 else None
    if c is None:
        return math.nan
    return float(beta.ppf(power, c, n - c + 1)) - chance


def tier_units(correct: Sequence[bool], clusters: Sequence[str]) -> float:
    """The independent units a tier's test has: the design-effect n_eff of its accuracy, capped by its number of
    clusters (a fact asked three ways is one piece of evidence to the cluster-level headline tests)."""
    return min(accuracy_interval(correct, clusters).n_eff, float(len(set(clusters))))


def tier_mde(correct: Sequence[bool], clusters: Sequence[str], chance: float) -> float:
    """A tier's MDE over its chance level (mean 1/k) from its scored questions and their fact clusters."""
    return minimum_detectable_effect(tier_units(correct, clusters), chance) if correct else math.nan


def verdict(p: float, excess_high: float, mde: float, alpha: float = ALPHA) -> str:
    """One of three plain readings of a tier's result (module docstring): "above null", "inconclusive (MDE X)" or
    "no effect larger than Y".

    `p` is the headline p-value (Holm-adjusted where there is one), `excess_high` the upper end of the 95% interval
    of the excess over the null (accuracy minus chance, or minus the null tier), `mde` the test's MDE. A missing
    (NaN) MDE or interval end can exclude nothing, so it reads as inconclusive.
    """
    if p < alpha:
        return ABOVE_NULL
    if not (math.isfinite(mde) and math.isfinite(excess_high)) or excess_high >= mde:
        return f"inconclusive (MDE {mde:.2f})" if math.isfinite(mde) else "inconclusive (MDE n/a)"
    return f"no effect larger than {max(excess_high, 0.0):.2f}"
