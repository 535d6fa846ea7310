"""The recall metrics, each registered once: what it writes into a question's prediction row, how a tier's rows
become its figures, its paired test against the baseline and which direction is better.

Everything that names recall statistics derives from this registry: the objective check (preflight hands
`recall_stats()` to `tracking.contract.check_objective`, which accepts `recall/<tier>/<stat>` for exactly the stats
registered here), the per-evaluation and summary figures (`run_summary.step_metrics`, `run_summary.summarize`),
the prediction rows (`recall.RecallEvaluator`) and the sweep report (`moshi_knowledge.sweep_report`: which figures
it averages over seeds, which way it ranks runs). Adding a statistic is one `register(Metric(...))` and its test.

Metrics are computed in registration order, so one may read the figures of those before it (`TierRows.figures`).
The module imports neither torch nor moshi: preflight imports it, and shell completion must stay light. It takes
the key names from the contract; the contract never imports it (no import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moshi_knowledge.evaluation.power import tier_mde
from moshi_knowledge.evaluation.stats import accuracy_interval, paired_p_value, unpaired_p_value
from moshi_knowledge.tracking.contract import HEADLINE

if TYPE_CHECKING:
    from moshi_knowledge.evaluation.mc import MCResult
    from moshi_knowledge.evaluation.questions import EvalQuestion

Row = Mapping[str, Any]
NAN = float("nan")

CONTROLS = ("shuffled", "silence")  # the MC controls (controls.py), each with its own prediction-row field
NULL_TIER = "unseen_facts"  # facts never trained: what recall scores from the priors alone


def correct_field(control: str) -> str:
    """The prediction-row field holding whether gold won under `control`."""
    return f"mc_correct_{control}"


@dataclass(frozen=True)
class Answer:
    """What the model did with one question: the inputs of every metric's prediction-row fields. `finite` is False
    when the weights or the MC scores were not finite; every measure then counts the question wrong."""

    question: EvalQuestion
    finite: bool
    mc: MCResult | None = None  # None when multiple choice was not scored
    text: str | None = None  # what Moshi said; None when it did not generate
    judge: Callable[[str, str, Sequence[str], str], bool | None] | None = None

    @property
    def answers(self) -> list[str]:
        return [self.question.gold, *self.question.aliases]


@dataclass(frozen=True)
class TierRows:
    """One tier's prediction rows at one evaluation, with what a metric may compare them against."""

    tier: str
    rows: Sequence[Row]
    step: Mapping[str, Sequence[Row]]  # every tier's rows at the same evaluation
    figures: Mapping[str, float]  # the figures of the metrics registered before


@dataclass(frozen=True)
class Metric:
    """One recall statistic, `recall/<tier>/<name>`.

    `aggregate` returns the tier's figures: `name` and any of `extra` (an interval's ends). It is skipped when no
    row of the tier has `field` (a measure the run did not take). `per_question` gives the row fields it needs from
    one answer ({} when its inputs are absent); None when another part writes them (row basics, the controls).
    `paired` names the exact paired p-value of `field` against the baseline's rows; `delta` names final minus
    baseline, and brings `baseline_<name>` and `best_<name>` into the summary.
    """

    name: str
    aggregate: Callable[[TierRows], dict[str, float]]
    field: str | None = None
    per_question: Callable[[Answer], dict[str, Any]] | None = None
    extra: tuple[str, ...] = ()
    paired: str | None = None
    delta: str | None = None
    higher_is_better: bool | None = None  # None: a count or a p-value, not a score to rank runs by
    across_seeds: bool = False  # the sweep report averages it over seeds (sweep=seeds)

    @property
    def stats(self) -> tuple[str, ...]:
        """Every stat name this metric can write."""
        tracked = (f"baseline_{self.name}", f"best_{self.name}", self.delta) if self.delta else ()
        return (self.name, *self.extra, *tracked, *((self.paired,) if self.paired else ()))


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add `metric` to the registry; a stat name may belong to one metric only."""
    taken = set(recall_stats())
    clash = [s for s in metric.stats if s in taken]
    if clash:
        raise ValueError(f"recall stats {clash} of metric {metric.name!r} are already registered")
    METRICS[metric.name] = metric
    return metric


def recall_stats() -> tuple[str, ...]:
    """Every registered stat name, the `<stat>` of `recall/<tier>/<stat>` (the contract's and summary's keys)."""
    return tuple(s for m in METRICS.values() for s in m.stats)


def tier_figures(tier: str, by_tier: Mapping[str, Sequence[Row]]) -> dict[str, float]:
    """One tier's figures at one evaluation, metric by metric in registration order."""
    rows = by_tier[tier]
    figures: dict[str, float] = {}
    if not rows:
        return figures
    for metric in METRICS.values():
        if metric.field is None or any(metric.field in r for r in rows):
            figures.update(_declared(metric, metric.aggregate(TierRows(tier, rows, by_tier, figures))))
    return figures


