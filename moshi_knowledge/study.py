"""The "Study" section of the sweep report: does each knowledge-injection regime teach facts that Moshi recalls
when asked a question it never trained on, and from how many exposures on?

A study sweep runs regime (the `layout` config group: dialogue = Q/A only, narration = narration only, mixed =
both) × `train.exposures_per_fact` × `seed`. `moshi-knowledge report SWEEP_DIR` adds this section when its runs
differ in layout. Only completed runs count; a run's regime is its `layout` choice (.hydra/hydra.yaml, else a
`layout=` override) and its dose the measured `data/exposures_per_fact` of its summary, else the override
`train.exposures_per_fact`. Runs are grouped into doses by that override (measured values of one nominal dose
differ a little between seeds and regimes), and a group's x is the mean measured value.

Per regime and tier (the latent tiers heldout_facts and eval; train, which is the positive control under the
layouts that train its Q/A and latent under narration), at the regime's highest dose, where it has the best chance
of showing an effect:

    excess      final recall/<tier>/mc_acc minus recall/unseen_facts/mc_acc of the same run (the never-trained
                null), or minus recall/<tier>/chance where the run has no null tier; its mean over seeds with the
                95% Student t interval over seeds
    p           one-sided one-sample t-test across seeds that the mean excess is above 0 (no spread: 0 or 1 by
                the mean's sign; fewer than two seeds: no test), Holm-adjusted across every regime × tier test
                of the table (metrics.holm)
    MDE         the mean over the runs of recall/<tier>/mde (one run's test against chance, evaluation/power.py)
    verdict     evaluation/power.verdict on the Holm p, the interval's upper end and that MDE

then the excess at every dose, the retain tier's recall and change from the base model (forgetting) and the drift of
Moshi's voice from the base model's at every dose,
one plain verdict line per regime, and `study_dose_response.png`: a panel per regime, recall of each tier and of
the null over the exposures per fact (log scale), with the 95% t-interval over seeds as error bars.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from moshi_knowledge.evaluation.metrics import HEADLINE, NULL_TIER, holm
from moshi_knowledge.evaluation.power import ABOVE_NULL, verdict
from moshi_knowledge.evaluation.run_summary import F0_VS_BASELINE
from moshi_knowledge.evaluation.stats import mean_interval
from moshi_knowledge.markdown import MISSING, fmt, plural, table_row
from moshi_knowledge.plots import pyplot, save
from moshi_knowledge.tracking.contract import COMPLETED, EXPOSURES_PER_FACT, number, recall_key
from moshi_knowledge.tracking.runs import RunRecord

REGIME_GROUP = "layout"  # the config group whose option is a run's regime
EXPOSURES_OVERRIDE = "train.exposures_per_fact"
REGIMES = {"dialogue": "Q/A only", "narration": "narration only", "mixed": "narration and Q/A"}  # report order
QA_TRAINED = ("dialogue", "mixed", "mono_duplicate")  # layouts that train the train tier's own Q/A
CONTROL_TIER = "train"
LATENT_TIERS = ("heldout_facts", "eval")
RETAIN_TIER = "retain"
STUDY_PLOT = "study_dose_response.png"
NAN = math.nan


@dataclass(frozen=True)
class SeedMean:
    """The mean of one figure over seeds with its 95% Student t interval (NaN ends below two seeds)."""

    n: int
    mean: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> SeedMean | None:
        if not values:
            return None
        mean, half = mean_interval(values)
        return cls(len(values), mean, mean - half, mean + half)

    def cell(self, spec: str = "+.3f") -> str:
        """`+0.250 [+0.100, +0.400]`; the mean alone below two seeds."""
        interval = "" if math.isnan(self.low) else f" [{self.low:{spec}}, {self.high:{spec}}]"
        return f"{self.mean:{spec}}{interval}"


@dataclass(frozen=True)
class Dose:
    """The completed runs of one regime at one nominal exposures-per-fact value (their seeds)."""

    label: str
    x: float | None  # mean measured exposures per fact; None when no run says
    runs: list[RunRecord]


@dataclass(frozen=True)
class Test:
    """One regime × tier line of the verdict table, at the regime's highest dose."""

    regime: str
    tier: str
    dose: Dose
    excess: SeedMean
    null_name: str
    p: float
    mde: float
    p_holm: float = NAN

    @property
    def verdict(self) -> str:
        return verdict(self.p_holm, self.excess.high, self.mde)


def regime(run: RunRecord) -> str | None:
    """A run's injection regime: its `layout` choice, else its `layout=` override; None when neither says."""
    return run.choices.get(REGIME_GROUP) or run.param_values().get(REGIME_GROUP)


