"""Wilson intervals, exact McNemar and fact clustering against values computed by hand."""

from __future__ import annotations

import math

import pytest
from scipy.stats import fisher_exact

from moshi_knowledge.evaluation.stats import (
    accuracy_interval,
    mcnemar_exact,
    paired_p_value,
    unpaired_p_value,
    wilson,
)


def test_wilson_matches_textbook_values() -> None:
    # 8/10 at 95%: the standard worked example, (0.4902, 0.9433).
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    # 0/20: the lower bound is 0 and the upper is z^2 / (n + z^2).
    z2 = 1.959963984540054**2
    assert wilson(0, 20) == pytest.approx((0.0, z2 / (20 + z2)))


def test_mcnemar_exact_matches_binomial_tails() -> None:
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)  # 0.021484375
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_p_value_counts_only_discordant_items() -> None:
    before = [False] * 12 + [True] * 8
    after = [True] * 9 + [False] * 3 + [True] * 7 + [False]  # 9 improved, 1 worsened, 10 unchanged
    assert paired_p_value(before, after) == pytest.approx(mcnemar_exact(9, 1))


def test_clusters_of_one_change_nothing() -> None:
    correct = [True] * 7 + [False] * 3
    plain = accuracy_interval(correct)
    single = accuracy_interval(correct, clusters=[f"f{i}" for i in range(10)])
    assert (single.low, single.high) == pytest.approx((plain.low, plain.high))
    assert paired_p_value([False] * 10, correct, [f"f{i}" for i in range(10)]) == paired_p_value([False] * 10, correct)


def test_repeated_phrasings_of_one_fact_count_once() -> None:
    # 10 facts asked 3 times each, answered identically every time: the evidence is 10 items, not 30.
    per_fact = [True] * 7 + [False] * 3
    correct = [c for c in per_fact for _ in range(3)]
    clusters = [f"fact{i}" for i in range(10) for _ in range(3)]
    clustered = accuracy_interval(correct, clusters)
    assert clustered.value == pytest.approx(0.7)
    assert clustered.n == 30
    # Sandwich variance: 10/9 * (7 * 0.9^2 + 3 * 2.1^2) / 30^2 = 0.02333, so n_eff = 0.21 / 0.02333 = 9
    # (10 facts, less one for the small-sample correction).
    assert clustered.n_eff == pytest.approx(9.0)
    assert (clustered.low, clustered.high) == pytest.approx(wilson(0.7 * 9, 9))
    unclustered = accuracy_interval(correct)
    assert clustered.high - clustered.low > unclustered.high - unclustered.low
    # All correct: no variance to estimate, so the interval uses the number of facts.
    perfect = accuracy_interval([True] * 30, clusters)
    assert (perfect.low, perfect.high) == pytest.approx(wilson(10, 10))
    # A paired test over those clusters: 7 facts improved -> sign test on 7 vs 0, not 21 vs 0.
    assert paired_p_value([False] * 30, correct, clusters) == pytest.approx(mcnemar_exact(7, 0))
    assert math.isclose(paired_p_value([False] * 30, correct), mcnemar_exact(21, 0))


def _fisher_greater(k: int, n: int, m: int, n_null: int) -> float:
    return float(fisher_exact([[k, n - k], [m, n_null - m]], alternative="greater").pvalue)


def test_unpaired_test_is_fishers_on_independent_questions() -> None:
    correct, null = [True] * 7 + [False] * 3, [True] * 2 + [False] * 8
    assert unpaired_p_value(correct, null) == pytest.approx(_fisher_greater(7, 10, 2, 10), rel=1e-12)
    assert unpaired_p_value(correct, null, [f"c{i}" for i in range(10)]) == unpaired_p_value(correct, null)
    assert unpaired_p_value([], null) == 1.0


def test_unpaired_test_counts_a_cluster_once() -> None:
    """Each fact asked three times, answered alike: three times the questions but the evidence of ten, so the
    p-value is that of ten questions against ten (by permutation, to its resolution), not of thirty."""
    per_fact = [True] * 7 + [False] * 3
    correct = [a for a in per_fact for _ in range(3)]
    clusters = [f"fact{i}" for i in range(10) for _ in range(3)]
    null = [True] * 2 + [False] * 8
    clustered = unpaired_p_value(correct, null, clusters)
    assert clustered == pytest.approx(_fisher_greater(7, 10, 2, 10), abs=0.01)
    assert clustered > 3 * _fisher_greater(21, 30, 2, 10), "thirty independent questions would be far stronger"
    assert unpaired_p_value(correct, null, clusters) == clustered  # seeded: the same rows, the same p-value


def test_unpaired_test_of_a_single_cluster_is_no_evidence() -> None:
    """All of a small tier's questions about one entity are one piece of evidence: no clusters to permute, so no
    claim that the tier beats the null, however many of its questions are right."""
    assert unpaired_p_value([True] * 5, [False] * 5, ["queen"] * 5) == 1.0
    assert unpaired_p_value([True] * 5, [False] * 5, [f"e{i}" for i in range(5)], ["king"] * 5) == 1.0
    assert unpaired_p_value([True] * 5, [False] * 5, ["queen", "queen", "a", "b", "c"]) < 0.05


def test_holm_matches_its_step_down_definition() -> None:
    """Holm (1979): sort, multiply the i-th smallest by (m - i), keep the running maximum, cap at 1."""
    from moshi_knowledge.evaluation.metrics import holm

    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    assert adjusted == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.5})
    assert holm({"only": 0.02}) == {"only": 0.02} and holm({}) == {}
    assert holm({"x": 0.6, "y": 0.7})["y"] == 1.0  # capped