def _declared(metric: Metric, figures: dict[str, float]) -> dict[str, float]:
    """A figure no metric declared would be logged under a key the contract and the reports do not know: fail
    loudly instead of letting it vanish from them."""
    known = recall_stats()
    stray = [name for name in figures if name not in known]
    if stray:
        raise ValueError(f"metric {metric.name!r} computed unknown recall stat {stray[0]!r}; declare it in its "
                         f"Metric's stats (registered: {known})")
    return figures


def paired_figures(baseline: Sequence[Row], rows: Sequence[Row]) -> dict[str, float]:
    """Exact paired p-values of `rows` against `baseline` on the questions both scored, clustered by fact."""
    base = {r["qid"]: r for r in baseline}
    pairs = [(base[r["qid"]], r) for r in rows if r["qid"] in base]
    out: dict[str, float] = {}
    for metric in METRICS.values():
        f = metric.field
        if metric.paired and f and pairs and f in pairs[0][0] and f in pairs[0][1]:
            out[metric.paired] = paired_p_value([b[f] for b, _ in pairs], [r[f] for _, r in pairs],
                                                [r["cluster"] for _, r in pairs])
    return out


def row_fields(answer: Answer) -> dict[str, Any]:
    """The prediction-row fields every registered metric computes from one answer."""
    out: dict[str, Any] = {}
    for metric in METRICS.values():
        if metric.per_question is not None:
            out.update(metric.per_question(answer))
    return out


# ---- aggregation helpers ---------------------------------------------------------------------------------------


def proportion(field_name: str) -> Callable[[Sequence[Row]], float]:
    """The share of rows whose `field_name` is true."""
    return lambda rows: sum(bool(r[field_name]) for r in rows) / len(rows)


def mean(field_name: str) -> Callable[[Sequence[Row]], float]:
    """The mean of `field_name` over the rows (null, how the run files spell NaN, reads as NaN)."""
    def average(rows: Sequence[Row]) -> float:
        values = [NAN if r[field_name] is None else float(r[field_name]) for r in rows]
        return sum(values) / len(values) if values else NAN
    return average


def figure(name: str, statistic: Callable[[Sequence[Row]], float]) -> Callable[[TierRows], dict[str, float]]:
    """An aggregate writing one figure, `name`, from the tier's rows."""
    return lambda t: {name: statistic(t.rows)}


def accuracy(name: str, field_name: str) -> Callable[[TierRows], dict[str, float]]:
    """`name` with its clustered 95% Wilson interval, `<name>_low` and `<name>_high`."""
    def aggregate(t: TierRows) -> dict[str, float]:
        acc = accuracy_interval([r[field_name] for r in t.rows], [r["cluster"] for r in t.rows])
        return {name: acc.value, f"{name}_low": acc.low, f"{name}_high": acc.high}
    return aggregate


# ---- the built-in metrics --------------------------------------------------------------------------------------


def _on_mc(field_name: str, value: Callable[[Answer, MCResult], Any]) -> Callable[[Answer], dict[str, Any]]:
    """A per-question field read from the answer's MC scores (none when MC was not scored)."""
    return lambda a: {} if a.mc is None else {field_name: value(a, a.mc)}


def _on_text(field_name: str, value: Callable[[Answer, str], Any]) -> Callable[[Answer], dict[str, Any]]:
    """A per-question field read from what Moshi said (none when it did not generate)."""
    return lambda a: {} if a.text is None else {field_name: value(a, a.text)}


# generate.py imports moshi, so its answer matchers are imported when a first answer is scored


def _exact(a: Answer, text: str) -> bool:
    from moshi_knowledge.evaluation.generate import exact_match

    return a.finite and exact_match(text, a.answers)


def _contains(a: Answer, text: str) -> bool:
    from moshi_knowledge.evaluation.generate import contains_answer

    return a.finite and contains_answer(text, a.answers)


def _f1(a: Answer, text: str) -> float:
    from moshi_knowledge.evaluation.generate import token_f1

    return token_f1(text, a.answers) if a.finite else 0.0


def _judge_acc(t: TierRows) -> dict[str, float]:
    """The share judged right among the answers the judge could judge (none: no figure)."""
    judged = [r["judge_correct"] for r in t.rows if r.get("judge_correct") is not None]
    return {"judge_acc": sum(judged) / len(judged)} if judged else {}


def _judge_fields(a: Answer) -> dict[str, Any]:
    if a.judge is None or a.text is None:
        return {}
    q = a.question
    return {"judge_correct": a.finite and a.judge(q.text, q.gold, q.aliases, a.text)}


def _control(name: str) -> Metric:
    """mc_acc_<name> and p_vs_<name>: the one-sided exact McNemar test (clustered by fact) that the real questions
    beat the control on the same questions, model and step (a control scored several times counts its share)."""
    control_field = correct_field(name)

    def aggregate(t: TierRows) -> dict[str, float]:
        scored = [r for r in t.rows if control_field in r]
        control = [float(r[control_field]) for r in scored]
        return {f"mc_acc_{name}": sum(control) / len(control),
                f"p_vs_{name}": paired_p_value(control, [r["mc_correct"] for r in scored],
                                               [r["cluster"] for r in scored], alternative="greater")}
    return Metric(f"mc_acc_{name}", aggregate, field=control_field, extra=(f"p_vs_{name}",), across_seeds=True)