def exposures(run: RunRecord) -> float | None:
    """Exposures per fact: the measured summary figure, else the override's value, else None."""
    measured = _finite(run.final(EXPOSURES_PER_FACT))
    return measured if measured is not None else _finite(_float(run.param_values().get(EXPOSURES_OVERRIDE)))


def role(regime_name: str, tier: str) -> str:
    """"positive control" for the train tier where the regime trains its Q/A, else "latent"."""
    return "positive control" if tier == CONTROL_TIER and regime_name in QA_TRAINED else "latent"


def excess(run: RunRecord, tier: str) -> float | None:
    """The tier's final recall minus the null of the same run (the unseen_facts tier, else the tier's chance)."""
    acc = _finite(run.final(recall_key(tier)))
    null = _finite(run.final(recall_key(NULL_TIER)))
    null = null if null is not None else _finite(run.final(recall_key(tier, "chance")))
    return None if acc is None or null is None else acc - null


def excess_p(values: Sequence[float]) -> float:
    """One-sided one-sample t-test across seeds that the mean excess is above 0: NaN below two seeds; without
    spread t is undefined, so 0 for a positive mean and 1 otherwise."""
    from scipy.stats import ttest_1samp

    if len(values) < 2:
        return NAN
    if statistics.pstdev(values) == 0:
        return 0.0 if statistics.fmean(values) > 0 else 1.0
    return float(ttest_1samp(values, 0.0, alternative="greater").pvalue)


def study_section(runs: list[RunRecord], out: Path) -> str | None:
    """The Study section (module docstring) and its figure in `out`, or None when the runs do not vary by layout."""
    if len({regime(r) for r in runs} - {None}) < 2:
        return None
    doses = _doses([r for r in runs if r.status == COMPLETED and regime(r)])
    tiers = [t for t in (CONTROL_TIER, *LATENT_TIERS) if any(_has(r, t) for ds in doses.values() for d in ds
                                                              for r in d.runs)]
    tests = _holm([t for name, ds in doses.items() for tier in tiers if (t := _test(name, tier, _highest(ds)))])
    parts = ["## Study: knowledge injection by regime", _intro(runs, doses)]
    if not tests:
        return "\n\n".join([*parts, "No completed run has recall on a latent tier: nothing to test."])
    head = ["regime", "tier", "role", "exposures/fact", "seeds", "null", "excess over null", "95% CI (t, seeds)",
            "p (t, one-sided)", "Holm p", "MDE", "verdict"]
    rows = [table_row([t.regime, t.tier, role(t.regime, t.tier), _x(t.dose), str(t.excess.n), t.null_name,
                  f"{t.excess.mean:+.3f}", _interval(t.excess), fmt(t.p), fmt(t.p_holm), fmt(t.mde, ".2f"), t.verdict])
            for t in tests]
    parts += ["\n".join([table_row(head), table_row(["---"] * len(head)), *rows]), _verdict_lines(list(doses), tests),
              _dose_table(doses, tiers)]
    retain = _retain_table(doses)
    if retain:
        parts.append(retain)
    parts.append(_dose_figure(doses, tiers, out))
    return "\n\n".join(parts)


def _doses(runs: list[RunRecord]) -> dict[str, list[Dose]]:
    """regime -> its doses in increasing order (regimes in REGIMES' order, then by name)."""
    groups: dict[str, dict[str, list[RunRecord]]] = {}
    for run in runs:
        groups.setdefault(str(regime(run)), {}).setdefault(_dose_label(run), []).append(run)
    out: dict[str, list[Dose]] = {}
    for name in sorted(groups, key=lambda n: (list(REGIMES).index(n) if n in REGIMES else len(REGIMES), n)):
        doses = [Dose(label, _mean([x for r in members if (x := exposures(r)) is not None]), members)
                 for label, members in groups[name].items()]
        out[name] = sorted(doses, key=lambda d: (d.x is None, d.x or 0.0))
    return out


def _highest(doses: list[Dose]) -> Dose:
    """The regime's highest dose (a dose no run measured or set counts only when there is no other)."""
    known = [d for d in doses if d.x is not None]
    return known[-1] if known else doses[-1]


def _dose_label(run: RunRecord) -> str:
    """The nominal dose that groups a run with its seeds: the override, else the measured value, else "–"."""
    nominal = run.param_values().get(EXPOSURES_OVERRIDE)
    if nominal is not None:
        return nominal
    measured = exposures(run)
    return fmt(measured, ".3g")


