"""The multiple-choice controls: shuffled questions and silent questions, scored beside every real evaluation."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_RUN, run_app
from moshi_knowledge.evaluation.controls import Controls, SilentQuestion, derangement, shuffled_pairs
from moshi_knowledge.evaluation.questions import EvalQuestion
from moshi_knowledge.speech.audio import write_mono_wav


def _question(i: int, tier: str, audio: Path) -> EvalQuestion:
    return EvalQuestion(id=f"{tier}-{i}", tier=tier, text=f"q{i}", audio=audio, gold=f"a{i}",
                        distractors=[f"d{i}"], source_id=None)


@pytest.mark.parametrize("n", [2, 3, 7, 20])
def test_derangement_moves_every_item(n: int) -> None:
    for seed in range(5):
        perm = derangement(n, random.Random(seed))
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))


def test_shuffled_pairs_stay_within_a_tier_and_follow_the_seed(tmp_path: Path) -> None:
    questions = [*(_question(i, "train", tmp_path) for i in range(12)), _question(0, "eval", tmp_path),
                 *(_question(i, "paraphrase", tmp_path) for i in range(5))]
    pairs = shuffled_pairs(questions, seed=0)
    assert sorted(i for i, _ in pairs) == [i for i, q in enumerate(questions) if q.tier != "eval"]  # eval: alone
    assert all(i != j and questions[i].tier == questions[j].tier for i, j in pairs)
    assert sorted(j for _, j in pairs) == sorted(i for i, _ in pairs)  # every question's candidates used once
    assert shuffled_pairs(questions, seed=0) == pairs and shuffled_pairs(questions, seed=1) != pairs


def test_the_shuffled_control_is_the_share_of_its_derangements_that_pick_gold(tmp_path: Path) -> None:
    """Each draw is its own derangement; a question's shuffled figure counts the draws whose candidates it was
    scored against (another question's) picked that question's gold, here whenever the other question was q3."""
    questions = [_question(i, "train", tmp_path) for i in range(6)]
    controls = Controls(questions, lambda qs: [SimpleNamespace(mc=q) for q in qs], seed=0, shuffles=3)
    draws = [dict(shuffled_pairs(questions, 0, draw)) for draw in range(3)]
    assert draws[0] != draws[1] != draws[2]
    scored = controls.mc_questions()
    fields = controls.row_fields([SimpleNamespace(correct=q.gold == "a3") for q in scored], weights_finite=True)
    for i in range(6):
        assert fields[i]["shuffled_qids"] == [f"train-{d[i]}" for d in draws]
        assert fields[i]["mc_correct_shuffled"] == pytest.approx(sum(d[i] == 3 for d in draws) / 3)
        assert fields[i]["mc_correct_silence"] is (i == 3)


def test_a_silent_question_is_silence_of_the_question_length(tmp_path: Path) -> None:
    audio = tmp_path / "q.wav"
    write_mono_wav(np.random.default_rng(0).uniform(-0.5, 0.5, 12_345).astype(np.float32), audio)
    question = _question(0, "train", audio)
    silent = SilentQuestion(**{k: getattr(question, k) for k in question.__dataclass_fields__})
    assert np.abs(question.samples()).max() > 0.1
    assert silent.samples().shape == question.samples().shape and not silent.samples().any()
    assert silent.candidates == question.candidates


@pytest.mark.slow
def test_trained_recall_rises_while_the_controls_stay_near_chance(tiny_cache: Path, tmp_path: Path) -> None:
    """The tiny model fully finetuned on one Q/A per conversation learns its training questions (as the demo);
    asked another question's choices, or nothing at all, it cannot pick the gold answer better than chance."""
    run = tmp_path / "run"
    done = run_app([*TINY_RUN, "experiment=demo", "train.max_steps=40", "train.batch_size=4", "train.warmup_steps=5",
                    "train.eval_every=0", "train.ckpt_every=0", "eval.recall_every=0", "eval.generate=false",
                    "eval.voice=false", "logger=none", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["recall/train/baseline_mc_acc"] <= 0.5 and summary["recall/train/mc_acc"] >= 0.75
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    final = [r for r in rows if r["step"] == 40]
    train = {r["qid"]: r for r in final if r["tier"] == "train"}
    assert summary["recall/train/n_flagged"] == sum(bool(r["untrained_candidates"]) for r in train.values())
    # A flagged candidate was never trained for its relation (8 training facts leave some relations without three
    # other answers): its frequency is a prior the controls are there to show. Every other question's choices
    # are trained answers alike, and the model cannot tell them apart without the question.
    clean = [r for r in train.values() if not r["untrained_candidates"]]
    shuffled = [r for r in clean if not any(train[q]["untrained_candidates"] for q in r["shuffled_qids"])]
    for control, scored in (("silence", clean), ("shuffled", shuffled)):  # chance is 0.25 (4 candidates)
        assert sum(r[f"mc_correct_{control}"] for r in scored) <= max(1, len(scored) / 2), (control, scored)
        for tier in ("train", "paraphrase", "eval"):
            assert f"recall/{tier}/mc_acc_{control}" in summary
    tiers = {r["qid"]: r["tier"] for r in final}
    for row in final:
        assert isinstance(row["mc_correct_silence"], bool)
        if row["tier"] != "eval" or sum(t == "eval" for t in tiers.values()) > 1:
            assert len(row["shuffled_qids"]) == 3  # eval.shuffles derangements, averaged
            assert all(q != row["qid"] and tiers[q] == row["tier"] for q in row["shuffled_qids"])
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "recall/train/mc_acc_shuffled" in r] == [0, 40]
    table = done.stdout[done.stdout.index("vs nulls"):]
    assert "shuffled" in table and "silence" in table and any(line.startswith("train") for line in table.splitlines())
