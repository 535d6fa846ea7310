"""Recall figures from prediction rows: per-evaluation metrics, the run summary and the table."""

from __future__ import annotations

import pytest
from scipy.stats import fisher_exact

from moshi_knowledge.evaluation.run_summary import F0, F0_VS_BASELINE, recall_table, step_metrics, summarize
from moshi_knowledge.evaluation.stats import accuracy_interval, mcnemar_exact


def _rows(step: int, tier: str, mc: list[bool], gen: list[bool] | None = None, clusters: list[str] | None = None):
    gen = gen if gen is not None else [False] * len(mc)
    return [{"step": step, "qid": f"{tier}-{i}", "tier": tier, "cluster": clusters[i] if clusters else f"{tier}-{i}",
             "mc_correct": c, "mc_rank": 1 if c else 3, "mc_margin": 0.5 if c else -0.5,
             "gen_correct": g, "f1": 1.0 if g else 0.0} for i, (c, g) in enumerate(zip(mc, gen))]


def test_summary_compares_final_with_baseline_question_by_question() -> None:
    base = _rows(0, "train", [False] * 8 + [True] * 2)
    middle = _rows(10, "train", [True] * 10)  # the best evaluation, not the last
    final = _rows(20, "train", [True] * 8 + [False, True], gen=[True] * 5 + [False] * 5)
    summary = summarize(base + middle + final)
    assert summary["recall/train/n"] == 10
    assert summary["recall/train/mc_acc"] == pytest.approx(0.9)
    assert summary["recall/train/baseline_mc_acc"] == pytest.approx(0.2)
    assert summary["recall/train/best_mc_acc"] == pytest.approx(1.0)
    assert summary["recall/train/delta"] == pytest.approx(0.7)
    # 8 questions improved, 1 got worse (the 9th), 1 stayed right
    assert summary["recall/train/p_value"] == pytest.approx(mcnemar_exact(8, 1))
    interval = accuracy_interval([True] * 8 + [False, True])
    assert (summary["recall/train/mc_acc_low"], summary["recall/train/mc_acc_high"]) == pytest.approx(
        (interval.low, interval.high))
    assert summary["recall/train/gen_acc"] == pytest.approx(0.5)
    assert summary["recall/train/gen_p_value"] == pytest.approx(mcnemar_exact(5, 0))
    assert summary["recall/train/f1"] == pytest.approx(0.5)


def test_paraphrases_of_one_fact_count_once_in_the_paired_test() -> None:
    clusters = [f"fact{i // 3}" for i in range(12)]  # 4 facts, 3 paraphrases each
    before = _rows(0, "paraphrase", [False] * 12, clusters=clusters)
    after = _rows(5, "paraphrase", [True] * 12, clusters=clusters)
    summary = summarize(before + after)
    assert summary["recall/paraphrase/p_value"] == pytest.approx(mcnemar_exact(4, 0))  # not (12, 0)
    assert summary["recall/paraphrase/p_value"] > 0.1


def test_step_metrics_add_p_values_only_against_a_baseline() -> None:
    base = _rows(0, "eval", [False] * 6)
    now = _rows(3, "eval", [True] * 6)
    alone = step_metrics(now)
    assert alone["recall/eval/mc_acc"] == 1.0 and "recall/eval/p_value" not in alone
    paired = step_metrics(now, base)
    assert paired["recall/eval/p_value"] == pytest.approx(mcnemar_exact(6, 0))
    assert paired["recall/eval/mc_rank"] == 1.0 and paired["recall/eval/mc_margin"] == 0.5


def test_table_lists_every_tier_and_the_voice() -> None:
    rows = _rows(0, "train", [False] * 4) + _rows(0, "eval", [True] * 4) + _rows(9, "train", [True] * 4) + \
        _rows(9, "eval", [True] * 4)
    summary = summarize(rows, [{"step": 0, F0: 110.0}, {"step": 9, F0: 220.0, F0_VS_BASELINE: 12.0}])
    assert summary[F0] == 220.0 and summary[F0_VS_BASELINE] == 12.0
    table = recall_table(summary)
    lines = table.splitlines()
    assert any(line.startswith("train") and "0.00" in line and "1.00" in line for line in lines)
    assert any(line.startswith("eval") for line in lines)
    assert "+12.00 st vs baseline" in table


def test_table_prints_missing_null_and_nan_figures_as_na() -> None:
    """A model that stays silent has no pitch (null in summary.json): the table says n/a instead of failing."""
    summary = summarize(_rows(0, "train", [False, True]) + _rows(5, "train", [True, True]))
    summary.update({"recall/train/p_value": float("nan"), "recall/train/f1": None, F0: None, F0_VS_BASELINE: None})
    del summary["recall/train/gen_p_value"]
    table = recall_table(summary)
    train = next(line for line in table.splitlines() if line.startswith("train"))
    assert train.split()[1:4] == ["2", "0.50", "1.00"] and train.count("n/a") == 3
    assert "median F0 n/a Hz, n/a st vs baseline, n/a st vs the training voice" in table


def test_each_tier_is_tested_against_its_controls_and_the_unseen_facts_of_the_same_step() -> None:
    train = _rows(4, "train", [True] * 8 + [False] * 2, clusters=[f"f{i // 2}" for i in range(10)])
    for i, row in enumerate(train):  # silence: 2 of 10 right (both also right for real); shuffled: none
        row.update(mc_correct_silence=i < 2, mc_correct_shuffled=False)
    unseen = _rows(4, "unseen_facts", [True, False, False, False, False, False, False, False])
    for row in unseen:
        row.update(mc_correct_silence=row["mc_correct"], mc_correct_shuffled=False)
    figures = step_metrics(train + unseen)
    # clustered by fact: 5 facts, 3 better than under silence (facts 1-3), 4 better than shuffled (0-3)
    assert figures["recall/train/p_vs_silence"] == pytest.approx(mcnemar_exact(3, 0, alternative="greater"))
    assert figures["recall/train/p_vs_shuffled"] == pytest.approx(mcnemar_exact(4, 0, alternative="greater"))
    # against the null tier the unit is the fact too: 4 of 5 facts right against 1 of 8 (whole clusters permuted;
    # with 0/1 cluster accuracies and few enough permutations to run them all, that is Fisher's test on facts)
    assert figures["recall/train/p_vs_unseen_facts"] == pytest.approx(
        fisher_exact([[4, 1], [1, 7]], alternative="greater").pvalue)
    assert figures["recall/train/p_vs_null"] == max(figures[f"recall/train/p_vs_{n}"]
                                                    for n in ("silence", "shuffled", "unseen_facts"))
    assert figures["recall/unseen_facts/p_vs_silence"] == 1.0 and "recall/unseen_facts/p_vs_unseen_facts" not in figures
    table = recall_table(summarize(train + unseen))
    head = table[table.index("vs nulls"):].splitlines()
    assert head[2].startswith("train") and f"{figures['recall/train/p_vs_null']:.3g}" in head[2]
