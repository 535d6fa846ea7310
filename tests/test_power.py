"""The minimum detectable effect of a tier's test and the verdict on a tier, against independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from moshi_knowledge.evaluation.power import critical_count, minimum_detectable_effect, tier_mde, tier_units, verdict
from moshi_knowledge.evaluation.run_summary import recall_table, step_metrics, summarize


def _smallest_rejecting_count(n: int, chance: float) -> int:
    """The critical count by scipy's exact binomial test itself, one count at a time."""
    return next(k for k in range(n + 1) if binomtest(k, n, chance, alternative="greater").pvalue <= 0.05)


@pytest.mark.parametrize("n,chance", [(20, 0.25), (40, 1 / 3), (100, 0.25), (18, 0.5)])
def test_the_mde_is_where_the_exact_test_reaches_80_percent_power(n: int, chance: float) -> None:
    c = _smallest_rejecting_count(n, chance)
    assert critical_count(n, chance) == c
    mde = minimum_detectable_effect(n, chance)
    assert binom.sf(c - 1, n, chance + mde) == pytest.approx(0.8, abs=1e-9)  # exactly 80% power there
    # and it is the smallest such accuracy: a brute-force scan of true accuracies finds the same point
    grid = np.arange(chance, 1.0, 1e-4)
    assert grid[np.argmax(binom.sf(c - 1, n, grid) >= 0.8)] - chance == pytest.approx(mde, abs=1e-4)


def test_a_simulation_detects_the_mde_four_times_in_five() -> None:
    n, chance = 30, 0.25
    mde = minimum_detectable_effect(n, chance)
    c = _smallest_rejecting_count(n, chance)
    rng = np.random.default_rng(0)
    right = rng.random((100_000, n)) < chance + mde  # 100k tiers of 30 independent questions
    assert np.mean(right.sum(axis=1) >= c) == pytest.approx(0.8, abs=0.005)
    smaller = rng.random((100_000, n)) < chance + mde - 0.03
    assert np.mean(smaller.sum(axis=1) >= c) < 0.77


def test_the_mde_shrinks_with_more_questions() -> None:
    mdes = [minimum_detectable_effect(n, 0.25) for n in (10, 20, 50, 100, 400)]
    assert mdes == sorted(mdes, reverse=True) and mdes[-1] < 0.07 < 0.4 < mdes[0]
    assert minimum_detectable_effect(19.9999999999, 0.25) == minimum_detectable_effect(20, 0.25)  # n_eff rounding
    assert minimum_detectable_effect(19.6, 0.25) == minimum_detectable_effect(19, 0.25)  # whole units, rounded down


def test_too_few_units_detect_nothing() -> None:
    assert critical_count(2, 0.25) is None  # 2 of 2 right happens 1 time in 16 by chance
    assert math.isnan(minimum_detectable_effect(2, 0.25)) and math.isnan(minimum_detectable_effect(0, 0.25))
    assert math.isnan(minimum_detectable_effect(50, 1.0)) and math.isnan(minimum_detectable_effect(50, math.nan))
    assert minimum_detectable_effect(3, 0.25) == pytest.approx((0.8 ** (1 / 3)) - 0.25)  # needs 3 of 3


def test_the_mde_grows_with_clustering() -> None:
    """Sixty questions about sixty facts, against the same sixty as twenty facts asked three ways each."""
    correct = [i % 5 < 2 for i in range(60)]
    independent = tier_mde(correct, [f"q{i}" for i in range(60)], 0.25)
    assert independent == pytest.approx(minimum_detectable_effect(60, 0.25))
    # three phrasings of one fact answered alike: the design effect leaves about 19 units
    alike = [i % 5 < 2 for i in range(20) for _ in range(3)]
    clusters = [f"f{i}" for i in range(20) for _ in range(3)]
    assert tier_units(alike, clusters) == pytest.approx(19.0)
    assert tier_mde(alike, clusters, 0.25) == pytest.approx(minimum_detectable_effect(19, 0.25))
    # answered independently of each other the design effect is small, but the cluster-level tests see 20 facts
    assert tier_units(correct, [f"f{i // 3}" for i in range(60)]) == 20.0
    assert independent < tier_mde(correct, [f"f{i // 3}" for i in range(60)], 0.25) < tier_mde(alike, clusters, 0.25)


def test_the_verdict_reads_p_interval_and_mde() -> None:
    assert verdict(0.01, 0.05, 0.2) == "above null"  # the test says so, whatever the interval
    assert verdict(0.30, 0.25, 0.2) == "inconclusive (MDE 0.20)"  # the interval still allows an effect that matters
    assert verdict(0.30, 0.20, 0.2) == "inconclusive (MDE 0.20)"  # reaching the MDE is enough
    assert verdict(0.60, 0.12, 0.2) == "no effect larger than 0.12"
    assert verdict(0.90, -0.03, 0.2) == "no effect larger than 0.00"  # the whole interval below the null
    assert verdict(0.30, 0.10, math.nan) == "inconclusive (MDE n/a)"  # a test that can detect nothing excludes nothing
    assert verdict(math.nan, 0.10, 0.2) == "no effect larger than 0.10"


def _rows(step: int, tier: str, correct: list[bool], clusters: list[str] | None = None) -> list[dict]:
    return [{"step": step, "qid": f"{tier}-{i}", "tier": tier, "cluster": clusters[i] if clusters else f"{tier}-{i}",
             "mc_correct": ok, "chance": 0.25, "mc_correct_silence": False, "mc_correct_shuffled": False}
            for i, ok in enumerate(correct)]


def test_every_tier_reports_its_mde_and_the_final_table_its_verdict() -> None:
    train = [True] * 30 + [False] * 10
    unseen = [True] * 5 + [False] * 15
    eval_ = [True] * 6 + [False] * 14
    paraphrase = [True, False, False, False] * 15
    heldout = [True] * 4 + [False] * 6
    rows = [*_rows(0, "train", [False] * 40), *_rows(4, "train", train), *_rows(4, "unseen_facts", unseen),
            *_rows(4, "eval", eval_), *_rows(4, "paraphrase", paraphrase, [f"f{i // 3}" for i in range(60)]),
            *_rows(4, "heldout_facts", heldout)]
    summary = summarize(rows)
    for tier, n in (("train", 40), ("unseen_facts", 20), ("eval", 20), ("paraphrase", 20), ("heldout_facts", 10)):
        assert summary[f"recall/{tier}/mde"] == pytest.approx(minimum_detectable_effect(n, 0.25)), tier
    assert step_metrics(rows[40:])["recall/train/mde"] == summary["recall/train/mde"]  # per evaluation too
    table = recall_table(summary)
    head = table[table.index("vs nulls"):].splitlines()
    assert head[0].endswith("MDE  verdict")
    lines = {line.split()[0]: line for line in head[2:]}
    assert lines["train"].endswith(f"{summary['recall/train/mde']:.2f}  above null")
    assert summary["recall/eval/mc_acc_high"] - 0.25 < summary["recall/eval/mde"]  # 6 of 20: nothing above 0.27
    assert lines["eval"].endswith(f"no effect larger than {summary['recall/eval/mc_acc_high'] - 0.25:.2f}")
    # 15 of 60 on 20 facts: the interval (design-effect n_eff) excludes more than the 20 facts' test could detect
    assert lines["paraphrase"].endswith("no effect larger than 0.12")
    # 4 of 10: the interval reaches past what ten questions could detect (0.42)
    assert lines["heldout_facts"].endswith(f"inconclusive (MDE {minimum_detectable_effect(10, 0.25):.2f})")
