"""Recall figures from prediction rows: per evaluation (metrics.jsonl), for the run (summary.json) and as a table.

Everything is computed from the prediction rows alone (plus the voice figures of the metric rows), so a resumed
run or a report script can rebuild the summary from predictions.jsonl. Key layout: `recall/<tier>/<stat>`
(see tracking/contract.py) and `voice/<stat>`.

Per tier and evaluation: n, mc_acc with its clustered Wilson interval (mc_acc_low, mc_acc_high), mean gold rank
(mc_rank), mean margin (mc_margin), gen_acc (+ interval), mean token F1 (f1), judge_acc when judged, and, from the
second evaluation on, the paired p-values against the baseline (p_value for MC, gen_p_value for generation).
Beside them the MC controls, mc_acc_shuffled and mc_acc_silence (controls.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from moshi_knowledge.evaluation import controls
from moshi_knowledge.evaluation.pitch import semitones
from moshi_knowledge.evaluation.stats import accuracy_interval, paired_p_value
from moshi_knowledge.tracking.contract import recall_key as key

F0 = "voice/f0_median_hz"
F0_BASELINE = "voice/f0_baseline_hz"
F0_TRAIN = "voice/f0_train_hz"
F0_VS_BASELINE = "voice/f0_semitones_vs_baseline"
F0_VS_TRAIN = "voice/f0_semitones_vs_train"

Row = Mapping[str, Any]
NAN = float("nan")


def step_metrics(rows: Sequence[Row], baseline: Sequence[Row] | None = None) -> dict[str, float]:
    """The metric row of one evaluation; with `baseline` rows, paired p-values against them (matched by qid)."""
    out: dict[str, float] = {}
    base_by_tier = _by_tier(baseline or [])
    for tier, tier_rows in _by_tier(rows).items():
        out.update({key(tier, k): v for k, v in _tier_figures(tier_rows).items()})
        if baseline is not None:
            out.update({key(tier, k): v for k, v in _paired(base_by_tier.get(tier, []), tier_rows).items()})
    return out


def voice_metrics(f0: float, baseline_f0: float | None, train_f0: float | None) -> dict[str, float]:
    out = {F0: f0, F0_BASELINE: _or_nan(baseline_f0), F0_VS_BASELINE: semitones(f0, _or_nan(baseline_f0))}
    if train_f0 is not None:
        out.update({F0_TRAIN: train_f0, F0_VS_TRAIN: semitones(f0, train_f0)})
    return out


def summarize(predictions: Iterable[Row], metric_rows: Iterable[Row] = ()) -> dict[str, float]:
    """summary.json's recall figures: final, baseline (first evaluation), best, delta and the paired p-value.

    Per tier: mc_acc, mc_acc_low, mc_acc_high, baseline_mc_acc, best_mc_acc, delta, p_value, n (the contract's
    keys) and the same for generation: gen_acc, baseline_gen_acc, best_gen_acc, gen_delta, gen_p_value, f1.
    """
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
    for tier, rows in final.items():
        figures = {**_tier_figures(rows), **_paired(base.get(tier, []), rows)}
        baseline = _tier_figures(base.get(tier, []))
        for stat, delta_name in (("mc_acc", "delta"), ("gen_acc", "gen_delta")):
            if stat not in figures:
                continue
            best = max(_tier_figures(h[tier])[stat] for h in history.values() if tier in h)
            figures.update({f"baseline_{stat}": baseline.get(stat, NAN), f"best_{stat}": best,
                            delta_name: figures[stat] - baseline.get(stat, NAN)})
        keep = ("n", "mc_acc", "mc_acc_low", "mc_acc_high", "baseline_mc_acc", "best_mc_acc", "delta", "p_value",
                "mc_rank", "mc_margin", "gen_acc", "baseline_gen_acc", "best_gen_acc", "gen_delta", "gen_p_value",
                "f1", "judge_acc", "mc_acc_shuffled", "mc_acc_silence")
        out.update({key(tier, k): figures[k] for k in keep if k in figures})
    voice = [r for r in metric_rows if F0 in r]
    if voice:
        last_voice = max(voice, key=lambda r: r.get("step", 0))
        out.update({k: last_voice[k] for k in (F0, F0_BASELINE, F0_VS_BASELINE, F0_TRAIN, F0_VS_TRAIN)
                    if k in last_voice})
    return out


def recall_table(summary: Mapping[str, float]) -> str:
    """The demo's final table: one line per tier, baseline -> final with the 95% interval, delta and p-value."""
    tiers = list(dict.fromkeys(k.split("/")[1] for k in summary if k.startswith("recall/")))
    header = f"{'tier':<11}{'n':>4}  {'MC base':>7} {'MC final':>8} {'95% CI':>13} {'delta':>6} {'p':>7}" \
             f"  {'gen base':>8} {'gen final':>9} {'p':>7} {'F1':>5}"
    lines = [header, "-" * len(header)]
    for tier in tiers:
        g = lambda stat: summary.get(key(tier, stat), NAN)  # noqa: E731
        ci = f"[{g('mc_acc_low'):.2f}, {g('mc_acc_high'):.2f}]"
        lines.append(f"{tier:<11}{int(g('n')):>4}  {g('baseline_mc_acc'):>7.2f} {g('mc_acc'):>8.2f} {ci:>13} "
                     f"{g('delta'):>+6.2f} {g('p_value'):>7.3g}  {g('baseline_gen_acc'):>8.2f} {g('gen_acc'):>9.2f} "
                     f"{g('gen_p_value'):>7.3g} {g('f1'):>5.2f}")
    lines += controls.table(summary, tiers)
    if F0 in summary:
        lines.append(f"voice: median F0 {summary[F0]:.1f} Hz, {summary.get(F0_VS_BASELINE, NAN):+.2f} st vs "
                     f"baseline, {summary.get(F0_VS_TRAIN, NAN):+.2f} st vs the training voice")
    return "\n".join(lines)


