"""Recall figures from prediction rows: per evaluation (metrics.jsonl), for the run (summary.json) and as a table.

Everything is computed from the prediction rows alone (plus the voice figures of the metric rows), so a resumed
run or a report script can rebuild the summary from predictions.jsonl. Key layout: `recall/<tier>/<stat>`
(see tracking/contract.py) and `voice/<stat>`.

Per tier and evaluation: the figures of every metric registered in metrics.py (accuracies with their clustered
intervals, the controls and the tests against the nulls, from the second evaluation on the paired p-values
against the baseline); in the summary also each tracked metric's baseline, best and delta.

Rows read back from predictions.jsonl carry null for a non-finite number (the files are strict JSON); it reads as
NaN here. (The sweep report over many runs is moshi_knowledge/sweep_report.py.)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from moshi_knowledge.evaluation.metrics import CONTROLS, HOLM, METRICS, NULL_TIER, holm, paired_figures, tier_figures
from moshi_knowledge.evaluation.pitch import semitones
from moshi_knowledge.evaluation.power import verdict
from moshi_knowledge.markdown import fmt
from moshi_knowledge.tracking.contract import SPLIT_TIERS, half_tier, number
from moshi_knowledge.tracking.contract import recall_key as key

F0 = "voice/f0_median_hz"
F0_BASELINE = "voice/f0_baseline_hz"
F0_TRAIN = "voice/f0_train_hz"
F0_VS_BASELINE = "voice/f0_semitones_vs_baseline"
F0_VS_TRAIN = "voice/f0_semitones_vs_train"

Row = Mapping[str, Any]
NAN = float("nan")
_fmt = partial(fmt, missing="n/a")  # the final table's spelling of a missing or non-finite figure


def step_metrics(rows: Sequence[Row], baseline: Sequence[Row] | None = None) -> dict[str, float]:
    """The metric row of one evaluation; with `baseline` rows, paired p-values against them (matched by qid)."""
    out: dict[str, float] = {}
    base_by_tier = _by_tier(baseline or [])
    by_tier = _by_tier(rows)
    for tier in by_tier:
        figures = tier_figures(tier, by_tier)
        if baseline is not None:
            figures.update(paired_figures(base_by_tier.get(tier, []), by_tier[tier]))
        out.update({key(tier, k): v for k, v in figures.items()})
    return with_holm(out)


def with_holm(figures: dict[str, float]) -> dict[str, float]:
    """`figures` plus each tier's headline p-value adjusted over the evaluation's tiers (Holm); the halves of a
    split tier repeat their tier's test and the null tier has none, so neither is in the family."""
    halves = {half_tier(t, h) for t in SPLIT_TIERS for h in ("tune", "test")}
    family = {k.split("/")[1]: v for k, v in figures.items() if k.endswith("/p_vs_null") and k.split("/")[1] not in
              halves and isinstance(v, float) and math.isfinite(v)}
    return figures | {key(tier, HOLM): p for tier, p in holm(family).items()}


def voice_metrics(f0: float, baseline_f0: float | None, train_f0: float | None) -> dict[str, float]:
    out = {F0: f0, F0_BASELINE: _or_nan(baseline_f0), F0_VS_BASELINE: semitones(f0, _or_nan(baseline_f0))}
    if train_f0 is not None:
        out.update({F0_TRAIN: train_f0, F0_VS_TRAIN: semitones(f0, train_f0)})
    return out


def summarize(predictions: Iterable[Row], metric_rows: Iterable[Row] = ()) -> dict[str, float]:
    """summary.json's recall figures: each tier's final figures with their paired p-values against the baseline
    (the first evaluation) and, for each metric with a `delta` (mc_acc, gen_acc), its baseline, best and delta."""
    by_step: dict[int, list[Row]] = defaultdict(list)
    for row in predictions:
        by_step[int(row["step"])].append(row)
    if not by_step:
        return {}
    first, last = min(by_step), max(by_step)
    final = _by_tier(by_step[last])
    base = _by_tier(by_step[first])
    history = {step: _by_tier(rows) for step, rows in by_step.items()}
    out: dict[str, float] = {}
    for tier in final:
        figures = tier_figures(tier, final)
        figures.update(paired_figures(base.get(tier, []), final[tier]))
        baseline = tier_figures(tier, base) if tier in base else {}
        past = [tier_figures(tier, h) for h in history.values() if tier in h]
        for metric in METRICS.values():
            if metric.delta is None or metric.name not in figures:
                continue
            stat = metric.name
            best = max(p[stat] for p in past)
            figures.update({f"baseline_{stat}": baseline.get(stat, NAN), f"best_{stat}": best,
                            metric.delta: figures[stat] - baseline.get(stat, NAN)})
        out.update({key(tier, k): v for k, v in figures.items()})
    out = with_holm(out)
    voice = [r for r in metric_rows if F0 in r]
    if voice:
        last_voice = max(voice, key=lambda r: r.get("step", 0))
        out.update({k: number(last_voice[k]) for k in (F0, F0_BASELINE, F0_VS_BASELINE, F0_TRAIN, F0_VS_TRAIN)
                    if k in last_voice})
    return out