def _test(regime_name: str, tier: str, dose: Dose) -> Test | None:
    """The regime × tier test at `dose` (the regime's highest), or None without a run that has the tier."""
    values = [v for r in dose.runs if (v := excess(r, tier)) is not None]
    summary = SeedMean.of(values)
    if summary is None:
        return None
    has_null = all(_finite(r.final(recall_key(NULL_TIER))) is not None for r in dose.runs if _has(r, tier))
    mde = _mean([m for r in dose.runs if (m := _finite(r.final(recall_key(tier, "mde")))) is not None])
    return Test(regime_name, tier, dose, summary, NULL_TIER if has_null else "chance", excess_p(values),
                NAN if mde is None else mde)


def _holm(tests: list[Test]) -> list[Test]:
    """The tests with their p-values adjusted (Holm) across the family of those that have one."""
    adjusted = holm({f"{t.regime}/{t.tier}": t.p for t in tests if math.isfinite(t.p)})
    return [Test(t.regime, t.tier, t.dose, t.excess, t.null_name, t.p, t.mde,
                 adjusted.get(f"{t.regime}/{t.tier}", NAN)) for t in tests]


def _intro(runs: list[RunRecord], doses: dict[str, list[Dose]]) -> str:
    left_out = sum(r.status != COMPLETED or regime(r) is None for r in runs)
    regimes = ", ".join(f"`{n}` ({REGIMES.get(n, n)}: {plural(sum(len(d.runs) for d in ds), 'run')})"
                        for n, ds in doses.items())
    return (f"Regimes: {regimes}" + (f"; {plural(left_out, 'run')} left out (not completed, or no layout)."
                                     if left_out else ".")
            + " Excess = final MC recall minus the never-trained null (`unseen_facts`) of the same run (minus the "
            "tier's chance where a run has no null tier), at each regime's highest dose; mean over seeds with the "
            "95% Student t interval over seeds, a one-sided one-sample t-test across seeds, Holm-adjusted over "
            "every test of the table. MDE: the mean of the runs' minimum detectable effect (one run's exact test "
            "against chance at 80% power); verdict: above null if Holm p < 0.05, else inconclusive if the "
            "interval's upper end reaches the MDE, else no effect larger than that end.")


def _verdict_lines(regimes: Sequence[str], tests: list[Test]) -> str:
    """One plain sentence per regime: which latent tiers are above the null, the positive control, forgetting."""
    lines = []
    for name in regimes:
        mine = [t for t in tests if t.regime == name]
        if not mine:
            continue
        latent = [t for t in mine if role(name, t.tier) == "latent"]
        above = [t.tier for t in latent if t.verdict == ABOVE_NULL]
        lead = f"latent recall above the null on {', '.join(above)}" if above else "no latent tier above the null"
        details = "; ".join(f"{t.tier} {t.verdict}" for t in latent)
        line = f"- **{name}** ({REGIMES.get(name, name)}; {_x(mine[0].dose)} exposures per fact, " \
               f"{plural(mine[0].excess.n, 'seed')}): {lead}" + (f" ({details})." if details else ".")
        line += "".join(f" Positive control {t.tier}: {t.verdict}." for t in mine if t not in latent)
        forgetting = SeedMean.of(_values(mine[0].dose.runs, RETAIN_TIER, "delta"))
        if forgetting is not None:
            line += f" Retain vs base model: {forgetting.cell()}."
        lines.append(line)
    return "\n".join(lines)


def _dose_table(doses: dict[str, list[Dose]], tiers: list[str]) -> str:
    """Excess over the null (mean [95% t interval] over seeds) of each regime × tier at every dose."""
    labels = sorted({d.label for ds in doses.values() for d in ds}, key=_label_order)
    head = ["regime", "tier", *(f"{label} exposures/fact" for label in labels)]
    rows = []
    for name, ds in doses.items():
        by_label = {d.label: d for d in ds}
        for tier in tiers:
            cells = [_cell(SeedMean.of([v for r in by_label[lb].runs if (v := excess(r, tier)) is not None]))
                     if lb in by_label else MISSING for lb in labels]
            if any(c != MISSING for c in cells):
                rows.append(table_row([name, tier, *cells]))
    return "\n".join(["Excess over the null at every dose (mean [95% t interval] over seeds):", "", table_row(head),
                      table_row(["---"] * len(head)), *rows])


