"""The recall-metric registry: one registration reaches the prediction rows, the figures, the summary, the key
contract and the sweep report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.mc import MCResult
from moshi_knowledge.evaluation.metrics import (
    METRICS,
    Answer,
    Metric,
    figure,
    proportion,
    recall_stats,
    register,
    row_fields,
)
from moshi_knowledge.evaluation.questions import EvalQuestion
from moshi_knowledge.evaluation.run_summary import step_metrics, summarize
from moshi_knowledge.evaluation.stats import mcnemar_exact
from moshi_knowledge.sweep_report import main as sweep_report
from moshi_knowledge.tracking.contract import check_objective, recall_key


def _top2_fields(a: Answer) -> dict[str, bool]:
    return {} if a.mc is None else {"mc_top2": a.finite and a.mc.gold_rank <= 2}


TOP2 = Metric("mc_acc_top2", figure("mc_acc_top2", proportion("mc_top2")), field="mc_top2",
              per_question=_top2_fields, paired="p_top2", delta="delta_top2", higher_is_better=True,
              across_seeds=True)


@pytest.fixture()
def top2() -> Iterator[Metric]:
    """A statistic the project does not have: gold among the two best-scored candidates."""
    register(TOP2)
    yield TOP2
    METRICS.pop(TOP2.name)


def _question(qid: str = "train-0") -> EvalQuestion:
    return EvalQuestion(id=qid, tier="train", text="Where?", audio=Path("q.wav"), gold="Kest",
                        distractors=["Arn", "Bel", "Cor"])


def _rows(step: int, top2: list[bool]) -> list[dict]:
    return [{"step": step, "qid": f"train-{i}", "tier": "train", "cluster": f"train-{i}", "mc_correct": False,
             "mc_rank": 2, "mc_margin": -0.1, "mc_top2": t} for i, t in enumerate(top2)]


def test_a_registered_metric_computes_its_row_field_from_each_answer(top2: Metric) -> None:
    second = MCResult("train-0", scores=[-1.0, -0.5, -2.0, -3.0], n_tokens=[1, 1, 1, 1])  # gold ranks 2nd
    fields = row_fields(Answer(_question(), finite=True, mc=second))
    assert fields["mc_top2"] is True and fields["mc_correct"] is False and fields["mc_rank"] == 2
    assert row_fields(Answer(_question(), finite=False, mc=second))["mc_top2"] is False
    assert "mc_top2" not in row_fields(Answer(_question(), finite=True))  # no MC scored: no field


def test_each_built_in_metric_writes_its_own_row_field() -> None:
    said = row_fields(Answer(_question(), finite=True, text="Kest, by the river"))  # the first span is the gold
    assert (said["gen_correct"], said["gen_contains"], said["f1"]) == (True, True, 1.0)
    rambled = row_fields(Answer(_question(), finite=True, text="Kest by the river"))  # gold inside a longer span
    assert (rambled["gen_correct"], rambled["gen_contains"]) == (False, True) and 0 < rambled["f1"] < 1
    assert not {"mc_correct", "mc_rank", "judge_correct"} & set(said)  # no MC scores, no judge
    broken = row_fields(Answer(_question(), finite=False, text="Kest"))
    assert (broken["gen_correct"], broken["gen_contains"], broken["f1"]) == (False, False, 0.0)
    judged = row_fields(Answer(_question(), finite=True, text="Arn", judge=lambda q, gold, aliases, text: True))
    assert judged["judge_correct"] is True and judged["gen_correct"] is False


def test_a_registered_metric_reaches_the_figures_and_the_summary(top2: Metric) -> None:
    base, final = _rows(0, [False] * 6 + [True] * 2), _rows(10, [True] * 7 + [False])
    assert step_metrics(final)["recall/train/mc_acc_top2"] == pytest.approx(7 / 8)
    assert step_metrics(final, base)["recall/train/p_top2"] == pytest.approx(mcnemar_exact(6, 1))
    summary = summarize(base + final)
    assert summary["recall/train/mc_acc_top2"] == pytest.approx(7 / 8)
    assert summary["recall/train/baseline_mc_acc_top2"] == pytest.approx(2 / 8)
    assert summary["recall/train/best_mc_acc_top2"] == pytest.approx(7 / 8)
    assert summary["recall/train/delta_top2"] == pytest.approx(5 / 8)
    assert summary["recall/train/p_top2"] == pytest.approx(mcnemar_exact(6, 1))


def test_a_registered_metric_is_a_contract_key_and_an_objective(top2: Metric) -> None:
    assert recall_key("eval_test", "delta_top2") == "recall/eval_test/delta_top2"
    check_objective("recall/eval_tune/mc_acc_top2", "max", ["eval"], recall_stats())


def test_an_unregistered_stat_is_no_objective() -> None:
    assert "mc_acc_top2" not in recall_stats()
    with pytest.raises(UserError, match="objective.metric"):
        check_objective("recall/train/mc_acc_top2", "max", ["train"], recall_stats())


def test_a_registered_metric_is_averaged_over_seeds_in_the_sweep_report(top2: Metric, tmp_path: Path) -> None:
    for seed, value in enumerate([0.5, 0.7, 0.9]):
        run = tmp_path / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["sweep=seeds", f"seed={seed}"]))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
        (run / "summary.json").write_text(json.dumps({"status": "completed", "step": 1, "recall/train/mc_acc": 0.5,
                                                      "recall/train/mc_acc_top2": value}))
    assert sweep_report([str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    seeds = report[report.index("## Across seeds"):].split("\n## ")[0]
    assert "| train (top2) | 3 | 0.700 | 0.200 |" in seeds


def test_a_stat_belongs_to_one_metric_and_a_figure_must_be_registered(top2: Metric) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(Metric("mc_acc_top3", lambda t: {}, delta="delta_top2"))
    stray = Metric("stray", lambda t: {"stray": 1.0, "unregistered": 2.0})
    register(stray)
    try:
        with pytest.raises(ValueError, match="unknown recall stat 'unregistered'"):
            step_metrics(_rows(0, [True]))  # a figure nobody declared fails loudly instead of vanishing
    finally:
        METRICS.pop(stray.name)