def _vs_unseen_facts(t: TierRows) -> dict[str, float]:
    """One-sided test that the tier beats the never-trained facts at the same evaluation, clustered by fact
    (stats.unpaired_p_value)."""
    null = [r for r in t.step.get(NULL_TIER, []) if "mc_correct" in r]
    if t.tier == NULL_TIER or not null:
        return {}
    return {f"p_vs_{NULL_TIER}": unpaired_p_value([r["mc_correct"] for r in t.rows], [r["mc_correct"] for r in null],
                                                  [r["cluster"] for r in t.rows], [r["cluster"] for r in null],
                                                  _chances(t.rows), _chances(null))}


def _chances(rows: Sequence[Row]) -> list[float] | None:
    """1/k for each question of k candidates; None when rows do not say (written before the field existed)."""
    return [float(r["chance"]) for r in rows] if all("chance" in r for r in rows) else None


NULL_TESTS = (*(f"p_vs_{c}" for c in CONTROLS), f"p_vs_{NULL_TIER}")
HOLM = "p_vs_null_holm"  # p_vs_null adjusted (Holm) over the tiers of one evaluation: the family of headline tests


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (name -> p): it controls the chance of any false claim
    across the family, whatever the tests' dependence."""
    order = sorted(p_values, key=p_values.__getitem__)
    out: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[name]))
        out[name] = running
    return out


def _vs_null(t: TierRows) -> dict[str, float]:
    """The headline test: the largest p-value against any null the tier has, so a tier is above the nulls only
    when it beats every one."""
    tests = [t.figures[k] for k in NULL_TESTS if k in t.figures]
    return {"p_vs_null": max(tests)} if tests else {}


for _metric in (
    Metric("n", lambda t: {"n": len(t.rows)}),
    Metric("n_nonfinite", lambda t: {"n_nonfinite": sum(not r["finite"] for r in t.rows)}, field="finite"),
    Metric(HEADLINE, accuracy(HEADLINE, "mc_correct"), field="mc_correct",
           per_question=_on_mc("mc_correct", lambda a, mc: a.finite and mc.correct),
           extra=("mc_acc_low", "mc_acc_high"), paired="p_value", delta="delta", higher_is_better=True,
           across_seeds=True),
    Metric("mc_rank", figure("mc_rank", mean("mc_rank")), field="mc_rank",
           per_question=_on_mc("mc_rank", lambda a, mc: mc.gold_rank), higher_is_better=False),
    Metric("mc_margin", figure("mc_margin", mean("mc_margin")), field="mc_margin",
           per_question=_on_mc("mc_margin", lambda a, mc: mc.margin), higher_is_better=True),
    Metric("mc_acc_sum", figure("mc_acc_sum", proportion("mc_correct_sum")), field="mc_correct_sum",
           per_question=_on_mc("mc_correct_sum", lambda a, mc: a.finite and mc.correct_by_sum),
           higher_is_better=True),
    Metric("n_flagged", lambda t: {"n_flagged": sum(bool(r["untrained_candidates"]) for r in t.rows)},
           field="untrained_candidates"),
    Metric("n_balanced", lambda t: {"n_balanced": sum(bool(r["balanced"]) for r in t.rows)}, field="balanced"),
    Metric("n_spiked", lambda t: {"n_spiked": sum(bool(r.get("spiked")) for r in t.rows)}, field="spiked"),
    Metric("chance", figure("chance", mean("chance")), field="chance"),
    Metric("gen_acc", accuracy("gen_acc", "gen_correct"), field="gen_correct",
           per_question=_on_text("gen_correct", _exact), extra=("gen_acc_low", "gen_acc_high"),
           paired="gen_p_value", delta="gen_delta", higher_is_better=True),
    Metric("f1", figure("f1", mean("f1")), field="f1", per_question=_on_text("f1", _f1), higher_is_better=True),
    Metric("gen_acc_lenient", figure("gen_acc_lenient", proportion("gen_contains")), field="gen_contains",
           per_question=_on_text("gen_contains", _contains), higher_is_better=True),
    *(_control(c) for c in CONTROLS),
    Metric("judge_acc", _judge_acc, field="judge_correct", per_question=_judge_fields, higher_is_better=True),
    Metric(f"p_vs_{NULL_TIER}", _vs_unseen_facts, field="mc_correct"),
    Metric("p_vs_null", _vs_null, extra=(HOLM,)),  # HOLM across the tiers: run_summary.with_holm
):
    register(_metric)


def _mde(t: TierRows) -> dict[str, float]:
    """The tier's minimum detectable effect over its chance level (power.py: exact binomial power at the tier's
    effective number of units); none when the rows do not say their chance level."""
    if "chance" not in t.figures:
        return {}
    return {"mde": tier_mde([r["mc_correct"] for r in t.rows], [r["cluster"] for r in t.rows], t.figures["chance"])}


register(Metric("mde", _mde, field="mc_correct"))  # after `chance`, whose figure it reads
