"""The sweep report: `python -m moshi_knowledge.report SWEEP_DIR` (or `moshi-knowledge report SWEEP_DIR`).

Reads every run under SWEEP_DIR (each directory holding a summary.json; its overrides from .hydra/overrides.yaml),
writes `report.md`, `loss_curves.png` and one `recall_heatmap_<tier>.png` per tier into SWEEP_DIR (each cell with
its n, the colour scale centred on chance), with a Study section also `study_dose_response.png`, and prints the
table. It is for people who can't open the W&B
dashboard, and for the paper.

Keys read (written by train/eval through the Tracker; `moshi_knowledge.tracking.contract` is the full list):

    summary.json   status, message, train/loss, eval/loss, nan_guard/events,
                   recall/<tier>/mc_acc, recall/<tier>/mc_acc_low, recall/<tier>/mc_acc_high,
                   recall/<tier>/p_vs_null (the headline test: above the silence and shuffled controls and
                   the unseen_facts tier), recall/<tier>/p_vs_null_holm, recall/<tier>/mde, recall/<tier>/chance,
                   recall/<tier>/delta, recall/<tier>/p_value, data/exposures_per_fact (the Study section)
    .hydra/        overrides.yaml (the run's overrides), hydra.yaml (its config-group choices: `layout`)
    metrics.jsonl  step, train/loss, eval/loss (curves; also the fallback for a final value missing from the summary)

It opens with the winner of each tier against its runner-up, tested on the same questions (predictions.jsonl).
A tier is any `<tier>` with a `recall/<tier>/mc_acc` in some run's summary (train, eval, paraphrase, retain); its
columns include its MDE and the verdict the run's own final table gives it (evaluation.report.tier_verdict). When
the runs differ in `layout` (the knowledge-injection regime), a "Study" section comes first (moshi_knowledge/study.py:
per regime and tier, recall above the never-trained null over seeds, its verdict, the dose response). When
the runs differ only by `seed` or `train.seed` (`sweep=seeds`), an "Across seeds" table gives each tier's final
recall (and its controls) as mean, standard deviation and 95% t-interval of the mean over the completed runs. When
two or more configs were each run with the same seeds (`-m lora.rank=8,16 seed=0,1,2`), a "Configs compared across
seeds" table gives, per tier and pair of configs, the mean difference of final recall over the shared seeds with a
paired t-test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from moshi_knowledge.calibration import section as calibration_section
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.metrics import HEADLINE, METRICS
from moshi_knowledge.evaluation.report import tier_verdict
from moshi_knowledge.evaluation.stats import mean_interval, paired_p_value
from moshi_knowledge.io_utils import atomic_write_text
from moshi_knowledge.markdown import table_row
from moshi_knowledge.plots import pyplot, save
from moshi_knowledge.study import study_section
from moshi_knowledge.tracking.contract import (
    COMPLETED,
    DIVERGED,
    EVAL_LOSS,
    MESSAGE,
    NAN_EVENTS,
    PREDICTIONS_FILE,
    TRAIN_LOSS,
    recall_key,
    recall_tiers,
)
from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.tracking.runs import RunRecord, find_runs

REPORT_FILE = "report.md"
LOSS_PLOT = "loss_curves.png"
_OPTUNA_RESULTS = "optimization_results.yaml"  # written by Hydra's Optuna sweeper into the sweep dir
_MISSING = "–"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moshi-knowledge report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun's sweep directory (or any folder of run dirs)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.sweep_dir))
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"fix: {err.fix}", file=sys.stderr)
        return 2
    return 0


def write_report(sweep_dir: Path) -> str:
    """Writes report.md and the plots into `sweep_dir`; returns the table as printed."""
    runs = find_runs(sweep_dir) if sweep_dir.is_dir() else []
    if not runs:
        raise UserError(
            f"no runs under {sweep_dir}: no directory there holds a summary.json",
            fix="pass the directory a multirun wrote (runs/sweeps/NAME_DATE for conf/sweep presets, else "
            "runs/multirun/DATE/TIME), whose job folders each hold summary.json and metrics.jsonl",
        )
    labels = [_label(r, sweep_dir) for r in runs]
    varying, common = _split_overrides(runs)
    tiers = recall_tiers(k for r in runs for k in r.summary)
    table = _table(runs, labels, varying, tiers)
    head = [_status_line(runs)] + ([f"Common overrides: {', '.join(f'`{o}`' for o in common)}"] if common else [])
    winner = _winner_section(runs, [" ".join(v) or label for v, label in zip(varying, labels)], tiers)
    study = "\n\n".join(s for s in (study_section(runs, sweep_dir), calibration_section(runs, sweep_dir)) if s)
    sections = [f"# Sweep report: {sweep_dir.resolve().name}", "\n\n".join(head), *([study] if study else []),
                *([winner] if winner else []), table]
    seeds = _seed_section(runs, varying, tiers) or _paired_section(runs, varying, tiers)
    if seeds:
        sections.append(seeds)
    sections.append(_loss_section(runs, labels, varying, sweep_dir))
    sections.append(_heatmap_section(runs, tiers, sweep_dir))
    if (sweep_dir / _OPTUNA_RESULTS).exists():
        text = (sweep_dir / _OPTUNA_RESULTS).read_text(encoding="utf-8")
        sections.append(f"## Optuna result\n\n```yaml\n{text.strip()}\n```")
    atomic_write_text(sweep_dir / REPORT_FILE, "\n\n".join(sections) + "\n")
    return "\n\n".join([*head, *([study] if study else []), *([winner] if winner else []), table,
                        *([seeds] if seeds else [])])


# ---- which config won ----------------------------------------------------------------------------------------


def _winner_section(runs: list[RunRecord], labels: list[str], tiers: list[str]) -> str | None:
    """Per tier, the completed run with the best final recall against the runner-up, on the same questions
    (`labels`: each run's overrides that vary across the sweep).

    The test is paired (both runs answered the same questions): the exact sign test over fact clusters of the
    final predictions (McNemar's exact test with one question per cluster). A best figure that the runner-up
    matches within chance is said to be indistinguishable, in words, at the top of the report.
    """
    lines, rows = [], []
    finals: dict[Path, dict[str, dict[str, tuple[bool, str]]]] = {}  # each run's predictions file read once

    def final(run: RunRecord, tier: str) -> dict[str, tuple[bool, str]]:
        if run.path not in finals:
            finals[run.path] = _final_predictions(run)
        return finals[run.path].get(tier, {})

    sign = 1 if METRICS[HEADLINE].higher_is_better else -1
    for tier in tiers:
        ranked = sorted(((acc, label, run) for run, label in zip(runs, labels)
                         if (acc := _completed_recall(run, tier)) is not None and math.isfinite(acc)),
                        key=lambda item: -sign * item[0])
        if len(ranked) < 2:
            continue
        (best_acc, best, best_run), (next_acc, runner, next_run) = ranked[:2]
        a, b = final(best_run, tier), final(next_run, tier)
        shared = sorted(set(a) & set(b))
        if not shared:
            continue
        p = paired_p_value([b[q][0] for q in shared], [a[q][0] for q in shared], [a[q][1] for q in shared])
        wins = sum(a[q][0] and not b[q][0] for q in shared)
        losses = sum(b[q][0] and not a[q][0] for q in shared)
        clear = p < 0.05 and sign * best_acc > sign * next_acc
        rows.append(table_row([tier, f"`{best}` {best_acc:.3f}", f"`{runner}` {next_acc:.3f}", str(len(shared)),
                          f"{wins} / {losses}", _num(p), "yes" if clear else "no"]))
        lines.append(f"- **{tier}**: `{best}` is best ({best_acc:.3f})" + (
            f" and beats `{runner}` ({next_acc:.3f}; paired p = {p:.3g}, n = {len(shared)})." if clear else
            f", but `{runner}` ({next_acc:.3f}) is indistinguishable from it (paired p = {p:.3g}, "
            f"n = {len(shared)}): this sweep does not say which is better."))
    if not rows:
        return None
    header = ["tier", "best", "runner-up", "questions", "best right / runner-up right (where they differ)",
              "paired p", "best is better"]
    return "\n".join(["## Which config won", "", *lines, "", table_row(header), table_row(["---"] * len(header)),
                      *rows])


def _final_predictions(run: RunRecord) -> dict[str, dict[str, tuple[bool, str]]]:
    """tier -> qid -> (multiple choice right, fact cluster) at the run's last evaluation."""
    path = run.path / PREDICTIONS_FILE
    rows = read_metrics(path) if path.is_file() else []
    last = max((r["step"] for r in rows), default=None)
    out: dict[str, dict[str, tuple[bool, str]]] = {}
    for r in rows:
        if r["step"] == last:
            out.setdefault(r["tier"], {})[r["qid"]] = (bool(r.get("mc_correct")), str(r.get("cluster", r["qid"])))
    return out


# ---- table ---------------------------------------------------------------------------------------------------


def _table(runs: list[RunRecord], labels: list[str], varying: list[list[str]], tiers: list[str]) -> str:
    header = ["run", "overrides", "status", "train loss", "eval loss"]
    for tier in tiers:
        header += [f"{tier} recall [95% CI]", f"{tier} p vs null", f"{tier} MDE", f"{tier} verdict", f"{tier} Δ base",
                   f"{tier} p"]
    header.append("NaN events")
    lines = [table_row(header), table_row(["---"] * len(header))]
    for run, label, overrides in zip(runs, labels, varying):
        cells = [label, " ".join(overrides) or _MISSING, _status_cell(run)]
        cells += [_num(run.final(TRAIN_LOSS)), _num(run.final(EVAL_LOSS))]
        for tier in tiers:
            mde = run.final(recall_key(tier, "mde"))
            cells += [_recall_cell(run, tier), _num(run.final(recall_key(tier, "p_vs_null")), digits=3),
                      _MISSING if mde is None or not math.isfinite(mde) else f"{mde:.2f}",
                      _verdict_cell(run, tier),
                      _signed(run.final(recall_key(tier, "delta")))]
            cells.append(_num(run.final(recall_key(tier, "p_value")), digits=3))
        cells.append(_count(run.final(NAN_EVENTS)))
        lines.append(table_row(cells))
    return "\n".join(lines)




def _status_cell(run: RunRecord) -> str:
    message = str(run.summary.get(MESSAGE) or "")
    if not message or run.status == COMPLETED:
        return run.status
    return f"{run.status}: {message if len(message) <= 60 else message[:57] + '...'}"


def _verdict_cell(run: RunRecord, tier: str) -> str:
    """The tier's verdict (evaluation.report.tier_verdict, as the run's own final table gives it)."""
    return tier_verdict(lambda stat: run.final(recall_key(tier, stat))) or _MISSING


def _recall_cell(run: RunRecord, tier: str) -> str:
    acc = run.final(recall_key(tier))
    if acc is None:
        return _MISSING
    low, high = run.final(recall_key(tier, "mc_acc_low")), run.final(recall_key(tier, "mc_acc_high"))
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{acc:.3f}{interval}"


def _num(value: float | None, digits: int = 4) -> str:
    return _MISSING if value is None else f"{value:.{digits}g}"


def _count(value: float | None) -> str:
    return _MISSING if value is None else str(int(value)) if math.isfinite(value) else "nan"


def _signed(value: float | None) -> str:
    return _MISSING if value is None else f"{value:+.3f}"


def _status_line(runs: list[RunRecord]) -> str:
    counts = Counter(run.status for run in runs)
    return f"{len(runs)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _label(run: RunRecord, root: Path) -> str:
    rel = run.path.relative_to(root)
    return str(rel) if rel.parts else run.path.resolve().name


def _split_overrides(runs: list[RunRecord]) -> tuple[list[list[str]], list[str]]:
    """Each run's overrides that differ between runs, and the overrides every run shares (shown once)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if len(runs) > 1 else set()
    varying = [[o for o in r.overrides if o not in common] for r in runs]
    return varying, [o for o in runs[0].overrides if o in common]


_SEED_KEYS = ("seed", "train.seed")


def _seed_section(runs: list[RunRecord], varying: list[list[str]], tiers: list[str]) -> str | None:
    """For runs that differ only by seed: each tier's final recall over the completed runs, as mean, standard
    deviation and a 95% t-interval of the mean, so one lucky seed is not read as an effect."""
    # a run without a seed override is the config's default seed (a first run, then more seeds added beside it)
    only_seeds = any(varying) and all(_is_seed(x) for o in varying for x in o)
    if len(runs) < 2 or not only_seeds or not tiers:
        return None
    lines = ["## Across seeds", "", table_row(["tier", "runs", "mean", "sd", "95% CI of the mean"]),
             table_row(["---"] * 5)]
    for tier in tiers:
        for stat in (m.name for m in METRICS.values() if m.across_seeds):  # the real figure, then its controls
            values = [v for r in runs if r.status == COMPLETED and (v := r.final(recall_key(tier, stat))) is not None
                      and math.isfinite(v)]
            if not values:
                continue
            label = tier if stat == HEADLINE else f"{tier} ({stat.removeprefix(f'{HEADLINE}_')})"
            mean, half = mean_interval(values)
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            lines.append(table_row([label, str(len(values)), f"{mean:.3f}", f"{sd:.3f}",
                               f"[{mean - half:.3f}, {mean + half:.3f}]"]))
    return "\n".join(lines)


ALPHA = 0.05  # a paired difference with p below this names the better config


def _paired_section(runs: list[RunRecord], varying: list[list[str]], tiers: list[str]) -> str | None:
    """For configs each run with the same seeds: per tier and pair of configs, the mean difference of final recall
    over the seeds both completed, with a paired t-test across those seeds and a verdict.

    Pairing by seed removes what a seed does to both configs alike (data order, initialisation). A t-test rather
    than Wilcoxon's signed-rank test: with 5 seeds or fewer the signed-rank test cannot reach p < 0.05 at all.
    Each pair is tested on its own (no correction for comparing many pairs). A rerun of one config and seed
    replaces the earlier run.
    """
    by_config: dict[str, dict[str, RunRecord]] = {}
    for run, overrides in zip(runs, varying):
        seed = " ".join(o for o in overrides if _is_seed(o))
        config = " ".join(o for o in overrides if not _is_seed(o)) or "(common overrides only)"
        if seed:
            by_config.setdefault(config, {})[seed] = run
    rows = [row for tier in tiers for a, b in _pairs(list(by_config)) if (row := _paired_row(
        tier, a, b, by_config[a], by_config[b])) is not None]
    if not rows:
        return None
    head = ["tier", "config A", "config B", "seeds", "mean B − A", "95% CI", "p (paired t)", "verdict"]
    return "\n".join(["## Configs compared across seeds", "", table_row(head), table_row(["---"] * len(head)), *rows])


def _is_seed(override: str) -> bool:
    return override.lstrip("+~").split("=")[0] in _SEED_KEYS


def _pairs(configs: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(configs) for b in configs[i + 1:]]


def _paired_row(tier: str, name_a: str, name_b: str, a: dict[str, RunRecord], b: dict[str, RunRecord]) -> str | None:
    """One table row, or None when fewer than two seeds have a finite final recall in both configs."""
    from scipy.stats import ttest_rel

    pairs = [(va, vb) for seed in a if seed in b
             if (va := _completed_recall(a[seed], tier)) is not None and (vb := _completed_recall(b[seed], tier))
             is not None]
    if len(pairs) < 2:
        return None
    diffs = [vb - va for va, vb in pairs]
    mean, half = mean_interval(diffs)
    if statistics.pstdev(diffs) == 0:  # identical differences: t is undefined (or infinite)
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(ttest_rel([vb for _, vb in pairs], [va for va, _ in pairs]).pvalue)
    higher = METRICS[HEADLINE].higher_is_better
    verdict = (f"indistinguishable (p ≥ {ALPHA})" if p >= ALPHA
               else f"{'B' if (mean > 0) == higher else 'A'} better")
    return table_row([tier, name_a, name_b, str(len(pairs)), f"{mean:+.3f}",
                      f"[{mean - half:+.3f}, {mean + half:+.3f}]", f"{p:.3g}", verdict])


def _completed_recall(run: RunRecord, tier: str) -> float | None:
    value = run.final(recall_key(tier)) if run.status == COMPLETED else None
    return value if value is not None and math.isfinite(value) else None


# ---- plots ---------------------------------------------------------------------------------------------------


def _loss_section(runs: list[RunRecord], labels: list[str], varying: list[list[str]], out: Path) -> str:
    curves = [(r, r.series(TRAIN_LOSS), r.series(EVAL_LOSS)) for r in runs]
    if not any(train[0] or ev[0] for _, train, ev in curves):
        return "## Loss curves\n\nNo run logged train/loss or eval/loss."
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5.5))
    finite: list[float] = []
    for i, ((run, (ts, tv), (es, ev)), label) in enumerate(zip(curves, labels)):
        color = f"C{i % 10}"
        name = " ".join([label, *varying[i]]) + ("" if run.status == COMPLETED else f" [{run.status}]")
        ax.plot(ts, tv, color=color, label=name)  # one legend entry per run; the line style tells train/eval
        ax.plot(es, ev, color=color, linestyle="--", marker=".", label=None if ts else name)
        finite += [v for v in tv + ev if math.isfinite(v)]
        if run.status == DIVERGED and (last := _last_finite(ts, tv)):
            ax.plot(*last, color=color, marker="x", markersize=10, markeredgewidth=2)
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")  # a diverging run's blow-up would flatten everyone else's curve
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("train (solid) and eval (dashed) loss; x = last finite train loss of a diverged run")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(runs) // 25)
    fig.tight_layout()
    save(fig, out / LOSS_PLOT)
    plt.close(fig)
    return f"## Loss curves\n\n![loss curves]({LOSS_PLOT})"


def _last_finite(steps: list[int], values: list[float]) -> tuple[int, float] | None:
    pairs = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    return pairs[-1] if pairs else None


def _heatmap_section(runs: list[RunRecord], tiers: list[str], out: Path) -> str:
    title = "## Recall over the swept parameters"
    params = _swept_params(runs)
    if not tiers:
        return f"{title}\n\nNo plot: no run's summary has a recall/<tier>/mc_acc."
    if not params:
        return f"{title}\n\nNo plot: no parameter varies across these runs."
    chance = _chance(runs)  # read once, for every plot of the section
    if len(params) == 1:
        name = f"recall_{_file_safe(params[0])}.png"
        _recall_line(runs, tiers, params[0], chance, out / name)
        note = "" if chance is None else f" The dashed line is chance ({chance:.2f}, one of the candidates at random)."
        return (f"{title}\n\nFinal recall over `{params[0]}`, with each run's 95% interval; the legend gives each "
                f"tier's number of questions.{note}\n\n![recall over {params[0]}]({name})")
    x_key, y_key = params[0], params[1]
    parts = [title, "Each cell gives the final recall and n, the number of questions its runs were asked (×k: "
                    "the mean of k runs). " + ("The colour scale is centred on chance "
                    f"({chance:.2f}, one of the candidates at random; the dashed line on the scale): blue above, red "
                    "below." if chance is not None else "Chance is unknown (no run has predictions.jsonl): the "
                    "colour scale runs from 0 to 1.")]
    if len(params) > 2:
        others = ", ".join(params[2:])
        parts.append(f"Over `{x_key}` × `{y_key}`; each cell averages the runs that differ only in {others}.")
    for tier in tiers:
        name = f"recall_heatmap_{tier}.png"
        _heatmap(runs, tier, x_key, y_key, chance, out / name)
        parts.append(f"![{tier} recall]({name})")
    return "\n\n".join(parts)


def _recall_line(runs: list[RunRecord], tiers: list[str], key: str, chance: float | None, path: Path) -> None:
    """Final recall of each tier over the one swept parameter, with Wilson intervals, n and the chance line."""
    xs = _axis_values(runs, key)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(xs), 3.6))
    for tier in tiers:
        points = []
        for j, x in enumerate(xs):
            members = [r for r in runs if r.param_values().get(key, _MISSING) == x]
            scored = [(r, v) for r in members if (v := _completed_recall(r, tier)) is not None and math.isfinite(v)]
            if scored:  # several runs of one value (seeds): their mean, and the spread of their intervals
                mean = sum(v for _, v in scored) / len(scored)
                low = min(r.final(recall_key(tier, "mc_acc_low")) or mean for r, _ in scored)
                high = max(r.final(recall_key(tier, "mc_acc_high")) or mean for r, _ in scored)
                points.append((j, mean, mean - low, high - mean))
        if points:
            n = next((r.final(recall_key(tier, "n")) for r in runs if r.final(recall_key(tier, "n"))), None)
            label = tier if n is None else f"{tier} (n = {n:.0f})"
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[[max(p[2], 0) for p in points], [max(p[3], 0) for p in points]],
                        marker="o", capsize=3, label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.2f})")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_xlabel(key)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("final multiple-choice recall")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)


def _chance(runs: list[RunRecord]) -> float | None:
    """1 / the number of candidates of a scored question (the first found), or None without predictions."""
    for run in runs:
        path = run.path / PREDICTIONS_FILE
        if path.is_file():
            for row in read_metrics(path):
                if row.get("candidates"):
                    return 1.0 / len(row["candidates"])
    return None


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _swept_params(runs: list[RunRecord]) -> list[str]:
    """Override keys that take more than one value across runs, the most varied first."""
    keys = list(dict.fromkeys(k for r in runs for k in r.param_values()))
    counts = {k: len(_axis_values(runs, k)) for k in keys}
    return sorted((k for k in keys if counts[k] > 1), key=lambda k: -counts[k])


def _heatmap(runs: list[RunRecord], tier: str, x_key: str, y_key: str, chance: float | None, path: Path) -> None:
    """Mean final recall per cell, annotated with n; with chance known, a diverging scale centred on it. The
    title and every cell's text are also the PNG's metadata, so the figure says what it shows without being seen."""
    from matplotlib.colors import Normalize, TwoSlopeNorm

    xs = _axis_values(runs, x_key)
    ys = _axis_values(runs, y_key)
    cells: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        p = run.param_values()
        cells.setdefault((p.get(x_key, _MISSING), p.get(y_key, _MISSING)), []).append(run)
    centred = chance is not None and 0 < chance < 1
    norm = TwoSlopeNorm(vcenter=chance, vmin=0.0, vmax=1.0) if centred else Normalize(0.0, 1.0)
    plt = pyplot()
    grid = [[math.nan] * len(xs) for _ in ys]
    labels = []
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(xs), 1.6 + 0.9 * len(ys)))
    for (x, y), members in cells.items():
        scored = [(r, v) for r in members if (v := r.final(recall_key(tier))) is not None and math.isfinite(v)]
        i, j = ys.index(y), xs.index(x)
        if scored:
            grid[i][j] = sum(v for _, v in scored) / len(scored)
            text = f"{grid[i][j]:.2f}\n{_n_label([r for r, _ in scored], tier)}"
            far = abs(norm(grid[i][j]) - 0.5) > 0.3  # the ends of either scale are dark
            color = "white" if far or not centred and grid[i][j] < 0.6 else "black"
        else:  # no score: say why (diverged, failed...), or that a completed run has no recall
            text = "/".join(sorted({r.status for r in members} - {COMPLETED})) or "no recall"
            color = "red"
        ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
        labels.append(f"{x_key}={x} {y_key}={y}: {text}".replace("\n", " "))
    # a cell without recall must not look like chance (white on RdBu)
    cmap = plt.get_cmap("RdBu" if centred else "viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(grid, norm=norm, cmap=cmap, origin="lower", aspect="auto")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    title = f"final {recall_key(tier)}" + (f" (chance {chance:.2f})" if chance is not None else "")
    ax.set_title(title)
    bar = fig.colorbar(image, ax=ax)
    if chance is not None:
        bar.ax.axhline(chance, color="black", linestyle="--", linewidth=1)
    fig.tight_layout()
    save(fig, path, metadata={"Title": title, "Description": "; ".join(sorted(labels))})
    plt.close(fig)


def _n_label(runs: list[RunRecord], tier: str) -> str:
    """`n = 40` (questions per run), `n = 40 ×3` for the mean of three runs; `n = ?` when no run recorded it."""
    ns = sorted({int(n) for r in runs if (n := r.final(recall_key(tier, "n"))) is not None})
    text = f"n = {'/'.join(map(str, ns)) or '?'}"
    return text if len(runs) == 1 else f"{text} ×{len(runs)}"


def _axis_values(runs: list[RunRecord], key: str) -> list[str]:
    """Distinct values of `key`, in numeric order when they are all numbers."""
    values = {r.param_values().get(key, _MISSING) for r in runs}
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


if __name__ == "__main__":
    sys.exit(main())
