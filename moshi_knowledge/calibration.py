"""The calibration section of the sweep report: how much of a known effect the heldout_facts tier sees.

A calibration sweep (`sweep=calibration`) trains the Q/A of a known share of the held-out facts (`qa.spike_in`).
A perfectly sensitive tier would read `chance + share * (1 - chance)`: every spiked question right, the others at
chance. Fitting the measured recall, and its excess over the never-trained null (unseen_facts), against the share
gives the instrument's sensitivity (the slope; 1 - chance for the perfect tier) and what it reads with nothing
known (the intercept). The known share comes from the run itself (`recall/heldout_facts/n_spiked` / `n`), not from
the setting: spike-in takes whole candidate sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy.stats import linregress
from scipy.stats import t as student

from moshi_knowledge.evaluation.metrics import NULL_TIER
from moshi_knowledge.plots import pyplot, save
from moshi_knowledge.tracking.contract import COMPLETED, recall_key
from moshi_knowledge.tracking.runs import RunRecord

CALIBRATION_PLOT = "calibration.png"
TIER = "heldout_facts"


@dataclass(frozen=True)
class Point:
    """One completed run of a calibration sweep."""

    share: float  # the tier's known share: spiked questions / questions
    recall: float
    null: float  # unseen_facts' recall in the same run
    chance: float


@dataclass(frozen=True)
class Fit:
    slope: float
    intercept: float
    slope_low: float  # 95% interval of the slope (t distribution, n - 2 degrees of freedom)
    slope_high: float


def points(runs: list[RunRecord]) -> list[Point]:
    """The completed runs that measured the tier and its null, when at least two known shares differ (else the
    sweep is not a calibration)."""
    out = []
    for run in runs:
        values = [run.final(recall_key(TIER, k)) for k in ("mc_acc", "n_spiked", "n", "chance")]
        null = run.final(recall_key(NULL_TIER, "mc_acc"))
        if run.status != COMPLETED or null is None or any(v is None or math.isnan(v) for v in [*values, null]):
            continue
        recall, spiked, n, chance = values
        if n:
            out.append(Point(spiked / n, recall, null, chance))
    return out if len({p.share for p in out}) > 1 else []


def fit(xs: list[float], ys: list[float]) -> Fit:
    """Least squares with the slope's 95% interval (scipy's linregress; no interval from two points)."""
    result = linregress(xs, ys)
    half = student.ppf(0.975, len(xs) - 2) * result.stderr if len(xs) > 2 else math.nan
    return Fit(result.slope, result.intercept, result.slope - half, result.slope + half)


def section(runs: list[RunRecord], out: Path) -> str | None:
    """The report's Calibration section (and calibration.png in `out`), or None for a sweep that is not one."""
    found = points(runs)
    if not found:
        return None
    shares = [p.share for p in found]
    on_recall = fit(shares, [p.recall for p in found])
    on_excess = fit(shares, [p.recall - p.null for p in found])
    chance = sum(p.chance for p in found) / len(found)
    _plot(found, on_recall, on_excess, chance, out / CALIBRATION_PLOT)
    rows = "\n".join(f"| {p.share:.2f} | {p.recall:.3f} | {p.null:.3f} | {p.recall - p.null:+.3f} |"
                     for p in sorted(found, key=lambda p: p.share))
    return (f"## Calibration ({TIER})\n\n"
            f"Each run trained the Q/A of a known share of the {TIER} facts (`qa.spike_in`). A perfectly sensitive "
            f"tier reads chance + share x (1 - chance): slope {1 - chance:.2f} here.\n\n"
            "| known share | recall | null (unseen_facts) | excess |\n|---|---|---|---|\n"
            f"{rows}\n\n"
            f"- recall = {on_recall.intercept:.3f} + {on_recall.slope:.3f} x share "
            f"(slope 95% CI {_interval(on_recall)}); the tier sees {on_recall.slope / (1 - chance):.0%} of a "
            "known effect\n"
            f"- excess over the null = {on_excess.intercept:+.3f} + {on_excess.slope:.3f} x share "
            f"(slope 95% CI {_interval(on_excess)})\n\n"
            f"![calibration]({CALIBRATION_PLOT})\n")


def _interval(f: Fit) -> str:
    return "n/a (two shares)" if math.isnan(f.slope_low) else f"[{f.slope_low:.3f}, {f.slope_high:.3f}]"


def _plot(found: list[Point], on_recall: Fit, on_excess: Fit, chance: float, path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    xs = [0.0, 1.0]
    left.plot(xs, [chance, 1.0], ls=":", color="grey", label="perfectly sensitive tier")
    left.axhline(chance, ls="--", lw=0.8, color="grey", label=f"chance ({chance:.2f})")
    left.scatter([p.share for p in found], [p.null for p in found], marker="x", color="tab:orange",
                 label="null (unseen_facts)")
    _points_and_line(left, found, [p.recall for p in found], on_recall, f"{TIER}")
    left.set(xlabel="known share (spiked Q/A)", ylabel="multiple-choice recall", ylim=(0, 1.05),
             title=f"{TIER}: measured recall")
    right.axhline(0.0, ls="--", lw=0.8, color="grey")
    right.plot(xs, [0.0, 1 - chance], ls=":", color="grey", label="perfectly sensitive tier")
    _points_and_line(right, found, [p.recall - p.null for p in found], on_excess, "excess over the null")
    right.set(xlabel="known share (spiked Q/A)", ylabel="recall minus null", title="excess over unseen_facts")
    for ax in (left, right):
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def _points_and_line(ax: Any, found: list[Point], ys: list[float], f: Fit, name: str) -> None:
    ax.scatter([p.share for p in found], ys, color="tab:blue", zorder=3, label=name)
    ax.plot([0.0, 1.0], [f.intercept, f.intercept + f.slope], color="tab:blue",
            label=f"fit: {f.intercept:+.2f} + {f.slope:.2f} x share")