def recall_table(summary: Mapping[str, Any]) -> str:
    """The demo's final table: one line per tier, baseline -> final with the 95% interval, delta and p-value.

    A figure that is missing, null (how the run files spell NaN) or non-finite prints as n/a: a model that stayed
    silent has no pitch, and a table must never be what fails a finished run.
    """

    tiers = list(dict.fromkeys(k.split("/")[1] for k in summary if k.startswith("recall/")))
    w = _tier_width(tiers)
    header = f"{'tier':<{w}}{'n':>4}  {'MC base':>7} {'MC final':>8} {'95% CI':>13} {'delta':>6} {'p':>9}" \
             f"  {'gen base':>8} {'gen final':>9} {'p':>9} {'F1':>5}"
    lines = [header, "-" * len(header)]
    for tier in tiers:
        g = lambda stat, spec, tier=tier: _fmt(summary.get(key(tier, stat)), spec)  # noqa: E731
        ci = f"[{g('mc_acc_low', '.2f')}, {g('mc_acc_high', '.2f')}]"
        lines.append(f"{tier:<{w}}{g('n', '.0f'):>4}  {g('baseline_mc_acc', '.2f'):>7} {g('mc_acc', '.2f'):>8} "
                     f"{ci:>13} {g('delta', '+.2f'):>6} {g('p_value', '.3g'):>9}  "
                     f"{g('baseline_gen_acc', '.2f'):>8} {g('gen_acc', '.2f'):>9} {g('gen_p_value', '.3g'):>9} "
                     f"{g('f1', '.2f'):>5}")
    for tier in tiers:
        if (summary.get(key(tier, "n_nonfinite")) or 0) > 0:
            lines.append(f"{tier}: {int(summary[key(tier, 'n_nonfinite')])} of {int(summary[key(tier, 'n')])} "
                         "answers came from non-finite weights or scores and count as wrong")
    lines += _controls_table(summary, tiers)
    if F0 in summary:
        lines.append(f"voice: median F0 {_fmt(summary[F0], '.1f')} Hz, "
                     f"{_fmt(summary.get(F0_VS_BASELINE), '+.2f')} st vs baseline, "
                     f"{_fmt(summary.get(F0_VS_TRAIN), '+.2f')} st vs the training voice")
    return "\n".join(lines)


def _tier_width(tiers: Sequence[str]) -> int:
    """The tier column's width: the longest name and a space (p-values such as 1.32e-23 fill their columns)."""
    return max([11, *(len(t) + 2 for t in tiers)])


def _controls_table(summary: Mapping[str, Any], tiers: Sequence[str]) -> list[str]:
    """Under the recall table, the headline: per tier, the final MC figure beside each null's (the silence and
    shuffled controls on the same questions, the unseen_facts tier) with the one-sided p-value against each,
    p_vs_null, the largest of them (none without controls), that p-value adjusted over the tiers (Holm), the
    tier's chance level, how many of its questions sit in counterbalanced candidate sets, the tier's minimum
    detectable effect over chance (MDE) and the verdict that reading gives (`tier_verdict`)."""
    nulls = (*CONTROLS, NULL_TIER)
    shown = [t for t in tiers if key(t, "p_vs_null") in summary or key(t, "mc_acc_silence") in summary]
    if not shown:
        return []
    w = _tier_width(shown)
    header = f"{'vs nulls':<{w}}{'MC':>5}{'chance':>7}" + "".join(f"{n[:8]:>9}{'p':>10}" for n in nulls) \
        + f"{'p null':>10}{'Holm':>10}{'balanced':>9}{'MDE':>6}  verdict"
    lines = ["", header, "-" * len(header)]
    for tier in shown:
        cells = [f"{_fmt(summary.get(key(tier)), '.2f'):>5}{_fmt(summary.get(key(tier, 'chance')), '.2f'):>7}"]
        for null in nulls:
            value = summary.get(key(NULL_TIER)) if null == NULL_TIER else summary.get(key(tier, f"mc_acc_{null}"))
            cells.append(f"{_fmt(value, '.2f'):>9}{_fmt(summary.get(key(tier, f'p_vs_{null}')), '.3g'):>10}")
        balanced = f"{_fmt(summary.get(key(tier, 'n_balanced')), '.0f')}/{_fmt(summary.get(key(tier, 'n')), '.0f')}"
        lines.append(f"{tier:<{w}}" + "".join(cells) + f"{_fmt(summary.get(key(tier, 'p_vs_null')), '.3g'):>10}"
                     f"{_fmt(summary.get(key(tier, HOLM)), '.3g'):>10}{balanced:>9}"
                     f"{_fmt(summary.get(key(tier, 'mde')), '.2f'):>6}  "
                     f"{tier_verdict(lambda stat, tier=tier: summary.get(key(tier, stat))) or 'n/a'}")
    return lines


def tier_verdict(figure: Callable[[str], Any]) -> str | None:
    """power.verdict on one tier, from its figures (`figure(stat)` gives `recall/<tier>/<stat>` or None): the Holm
    p-value where the tier has one (else p_vs_null), the upper end of its 95% interval minus its chance level, and
    its MDE. None when the tier has no headline test. The run's final table and the sweep report both use it, so the
    two never disagree on a tier."""
    p = next((v for stat in (HOLM, "p_vs_null") if math.isfinite(v := number(figure(stat)))), None)
    if p is None:
        return None
    return verdict(p, number(figure("mc_acc_high")) - number(figure("chance")), number(figure("mde")))


def _by_tier(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows by tier; a row of a split tier also under its half (eval_tune, eval_test: contract.SPLIT_TIERS)."""
    out: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        out[row["tier"]].append(row)
        if row.get("half"):
            out[half_tier(row["tier"], row["half"])].append(row)
    return dict(out)


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value
