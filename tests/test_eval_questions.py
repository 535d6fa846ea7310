"""Loading questions.json: clusters of questions that share a fact, and the tuning / test halves of the eval tier."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import compose_cfg
from moshi_knowledge.evaluation.metrics import recall_stats
from moshi_knowledge.evaluation.questions import load_questions
from moshi_knowledge.evaluation.run_summary import summarize
from moshi_knowledge.qa.facts import FactsQA
from moshi_knowledge.tracking.contract import check_objective
from moshi_knowledge.world.prose import label


def _dataset(tmp_path: Path, facts: list[list[str]], tier: str = "eval",
             entities: list[list[str]] | None = None, golds: list[str] | None = None) -> Path:
    entities = entities or [[] for _ in facts]
    golds = golds or [f"answer {i}" for i in range(len(facts))]
    entries = [{"id": f"{tier}-{i:03d}", "tier": tier, "text": f"q{i}?", "audio": f"questions/{i}.wav", "gold": g,
                "distractors": ["b", "c", "d"], "fact_ids": f, "entity_ids": e}
               for i, (f, e, g) in enumerate(zip(facts, entities, golds))]
    (tmp_path / "questions.json").write_text(json.dumps({"questions": entries}))
    return tmp_path


def test_questions_sharing_a_fact_directly_or_through_another_are_one_cluster(tmp_path: Path) -> None:
    facts = [["a", "b"], ["b", "c"], ["c"], ["d", "e"], ["f"], ["e"], []]
    clusters = [q.cluster for q in load_questions(_dataset(tmp_path, facts), ["eval"])]
    assert clusters == ["eval-000", "eval-000", "eval-000", "eval-003", "eval-004", "eval-003", "eval-006"]


def test_questions_about_one_entity_are_one_cluster_though_their_facts_differ(tmp_path: Path) -> None:
    """Two facts about one ruler are one cluster (the model's knowledge of her); an entity named by no other
    question, or a shared fact id that happens to equal an entity id, links nothing."""
    facts = [["f0"], ["f1"], ["f2"], ["e9"], ["f4"]]
    entities = [["queen"], ["queen"], ["river"], ["e8"], ["e9"]]
    clusters = [q.cluster for q in load_questions(_dataset(tmp_path, facts, entities=entities), ["eval"])]
    assert clusters == ["eval-000", "eval-000", "eval-002", "eval-003", "eval-004"]


def test_questions_with_one_gold_answer_are_one_cluster(tmp_path: Path) -> None:
    """Two rulers served by one monarch: knowing that monarch answers both, so they are one piece of evidence."""
    facts = [["f0"], ["f1"], ["f2"], ["f3"]]
    golds = ["King Arn", "Queen Bel", "king arn", "Queen Cyr"]
    clusters = [q.cluster for q in load_questions(_dataset(tmp_path, facts, golds=golds), ["eval"])]
    assert clusters == ["eval-000", "eval-001", "eval-000", "eval-003"]


def test_the_facts_backend_names_each_questions_entity(story) -> None:
    """qa=facts gives every question the entity it is about: its subject, or the object of a reversed question."""
    qa = FactsQA(seed=0, heldout_share=0.3).build(story)
    items = [q for q in qa.all_items() if q.tier != "retain"]
    assert qa.heldout_facts and all(len(q.entity_ids) == 1 for q in items)
    for q in items:
        named = label(story.world.entity(q.entity_ids[0]))
        assert named.lower() in q.question.lower(), (q.question, named)
    assert len({q.entity_ids[0] for q in qa.train}) < len(qa.train), "some entities are asked about twice"


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
    check_objective(cfg.objective.metric, cfg.objective.mode, list(cfg.eval.tiers), recall_stats())
    check_objective("recall/eval_test/p_vs_null", "min", ["eval"], recall_stats())
    rows = [{"step": s, "qid": f"q{i}", "tier": "eval", "cluster": f"q{i}", "half": "tune" if i < 3 else "test",
             "mc_correct": i % 2 == 0, "mc_rank": 1, "mc_margin": 0.0} for s in (0, 5) for i in range(6)]
    summary = summarize(rows)
    assert summary["recall/eval/n"] == 6 and summary["recall/eval_tune/n"] == 3 == summary["recall/eval_test/n"]
    assert summary["recall/eval_tune/mc_acc"] == 2 / 3 and summary["recall/eval_test/mc_acc"] == 1 / 3