def _retain_table(doses: dict[str, list[Dose]]) -> str | None:
    """What training cost: the retain tier (general knowledge the model had before), its final recall and change
    from the base model, and the drift of Moshi's voice (median F0 of its generated answers against the base
    model's, in semitones), mean [95% t interval] over seeds, per regime and dose; None when no run has either."""
    rows = []
    for name, ds in doses.items():
        for d in ds:
            final = SeedMean.of(_values(d.runs, RETAIN_TIER))
            change = SeedMean.of(_values(d.runs, RETAIN_TIER, "delta"))
            drift = SeedMean.of([v for r in d.runs if (v := _finite(r.final(F0_VS_BASELINE))) is not None])
            if final is not None or drift is not None:
                rows.append(table_row([name, _x(d), str(max(m.n for m in (final, drift) if m is not None)),
                                       final.cell(".3f") if final else MISSING, _cell(change), _cell(drift)]))
    if not rows:
        return None
    head = ["regime", "exposures/fact", "seeds", "retain recall", "retain − base model", "voice drift (semitones)"]
    return "\n".join(["Forgetting: the retain tier and Moshi's voice (mean [95% t interval] over seeds):", "",
                      table_row(head), table_row(["---"] * len(head)), *rows])


_STYLES = {CONTROL_TIER: {"color": "C2"}, "heldout_facts": {"color": "C0"}, "eval": {"color": "C1"},
           NULL_TIER: {"color": "grey", "linestyle": "--"}, RETAIN_TIER: {"color": "black", "linestyle": ":",
                                                                           "marker": "s"}}


def _dose_figure(doses: dict[str, list[Dose]], tiers: list[str], out: Path) -> str:
    """`study_dose_response.png`: one panel per regime, each tier's recall (and the null's, and retain's) over the
    exposures per fact on a log axis, with the 95% t interval over seeds as error bars."""
    plotted = {name: known for name, ds in doses.items() if (known := [d for d in ds if d.x is not None and d.x > 0])}
    if not plotted:
        return "No dose-response figure: no completed run says its exposures per fact."
    series = [t for t in (*tiers, NULL_TIER, RETAIN_TIER) if any(_values(d.runs, t) for ds in plotted.values()
                                                                  for d in ds)]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(plotted), figsize=(1.8 + 3.6 * len(plotted), 4.2), sharey=True, squeeze=False)
    handles: dict[str, object] = {}
    for ax, (name, ds) in zip(axes[0], plotted.items()):
        for i, tier in enumerate(series):
            shift = 1.04 ** (i - (len(series) - 1) / 2)  # side by side, so the error bars stay apart
            points = [(d.x * shift, m) for d in ds if (m := SeedMean.of(_values(d.runs, tier))) is not None]
            if not points:
                continue
            errors = [[0.0 if math.isnan(m.low) else m.mean - m.low for _, m in points],
                      [0.0 if math.isnan(m.high) else m.high - m.mean for _, m in points]]
            style = {"marker": "o", **_STYLES.get(tier, {"color": f"C{3 + i}"})}
            line = ax.errorbar([x for x, _ in points], [m.mean for _, m in points], yerr=errors, capsize=3, **style)
            handles.setdefault(_legend(tier), line)
        chance = _mean(_values([r for d in ds for r in d.runs], NULL_TIER, "chance"))
        if chance is not None:
            handles.setdefault("chance", ax.axhline(chance, color="grey", linewidth=0.8, alpha=0.6))
        xs = [d.x for d in ds]
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:.3g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlim(min(xs) / 1.5, max(xs) * 1.5)
        ax.set_title(f"{name} ({REGIMES.get(name, name)})")
        ax.set_xlabel("exposures per fact (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylim(0.0, 1.0)
    axes[0][0].set_ylabel("final MC recall\n(mean over seeds, 95% t interval)")
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()
    save(fig, out / STUDY_PLOT, bbox_inches="tight")
    plt.close(fig)
    return f"![dose response per regime]({STUDY_PLOT})"


def _legend(tier: str) -> str:
    if tier == NULL_TIER:
        return f"{tier} (null)"
    if tier == RETAIN_TIER:
        return f"{tier} (forgetting)"
    return tier


def _values(runs: Sequence[RunRecord], tier: str, stat: str = HEADLINE) -> list[float]:
    """The finite final `recall/<tier>/<stat>` of each run that has it."""
    return [v for r in runs if (v := _finite(r.final(recall_key(tier, stat)))) is not None]


def _has(run: RunRecord, tier: str) -> bool:
    return _finite(run.final(recall_key(tier))) is not None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(number(value)) else None


def _float(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _x(dose: Dose) -> str:
    return fmt(dose.x, ".3g")


def _label_order(label: str) -> tuple[int, float, str]:
    value = _float(label)
    return (1, 0.0, label) if value is None else (0, value, label)


def _cell(mean: SeedMean | None) -> str:
    return MISSING if mean is None else mean.cell()


def _interval(mean: SeedMean) -> str:
    return MISSING if math.isnan(mean.low) else f"[{mean.low:+.3f}, {mean.high:+.3f}]"
