"""Key names of the run-directory contract, shared by the writers (train, eval, app) and the readers (report, sweeps).

`metrics.jsonl` holds one JSON object per logged row; every row has `step` (the optimizer step), so train, eval
and recall rows share one axis. `summary.json` holds the final figures of the run. The `<stat>` of a
`recall/<tier>/<stat>` key is one registered in `evaluation/metrics.py`; the built-in ones are listed here. This
module names keys only: it imports no metric registry (the registry imports it), so the names stay importable
alone. The exact names:

    step                          int, optimizer step (every metrics row; also the final step in the summary)
    status                        "running" | "completed" | "diverged" | "failed" | "interrupted" (summary):
                                  "interrupted" after SIGTERM or SIGINT (a checkpoint was saved; resume it);
                                  "running" stays in the summary of a run that was killed outright
    message                       why a run diverged or failed, e.g. "RuntimeError: ..." (summary)
    wandb/id                      the W&B run id, kept by the Tracker so a resumed run continues it (summary)
    train/loss                    training loss (metrics rows; final value in the summary)
    eval/loss                     eval loss on the fixed eval set (metrics rows; final value in the summary)
    nan_guard/events              cumulative count of NaN-guard events (metrics rows and summary)
    train/useful_frames_per_sec   throughput (metrics rows; last value in the summary)
    recall/<tier>/mc_acc          multiple-choice accuracy on a tier (train | eval | paraphrase | unseen_facts |
                                  heldout_facts | retain | ..., qa/schema.py's Tier, and eval_tune | eval_test, the
                                  halves of eval: SPLIT_TIERS); recall rows in metrics, final value in the summary
    recall/<tier>/mc_acc_low      lower end of the 95% Wilson interval of the final mc_acc (summary)
    recall/<tier>/mc_acc_high     upper end of that interval (summary)
    recall/<tier>/best_mc_acc     the maximum of mc_acc over the run's evaluations (summary): biased upward by the
                                  choice of step, so never a headline
    recall/<tier>/baseline_mc_acc mc_acc of the untrained base model on the same questions (summary)
    recall/<tier>/delta           mc_acc - baseline_mc_acc (summary)
    recall/<tier>/p_value         paired test of final against baseline on the same questions (summary)
    recall/<tier>/n               number of questions scored (summary)
    recall/<tier>/n_nonfinite     questions answered from non-finite weights or scores, all counted wrong (recall
                                  rows and summary); a run whose final recall has any ends as "diverged"
    recall/<tier>/mc_acc_shuffled mc_acc with each question's audio scored against another question's candidates
                                  (a control: near chance unless the answer comes from something but the question)
    recall/<tier>/mc_acc_silence  mc_acc with the question's audio replaced by silence (a control, as above)
    recall/<tier>/mc_acc_sum      mc_acc with candidates ranked by the summed (not the mean) log-probability of
                                  their tokens: each score has its own length bias, a real effect shows in both
    recall/<tier>/gen_acc         generation: the first answer span (up to the first clause break), normalised, is
                                  the gold or an alias (f1: token F1 of that span); recall rows and summary
    recall/<tier>/gen_acc_lenient generation: the gold appears anywhere in what Moshi said (lenient: babble that
                                  happens to include the gold counts)
    recall/<tier>/p_vs_shuffled   one-sided exact McNemar test (clustered by fact) that the real questions beat the
                                  shuffled control, on the same questions, model and step
    recall/<tier>/p_vs_silence    the same against the silence control
    recall/<tier>/p_vs_unseen_facts  one-sided test that the tier beats the unseen_facts tier (facts never trained)
                                  at the same step: Fisher's exact test, or with clusters or unequal chance a
                                  permutation test of whole clusters on the excess over chance
    recall/<tier>/p_vs_null       the headline test: the largest of the tier's p_vs_* (above every null, or not)
    recall/<tier>/p_vs_null_holm  p_vs_null adjusted by Holm's method over the tiers of the evaluation (the eval
                                  halves and the null tier are not in the family)
    recall/<tier>/n_flagged       questions with a candidate never trained as an answer of the question's relation
                                  (the distractor contract's flags, qa/schema.py)
    recall/<tier>/n_balanced      questions whose candidate set is counterbalanced within the tier (qa/balance.py):
                                  on those, every question-blind strategy scores exactly chance
    recall/<tier>/n_spiked        questions whose fact's Q/A a calibration run trained on purpose (qa.spike_in): in
                                  heldout_facts the tier's known share is n_spiked / n
    recall/<tier>/chance          the tier's chance level: the mean of 1/k over its questions of k candidates
    recall/<tier>/mde             minimum detectable effect: the smallest true mc_acc minus chance that a one-sided
                                  exact binomial test against chance detects with 80% power at alpha 0.05, on the
                                  tier's effective units (the clustered n_eff, at most its number of clusters);
                                  NaN (null) when too few units for any effect (evaluation/power.py; recall rows
                                  and summary). Its verdict ("above null", "inconclusive (MDE x)", "no effect
                                  larger than y") is printed in the final table and the sweep report, not stored
    recall_time/<part>_sec        seconds of one recall evaluation's parts: mc, gen, controls, voice, total, and
                                  setup with the first (recall rows)
    memory/train_peak_gib         training's peak GPU memory allocated so far (train rows, GPU only)
    memory/recall_peak_gib        one recall evaluation's peak GPU memory allocated (recall rows, GPU only)
    data/exposures_per_fact       how often the training data presents each trained fact, as measured (summary);
                                  the sweep report's Study section reads it as the dose, else the override
                                  train.exposures_per_fact. The mean over data/trained_facts of each fact's
                                  statements (Q/A turns, every phrasing; narrated sentences, every restatement) in
                                  the rows the loop drew (train/exposures.py; also in every train row, the dose
                                  so far); absent where the dataset does not record its conversations' facts (an
                                  imported dataset=moshi_finetune)
    data/trained_facts            the number of distinct facts the training conversations state (summary, train rows)
    finish_errors                 the steps after training that failed, with their errors; the run keeps its
                                  status and figures (summary)
    objective                     the value of the run's `objective.metric`, under one key whatever the metric, so
                                  the runs of sweeps on different metrics line up (summary; null unless the run
                                  completed with a finite value, like the figure a sweeper receives)

Both files are strict JSON: a non-finite number (a NaN loss) is written as null. A key that is present with
null means "non-finite"; a key that is absent means "not measured".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from moshi_knowledge.errors import UserError

STEP = "step"
STATUS = "status"
MESSAGE = "message"
TRAIN_LOSS = "train/loss"
EVAL_LOSS = "eval/loss"
NAN_EVENTS = "nan_guard/events"
EXPOSURES_PER_FACT = "data/exposures_per_fact"
TRAINED_FACTS = "data/trained_facts"
OBJECTIVE = "objective"
HEADLINE = "mc_acc"  # the figure a run is judged by: `recall/<tier>` without a stat means this one

RUNNING = "running"
COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.jsonl"  # one row per question per recall evaluation (evaluation/recall.py)

# Final figures of the loop (train/ and eval/) that a sweep may optimise, besides every recall key.
LOSS_KEYS = (TRAIN_LOSS, "train/text_loss", "train/audio_loss", EVAL_LOSS, "eval/text_loss", "eval/audio_loss",
             "eval/ppl", "eval/text_ppl")
OBJECTIVE_MODES = ("max", "min")
# Tiers split into two halves by cluster (deterministic by eval.seed): a sweep tunes on recall/eval_tune/..., the
# report quotes recall/eval_test/..., so the figure quoted was never the one selected on.
SPLIT_TIERS = ("eval",)
HALVES = ("tune", "test")
_RECALL_KEY = re.compile(rf"^recall/(?P<tier>[^/]+)/{HEADLINE}$")


def number(value: Any) -> float:
    """A contract value as a float: null (the contract's non-finite) and non-numbers read as NaN."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def recall_key(tier: str, stat: str = HEADLINE) -> str:
    """`recall/<tier>/<stat>`: the one place the recall key layout is spelled; `stat` is a registered metric's
    (evaluation/metrics.py)."""
    return f"recall/{tier}/{stat}"


def half_tier(tier: str, half: str) -> str:
    """The tier name under which one half of a split tier is reported: eval_tune, eval_test."""
    return f"{tier}_{half}"


def reported_tiers(tiers: Sequence[str]) -> list[str]:
    """The tiers a run reports for `eval.tiers`: each, plus both halves of each split tier."""
    return [*tiers, *(half_tier(t, h) for t in tiers if t in SPLIT_TIERS for h in HALVES)]


def recall_tiers(keys: Any) -> list[str]:
    """Tiers that have a final `recall/<tier>/mc_acc` among `keys`, in first-seen order."""
    tiers = [m["tier"] for k in keys if (m := _RECALL_KEY.match(k))]
    return list(dict.fromkeys(tiers))


def check_objective(metric: str, mode: str, tiers: Sequence[str], stats: Sequence[str]) -> None:
    """Refuse, before any stage runs, an objective the run can never report (a typo would make every trial fail).
    `stats`: the registered recall stats (evaluation.metrics.recall_stats()), passed in so the contract needs no
    registry."""
    if mode not in OBJECTIVE_MODES:
        raise UserError(f"objective.mode={mode!r} is not a direction", "set objective.mode to max or min")
    known = [*LOSS_KEYS, *(recall_key(t, s) for t in reported_tiers(tiers) for s in stats)]
    if metric not in known:
        raise UserError(f"objective.metric={metric!r} is not a figure this run reports",
                        f"use a key of summary.json: recall/<tier>/<stat> with <tier> one of "
                        f"{reported_tiers(tiers)} (eval.tiers and their halves) and <stat> one of "
                        f"{', '.join(stats)}, or one of {', '.join(LOSS_KEYS)}")


def objective_value(summary: Mapping[str, Any], metric: str) -> float | None:
    """The value a sweeper optimises (summary key `metric`), or None for a run that did not complete or has no
    finite value.

    Optuna crashes on NaN but records `None` as a failed trial and carries on (docs/tools.md), so a diverged or failed
    run must never hand back a number.
    """
    if summary.get(STATUS) != COMPLETED:
        return None
    value = summary.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)
