"""Loading questions.json: clusters of questions that share a fact, and the tuning / test halves of the eval tier."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import compose_cfg
from moshi_knowledge.evaluation.questions import load_questions
from moshi_knowledge.evaluation.report import summarize
from moshi_knowledge.tracking.contract import check_objective


def _dataset(tmp_path: Path, facts: list[list[str]], tier: str = "eval") -> Path:
    entries = [{"id": f"{tier}-{i:03d}", "tier": tier, "text": f"q{i}?", "audio": f"questions/{i}.wav", "gold": "a",
                "distractors": ["b", "c", "d"], "fact_ids": f} for i, f in enumerate(facts)]
    (tmp_path / "questions.json").write_text(json.dumps({"questions": entries}))
    return tmp_path


def test_questions_sharing_a_fact_directly_or_through_another_are_one_cluster(tmp_path: Path) -> None:
    facts = [["a", "b"], ["b", "c"], ["c"], ["d", "e"], ["f"], ["e"], []]
    clusters = [q.cluster for q in load_questions(_dataset(tmp_path, facts), ["eval"])]
    assert clusters == ["eval-000", "eval-000", "eval-000", "eval-003", "eval-004", "eval-003", "eval-006"]


def test_eval_halves_split_clusters_by_seed_and_never_split_one(tmp_path: Path) -> None:
    facts = [[f"f{i // 2}", f"g{i}"] for i in range(40)]  # 20 clusters of 2 questions
    data = _dataset(tmp_path, facts)
    questions = load_questions(data, ["eval"], seed=3)
    halves: dict[str, set[str]] = {}
    for q in questions:
        halves.setdefault(q.cluster, set()).add(q.half)
    assert all(len(h) == 1 for h in halves.values()) and len(halves) == 20
    assert sum(h == {"tune"} for h in halves.values()) == 10
    assert [q.half for q in load_questions(data, ["eval"], seed=3)] == [q.half for q in questions]
    assert [q.half for q in load_questions(data, ["eval"], seed=4)] != [q.half for q in questions]
    subset = load_questions(data, ["eval"], max_per_tier=10, seed=3)  # a subset keeps each question's half
    assert all(q.half == {p.id: p.half for p in questions}[q.id] for q in subset)


def test_other_tiers_are_not_split(tmp_path: Path) -> None:
    assert {q.half for q in load_questions(_dataset(tmp_path, [["a"], ["b"]], "train"), ["train"])} == {None}


def test_the_sweep_tunes_on_one_half_and_each_half_is_reported() -> None:
    cfg = compose_cfg()
    assert cfg.objective.metric == "recall/eval_tune/mc_acc"
    check_objective(cfg.objective.metric, cfg.objective.mode, list(cfg.eval.tiers))
    check_objective("recall/eval_test/p_vs_null", "min", ["eval"])
    rows = [{"step": s, "qid": f"q{i}", "tier": "eval", "cluster": f"q{i}", "half": "tune" if i < 3 else "test",
             "mc_correct": i % 2 == 0, "mc_rank": 1, "mc_margin": 0.0} for s in (0, 5) for i in range(6)]
    summary = summarize(rows)
    assert summary["recall/eval/n"] == 6 and summary["recall/eval_tune/n"] == 3 == summary["recall/eval_test/n"]
    assert summary["recall/eval_tune/mc_acc"] == 2 / 3 and summary["recall/eval_test/mc_acc"] == 1 / 3