def _tier_figures(rows: Sequence[Row]) -> dict[str, float]:
    if not rows:
        return {}
    clusters = [r["cluster"] for r in rows]
    out: dict[str, float] = {"n": len(rows)}
    if "mc_correct" in rows[0]:
        acc = accuracy_interval([r["mc_correct"] for r in rows], clusters)
        out.update(mc_acc=acc.value, mc_acc_low=acc.low, mc_acc_high=acc.high,
                   mc_rank=_mean(r["mc_rank"] for r in rows), mc_margin=_mean(r["mc_margin"] for r in rows))
    if "gen_correct" in rows[0]:
        acc = accuracy_interval([r["gen_correct"] for r in rows], clusters)
        out.update(gen_acc=acc.value, gen_acc_low=acc.low, gen_acc_high=acc.high, f1=_mean(r["f1"] for r in rows))
    out.update(controls.figures(rows))
    judged = [r["judge_correct"] for r in rows if r.get("judge_correct") is not None]
    if judged:
        out["judge_acc"] = sum(judged) / len(judged)
    return out


def _paired(baseline: Sequence[Row], rows: Sequence[Row]) -> dict[str, float]:
    """Exact paired p-values of `rows` against `baseline` on the questions both scored, clustered by fact."""
    base = {r["qid"]: r for r in baseline}
    pairs = [(base[r["qid"]], r) for r in rows if r["qid"] in base]
    out: dict[str, float] = {}
    for field, name in (("mc_correct", "p_value"), ("gen_correct", "gen_p_value")):
        if pairs and field in pairs[0][0] and field in pairs[0][1]:
            out[name] = paired_p_value([b[field] for b, _ in pairs], [r[field] for _, r in pairs],
                                       [r["cluster"] for _, r in pairs])
    return out


def _by_tier(rows: Iterable[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        out[row["tier"]].append(row)
    return dict(out)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else NAN


def _or_nan(value: float | None) -> float:
    return NAN if value is None else value
