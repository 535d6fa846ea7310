"""The sweep report: `moshi-knowledge report FOLDER [FOLDER ...]` (or `python -m moshi_knowledge.sweep_report`).

Reads every run under the folders (each directory holding a summary.json, symlinked run folders followed; its
overrides from .hydra/overrides.yaml) and writes into the first folder (or `--out`):

    report.md            every section below
    results.csv          long format, one row per run × step × tier × figure, the swept parameters as columns
    loss_curves.png      train and eval loss of every run
    recall_vs_step.png   one panel per tier: recall of each config over the steps, with its 95% interval
    recall_heatmaps.png  (two or more swept parameters) one heatmap per tier, each cell faded by its interval
    recall_<param>.png   (one swept parameter) one panel per tier: final recall over the parameter

and prints what reads in a 100-column terminal: the run count, which config won, and a tier × config table. A
run's own final table (one run, every figure) is moshi_knowledge/evaluation/run_summary.py; this compares runs, for
people who can't open the W&B dashboard, and for the paper.

Only experimental overrides are parameters: `logger.*`, `paths.*`, `hydra.*` and the launcher say where and how a
run ran, not what it tested. Seeds are replicates: a config is a run's parameters other than its seed.

Keys read (written by train/eval through the Tracker; `moshi_knowledge.tracking.contract` is the full list):

    summary.json   status, message, step, train/loss, eval/loss, nan_guard/events, recall/<tier>/<stat> (mc_acc and
                   its interval, p_vs_null, mde, chance, delta, p_value, n, ...), data/exposures_per_fact
    .hydra/        overrides.yaml (the run's overrides), hydra.yaml (its config-group choices: `layout`), config.yaml
                   (`objective.metric`: the tier the sweep tuned on)
    metrics.jsonl  step, train/loss, eval/loss, recall/<tier>/<stat> per evaluation (curves, the CSV)

"Which config won" is chosen on `eval_tune` (the half of eval a sweep tunes on) and quoted on `eval_test` (the half
it was not chosen on); without that split, on the tier of `objective.metric`; without either, per tier. Never on
the never-trained null tier (unseen_facts), which no config should win. The winner is set against the runner-up on
the same questions (predictions.jsonl). Sections that follow: a Study section when runs differ in `layout`
(moshi_knowledge/study.py), a calibration section (calibration.py), one row per run, "Across seeds" when runs differ
only by seed, "Configs compared across seeds" when configs share seeds, and the figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import statistics
import sys
import textwrap
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from moshi_knowledge.calibration import section as calibration_section
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.metrics import HEADLINE, METRICS, NULL_TIER
from moshi_knowledge.evaluation.run_summary import tier_verdict
from moshi_knowledge.evaluation.stats import mean_interval, paired_p_value, wilson
from moshi_knowledge.io_utils import atomic_write_text
from moshi_knowledge.markdown import MISSING, fmt, plural, table_row
from moshi_knowledge.plots import pyplot, save, small_multiples
from moshi_knowledge.study import study_section
from moshi_knowledge.tracking.contract import (
    COMPLETED,
    DIVERGED,
    EVAL_LOSS,
    MESSAGE,
    NAN_EVENTS,
    PREDICTIONS_FILE,
    STEP,
    SUMMARY_FILE,
    TRAIN_LOSS,
    half_tier,
    number,
    recall_key,
    recall_tiers,
)
from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.tracking.runs import RunRecord, load_run

REPORT_FILE = "report.md"
RESULTS_CSV = "results.csv"
LOSS_PLOT = "loss_curves.png"
STEP_PLOT = "recall_vs_step.png"
HEATMAPS = "recall_heatmaps.png"
WIDTH = 100  # the terminal the printed table must fit
TUNE, TEST = half_tier("eval", "tune"), half_tier("eval", "test")
NULL_TIERS = (NULL_TIER,)  # never trained: a config that "wins" there won by chance
OPERATIONAL = ("logger", "paths", "hydra", "launcher")  # where and how a run ran, not what it tested
SEED_KEYS = ("seed", "train.seed")
CSV_FIELDS = ("run", "config", "status")  # then the swept parameters, then LONG_FIELDS
LONG_FIELDS = ("step", "tier", "figure", "value")
ALPHA = 0.05  # a paired difference with p below this names the better config
_OPTUNA_RESULTS = "optimization_results.yaml"  # written by Hydra's Optuna sweeper into the sweep dir
_RECALL = re.compile(r"^recall/(?P<tier>[^/]+)/(?P<stat>.+)$")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moshi-knowledge report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", type=Path, nargs="+", metavar="FOLDER",
                        help="a multirun's sweep directory, or any folder of run dirs (symlinks to runs count)")
    parser.add_argument("--out", type=Path, help="where report.md, results.csv and the figures go (default: the "
                                                  "first FOLDER)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.folders, args.out))
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"fix: {err.fix}", file=sys.stderr)
        return 2
    return 0


# ---- the runs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    """The runs of the report and what tells them apart."""

    runs: list[RunRecord]
    labels: list[str]  # each run's folder, relative to the folder it was found under
    varying: list[list[str]]  # each run's experimental overrides that differ between runs
    common: list[str]  # the experimental overrides every run shares
    configs: list[str]  # each run's config id (#1, #2, ...): its varying overrides other than the seed
    config_names: dict[str, str]  # config id -> those overrides
    params: list[str]  # swept parameters (seeds included), the most varied first
    tiers: list[str]

    def names(self) -> list[str]:
        """Each run by what varies (its folder when nothing does)."""
        return [" ".join(v) or label for v, label in zip(self.varying, self.labels)]


def load_sweep(folders: Sequence[Path]) -> Sweep:
    """Every run under `folders`; a run reached twice (a symlink beside its target, a folder given twice) once."""
    runs, labels, seen = [], [], set()
    for folder in folders:
        for rel in _run_dirs(folder) if folder.is_dir() else []:
            real = (folder / rel).resolve()
            if real in seen:
                continue
            seen.add(real)
            runs.append(load_run(folder / rel))
            name = folder.resolve().name
            label = str(rel) if rel.parts else name
            labels.append(f"{name}/{rel}" if len(folders) > 1 and rel.parts else label)
    if not runs:
        raise UserError(
            f"no runs under {', '.join(map(str, folders))}: no directory there holds a summary.json",
            fix="pass the directory a multirun wrote (runs/sweeps/NAME_DATE for conf/sweep presets, else "
            "runs/multirun/DATE/TIME), whose job folders each hold summary.json and metrics.jsonl",
        )
    experimental = [[o for o in r.overrides if is_experimental(o)] for r in runs]
    common = set.intersection(*map(set, experimental)) if len(runs) > 1 else set()
    varying = [[o for o in e if o not in common] for e in experimental]
    keys = [" ".join(o for o in v if not _is_seed(o)) or "(common overrides only)" for v in varying]
    ids = {key: f"#{i}" for i, key in enumerate(dict.fromkeys(keys), 1)}
    values = [_param_values(v) for v in varying]
    counts = Counter(k for v in values for k in v)
    params = sorted(counts, key=lambda k: -len({v.get(k, MISSING) for v in values}))
    params = [k for k in params if len({v.get(k, MISSING) for v in values}) > 1]
    return Sweep(runs, labels, varying, [o for o in experimental[0] if o in common], [ids[k] for k in keys],
                 {i: k for k, i in ids.items()}, params, recall_tiers(k for r in runs for k in r.summary))


def _run_dirs(root: Path) -> list[Path]:
    """Run folders under `root` (itself included), relative to it, following symlinks (a folder of links to the
    runs of several sweeps is a sweep); job numbers sort numerically, hidden folders (.hydra, .cache) are skipped."""
    found, visited = [], set()
    for here, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(here)
        if real in visited:  # a link loop, or a second link to a folder already read
            subdirs.clear()
            continue
        visited.add(real)
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        if SUMMARY_FILE in files:
            found.append(Path(here).relative_to(root))
    return sorted(found, key=lambda rel: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.parts])


def is_experimental(override: str) -> bool:
    """Whether an override changes what a run tests: not `logger.*`, `paths.*`, `hydra.*` or the launcher."""
    key = override.lstrip("+~").split("=", 1)[0]
    return re.split(r"[./@]", key)[0] not in OPERATIONAL


def _param_values(overrides: Sequence[str]) -> dict[str, str]:
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {k: v for k, v in pairs}


def _is_seed(override: str) -> bool:
    return override.lstrip("+~").split("=")[0] in SEED_KEYS


def _objective_tier(runs: Sequence[RunRecord]) -> str | None:
    """The tier of the sweep's `objective.metric` (from the first run's .hydra/config.yaml that names one)."""
    for run in runs:
        path = run.path / ".hydra" / "config.yaml"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, yaml.YAMLError):
            continue
        objective = config.get("objective") if isinstance(config, dict) else None
        metric = objective.get("metric") if isinstance(objective, dict) else None
        if isinstance(metric, str):
            match = _RECALL.match(metric)
            return match["tier"] if match else None
    return None


# ---- the report ----------------------------------------------------------------------------------------------


def write_report(folders: Sequence[Path], out: Path | None = None) -> str:
    """Writes report.md, results.csv and the figures into `out` (default: the first folder); returns what to print."""
    sweep = load_sweep(folders)
    out = out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    winner = _winner(sweep, _objective_tier(sweep.runs))
    terminal = terminal_table(sweep, winner.marks)
    head = [_status_line(sweep.runs)]
    if sweep.common:
        head.append(f"Common overrides: {', '.join(f'`{o}`' for o in sweep.common)}")
    head.append(f"Swept parameters: {', '.join(f'`{p}`' for p in sweep.params) or 'none'} (not counted: "
                f"{', '.join(f'`{g}.*`' for g in OPERATIONAL)}, which say where a run ran). "
                f"[{RESULTS_CSV}]({RESULTS_CSV}): every recall figure of every run at every step, one per row.")
    study = "\n\n".join(s for s in (study_section(sweep.runs, out), calibration_section(sweep.runs, out)) if s)
    seeds = _seed_section(sweep) or _paired_section(sweep)
    sections = [f"# Sweep report: {', '.join(f.resolve().name for f in folders)}", "\n\n".join(head),
                *([study] if study else []), *([winner.markdown] if winner.markdown else []),
                f"## Recall per tier and config\n\n```text\n{terminal}\n```", _table(sweep),
                *([seeds] if seeds else []), _loss_section(sweep, out), _step_section(sweep, out),
                _parameter_section(sweep, out)]
    if (folders[0] / _OPTUNA_RESULTS).exists():
        text = (folders[0] / _OPTUNA_RESULTS).read_text(encoding="utf-8")
        sections.append(f"## Optuna result\n\n```yaml\n{text.strip()}\n```")
    write_csv(sweep, out / RESULTS_CSV)
    atomic_write_text(out / REPORT_FILE, "\n\n".join(sections) + "\n")
    wrap = textwrap.TextWrapper(width=WIDTH, subsequent_indent="  ")
    lines = [head[0], *(wrap.fill(line.replace("**", "")) for line in winner.lines), "", terminal, "",
             *(f"{name}: {out / name}" for name in (REPORT_FILE, RESULTS_CSV))]
    return "\n".join(lines)


def _status_line(runs: list[RunRecord]) -> str:
    counts = Counter(run.status for run in runs)
    return f"{plural(len(runs), 'run')}: " + ", ".join(f"{n} {status}" for status, n in counts.items())


# ---- the long-format CSV -------------------------------------------------------------------------------------


def history(run: RunRecord) -> dict[tuple[int | None, str, str], float]:
    """(step, tier, figure) -> value: every recall figure of metrics.jsonl, and the summary's at the run's last step
    (where they replace the logged ones: the summary is final, and adds the baseline, delta and p-values)."""
    out: dict[tuple[int | None, str, str], float] = {}
    for row in run.metrics:
        if isinstance(row.get(STEP), int):
            for key, value in row.items():
                if match := _RECALL.match(key):
                    out[row[STEP], match["tier"], match["stat"]] = number(value)
    last = run.summary.get(STEP)
    last = last if isinstance(last, int) else max((s for s, _, _ in out), default=None)
    for key, value in run.summary.items():
        if match := _RECALL.match(key):
            out[last, match["tier"], match["stat"]] = number(value)
    return out


def write_csv(sweep: Sweep, path: Path) -> None:
    """results.csv: one row per run × step × tier × figure (long format: `pandas.read_csv` then pivot or group by
    any column), with the run, its config id, status and swept parameters on every row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*CSV_FIELDS, *sweep.params, *LONG_FIELDS])
    order = {t: i for i, t in enumerate(sweep.tiers)}
    for run, label, config, overrides in zip(sweep.runs, sweep.labels, sweep.configs, sweep.varying):
        params = _param_values(overrides)
        rows = sorted(history(run).items(), key=lambda item: (item[0][0] is None, item[0][0] or 0,
                                                              order.get(item[0][1], len(order)), item[0][1:]))
        for (step, tier, figure), value in rows:
            writer.writerow([label, config, run.status, *(params.get(p, "") for p in sweep.params),
                             "" if step is None else step, tier, figure, value])
    atomic_write_text(path, buffer.getvalue())


# ---- which config won ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Winner:
    markdown: str | None  # the report's section
    lines: list[str]  # its sentences, for the terminal
    marks: set[tuple[str, str]]  # (tier, config id) of each winner, starred in the terminal table


@dataclass(frozen=True)
class Comparison:
    """Best config against the runner-up, paired: on the same questions (one run each) or the same seeds."""

    p: float
    on: str  # "40 questions", "3 seeds"
    difference: str  # right where they differ (questions), or the mean difference (seeds)


def _winner(sweep: Sweep, objective_tier: str | None) -> Winner:
    """Chosen on eval_tune and quoted on eval_test; else on the objective's tier; else per tier; never on a null.

    Configs are ranked by their mean final recall over their completed runs (a best seed is luck, not a config).
    The best is set against the runner-up by a paired exact test over the final predictions when each config is one
    run (the sign test over fact clusters; McNemar's with one question per cluster), else by a paired t-test over the
    seeds both completed."""
    members: dict[str, list[RunRecord]] = {}
    for run, config in zip(sweep.runs, sweep.configs):
        members.setdefault(config, []).append(run)
    names = {c: sweep.config_names[c] + (f" ({len(rs)} runs)" if len(rs) > 1 else "") for c, rs in members.items()}
    sign = 1 if METRICS[HEADLINE].higher_is_better else -1

    def score(config: str, tier: str) -> float | None:
        values = [v for r in members[config] if (v := _completed_recall(r, tier)) is not None]
        return statistics.fmean(values) if values else None

    def ranked(tier: str) -> list[str]:
        scored = [(s, c) for c in members if (s := score(c, tier)) is not None]
        return [c for _, c in sorted(scored, key=lambda item: -sign * item[0])]

    def row(tier: str, role: str, best: str, runner: str | None) -> tuple[str, Comparison | None]:
        test = None if runner is None else _compare(tier, members[best], members[runner])
        cells = [tier, role, f"`{names[best]}` {fmt(score(best, tier), '.3f')}",
                 MISSING if runner is None else f"`{names[runner]}` {fmt(score(runner, tier), '.3f')}"]
        if test is None:
            return table_row([*cells, *[MISSING] * 4]), None
        better = test.p < ALPHA and sign * (score(best, tier) or 0) > sign * (score(runner, tier) or 0)
        return table_row([*cells, test.on, test.difference, fmt(test.p, ".4g"), "yes" if better else "no"]), test

    candidates = [t for t in sweep.tiers if t not in NULL_TIERS]
    chosen_on = TUNE if TUNE in candidates else objective_tier if objective_tier in candidates else None
    quoted_on = TEST if chosen_on == TUNE and TEST in candidates else None
    rows, lines, marks = [], [], set()
    for tier in [chosen_on] if chosen_on else candidates:
        order = ranked(tier)
        if not order or (chosen_on is None and len(order) < 2):
            continue
        best, runner = order[0], (order[1] if len(order) > 1 else None)
        marks.add((tier, best))
        table, test = row(tier, "chosen on" if chosen_on else "best", best, runner)
        rows.append(table)
        lines.append(_winner_line(tier, names[best], score(best, tier), runner and names[runner],
                                  runner and score(runner, tier), test, "chosen on" if chosen_on else None))
        if quoted_on:
            marks.add((quoted_on, best))
            table, test = row(quoted_on, "quoted on", best, runner)
            rows.append(table)
            only = members[best][0] if len(members[best]) == 1 else None  # a verdict is one run's reading
            verdict = only and tier_verdict(lambda stat, run=only: run.final(recall_key(quoted_on, stat)))
            lines.append(_winner_line(quoted_on, names[best], score(best, quoted_on), runner and names[runner],
                                      runner and score(runner, quoted_on), test, "quoted on")
                         + (f" Its verdict there: {verdict}." if verdict else ""))
    if not rows:
        return Winner(None, [], set())
    basis = (f"Chosen on `{chosen_on}`" + (f" and quoted on `{quoted_on}`, questions the choice never saw."
                                            if quoted_on else ", the tier of `objective.metric`: the best of "
                                            "several configs reads high there.") if chosen_on else
             "No `eval_tune` half and no recall `objective.metric`: the best config per tier.")
    header = ["tier", "role", "best", "runner-up", "compared on", "best right / runner-up right (where they "
              "differ), or mean difference", "paired p", "best is better"]
    return Winner("\n".join([
        "## Which config won", "", basis + f" Never on the null tier ({', '.join(NULL_TIERS)}).", "", *lines, "",
        table_row(header), table_row(["---"] * len(header)), *rows]), lines, marks)


def _winner_line(tier: str, best: str, acc: float | None, runner: str | None, other: float | None,
                 test: Comparison | None, role: str | None) -> str:
    """`- **tier**: `best` is best (0.750) and beats `runner` ...`, or says that this sweep cannot tell them apart."""
    lead = f"- {role.capitalize()} **{tier}**" if role else f"- **{tier}**"
    score = f"reads {fmt(acc, '.3f')}" if role == "quoted on" else f"is best ({fmt(acc, '.3f')})"
    line = f"{lead}: `{best}` {score}"
    if runner is None:
        return line + ", the only config with a completed run there."
    if test is None:
        return line + f"; runner-up `{runner}` ({fmt(other, '.3f')}), not compared (no shared questions or seeds)."
    if test.p < ALPHA:
        return line + f" and beats `{runner}` ({fmt(other, '.3f')}; paired p = {test.p:.3g}, {test.on})."
    return line + (f", but `{runner}` ({fmt(other, '.3f')}) is indistinguishable from it (paired p = {test.p:.3g}, "
                   f"{test.on}): this sweep does not say which is better.")


def _compare(tier: str, a: list[RunRecord], b: list[RunRecord]) -> Comparison | None:
    """Configs of one run each on the questions both answered; else on the seeds both completed."""
    if len(a) == 1 and len(b) == 1:
        pa, pb = _final_predictions(a[0]).get(tier, {}), _final_predictions(b[0]).get(tier, {})
        shared = sorted(set(pa) & set(pb))
        if not shared:
            return None
        p = paired_p_value([pb[q][0] for q in shared], [pa[q][0] for q in shared], [pa[q][1] for q in shared])
        wins = sum(pa[q][0] and not pb[q][0] for q in shared)
        losses = sum(pb[q][0] and not pa[q][0] for q in shared)
        return Comparison(p, plural(len(shared), "question"), f"{wins} / {losses}")
    test = _seed_test(tier, _by_seed(a), _by_seed(b))
    return None if test is None else Comparison(test[3], plural(test[0], "seed"), f"{-test[1]:+.3f} mean")


def _by_seed(runs: Sequence[RunRecord]) -> dict[str, RunRecord]:
    return {" ".join(o for o in r.overrides if _is_seed(o)): r for r in runs}


def _final_predictions(run: RunRecord) -> dict[str, dict[str, tuple[bool, str]]]:
    """tier -> qid -> (multiple choice right, fact cluster) at the run's last evaluation; a question of a split tier
    also under its half (eval_tune, eval_test), as the run's summary counts it."""
    path = run.path / PREDICTIONS_FILE
    rows = read_metrics(path) if path.is_file() else []
    last = max((r["step"] for r in rows), default=None)
    out: dict[str, dict[str, tuple[bool, str]]] = {}
    for r in rows:
        if r["step"] == last:
            answer = (bool(r.get("mc_correct")), str(r.get("cluster", r["qid"])))
            for tier in (r["tier"], *([half_tier(r["tier"], r["half"])] if r.get("half") else [])):
                out.setdefault(tier, {})[r["qid"]] = answer
    return out


def _completed_recall(run: RunRecord, tier: str) -> float | None:
    value = run.final(recall_key(tier)) if run.status == COMPLETED else None
    return value if value is not None and math.isfinite(value) else None


# ---- tables --------------------------------------------------------------------------------------------------


def terminal_table(sweep: Sweep, marks: Collection[tuple[str, str]] = ()) -> str:
    """Tiers down, configs across (in blocks that fit WIDTH columns): each cell the final MC recall, the mean over
    the config's completed runs; a run with none shows its status. The configs' overrides follow as a legend."""
    ids = list(dict.fromkeys(sweep.configs))
    tier_w = max(len("tier"), *(len(t) for t in sweep.tiers)) if sweep.tiers else len("tier")
    col = max(10, *(len(i) + 3 for i in ids))  # " diverged" and a star
    per_block = max(1, (WIDTH - tier_w - 6) // col)
    lines = []
    for start in range(0, len(ids), per_block):
        block = ids[start:start + per_block]
        header = f"{'tier':<{tier_w}}{'n':>6}" + "".join(f"{i:>{col}}" for i in block)
        lines += ([""] if lines else []) + [header, "-" * len(header)]
        for tier in sweep.tiers:
            ns = sorted({int(v) for r in sweep.runs if (v := r.final(recall_key(tier, "n"))) is not None
                         and math.isfinite(v)})
            n = "–".join(str(x) for x in ns[::max(1, len(ns) - 1)]) or MISSING  # "40", or "1–40" when runs differ
            cells = [_terminal_cell(sweep, tier, i) + ("*" if (tier, i) in marks else " ") for i in block]
            lines.append(f"{tier:<{tier_w}}{n:>6}" + "".join(f"{c:>{col}}" for c in cells))
    if not sweep.tiers:
        lines.append("(no run has a final recall/<tier>/mc_acc)")
    lines.append("")
    for i in ids:
        runs = sum(c == i for c in sweep.configs)
        text = f"{i:>4}  {sweep.config_names[i]}" + (f" ({runs} runs)" if runs > 1 else "")
        lines.append(text if len(text) <= WIDTH else text[:WIDTH - 1] + "…")
    lines.append("cells: final MC recall, a config's mean over its completed runs (else its runs' status)")
    lines.append("n: questions per run" + ("; *: which config won" if marks else ""))
    return "\n".join(lines)


def _terminal_cell(sweep: Sweep, tier: str, config: str) -> str:
    runs = [r for r, c in zip(sweep.runs, sweep.configs) if c == config]
    values = [v for r in runs if (v := _completed_recall(r, tier)) is not None]
    if values:
        return f"{statistics.fmean(values):.2f}"
    return "/".join(sorted({r.status for r in runs} - {COMPLETED})) or MISSING


def _table(sweep: Sweep) -> str:
    """One Markdown row per run: every figure (wide; the terminal table above is the narrow view)."""
    header = ["run", "config", "overrides", "status", "train loss", "eval loss"]
    for tier in sweep.tiers:
        header += [f"{tier} recall [95% CI]", f"{tier} p vs null", f"{tier} MDE", f"{tier} verdict",
                   f"{tier} Δ base", f"{tier} p"]
    header.append("NaN events")
    lines = ["## Runs", "", table_row(header), table_row(["---"] * len(header))]
    for run, label, config, overrides in zip(sweep.runs, sweep.labels, sweep.configs, sweep.varying):
        cells = [label, config, " ".join(overrides) or MISSING, _status_cell(run),
                 fmt(run.final(TRAIN_LOSS), ".4g", nan="nan"), fmt(run.final(EVAL_LOSS), ".4g", nan="nan")]
        for tier in sweep.tiers:
            figure = lambda stat, tier=tier, run=run: run.final(recall_key(tier, stat))  # noqa: E731
            cells += [_recall_cell(run, tier), fmt(figure("p_vs_null"), ".3g"), fmt(figure("mde"), ".2f"),
                      tier_verdict(figure) or MISSING, fmt(figure("delta"), "+.3f"), fmt(figure("p_value"), ".3g")]
        cells.append(fmt(run.final(NAN_EVENTS), ".0f", nan="nan"))
        lines.append(table_row(cells))
    return "\n".join(lines)


def _status_cell(run: RunRecord) -> str:
    message = str(run.summary.get(MESSAGE) or "")
    if not message or run.status == COMPLETED:
        return run.status
    return f"{run.status}: {message if len(message) <= 60 else message[:57] + '...'}"


def _recall_cell(run: RunRecord, tier: str) -> str:
    acc = run.final(recall_key(tier))
    if acc is None:
        return MISSING
    low, high = run.final(recall_key(tier, "mc_acc_low")), run.final(recall_key(tier, "mc_acc_high"))
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{acc:.3f}{interval}"


def _seed_section(sweep: Sweep) -> str | None:
    """For runs that differ only by seed: each tier's final recall over the completed runs, as mean, standard
    deviation and a 95% t-interval of the mean, so one lucky seed is not read as an effect."""
    # a run without a seed override is the config's default seed (a first run, then more seeds added beside it)
    only_seeds = any(sweep.varying) and all(_is_seed(x) for o in sweep.varying for x in o)
    if len(sweep.runs) < 2 or not only_seeds or not sweep.tiers:
        return None
    lines = ["## Across seeds", "", table_row(["tier", "runs", "mean", "sd", "95% CI of the mean"]),
             table_row(["---"] * 5)]
    for tier in sweep.tiers:
        for stat in (m.name for m in METRICS.values() if m.across_seeds):  # the real figure, then its controls
            values = [v for r in sweep.runs if r.status == COMPLETED and (v := r.final(recall_key(tier, stat)))
                      is not None and math.isfinite(v)]
            if not values:
                continue
            label = tier if stat == HEADLINE else f"{tier} ({stat.removeprefix(f'{HEADLINE}_')})"
            mean, half = mean_interval(values)
            sd = statistics.stdev(values) if len(values) > 1 else math.nan
            lines.append(table_row([label, str(len(values)), f"{mean:.3f}", f"{sd:.3f}",
                                    f"[{mean - half:.3f}, {mean + half:.3f}]"]))
    return "\n".join(lines)


def _paired_section(sweep: Sweep) -> str | None:
    """For configs each run with the same seeds: per tier and pair of configs, the mean difference of final recall
    over the seeds both completed, with a paired t-test across those seeds and a verdict.

    Pairing by seed removes what a seed does to both configs alike (data order, initialisation). A t-test rather
    than Wilcoxon's signed-rank test: with 5 seeds or fewer the signed-rank test cannot reach p < 0.05 at all.
    Each pair is tested on its own (no correction for comparing many pairs). A rerun of one config and seed
    replaces the earlier run.
    """
    by_config: dict[str, dict[str, RunRecord]] = {}
    for run, overrides, config in zip(sweep.runs, sweep.varying, sweep.configs):
        seed = " ".join(o for o in overrides if _is_seed(o))
        if seed:
            by_config.setdefault(sweep.config_names[config], {})[seed] = run
    names = list(by_config)
    rows = [row for tier in sweep.tiers for i, a in enumerate(names) for b in names[i + 1:]
            if (row := _paired_row(tier, a, b, by_config[a], by_config[b])) is not None]
    if not rows:
        return None
    head = ["tier", "config A", "config B", "seeds", "mean B − A", "95% CI", "p (paired t)", "verdict"]
    return "\n".join(["## Configs compared across seeds", "", table_row(head), table_row(["---"] * len(head)), *rows])


def _seed_test(tier: str, a: dict[str, RunRecord], b: dict[str, RunRecord]) -> tuple[int, float, float, float] | None:
    """Seeds, mean B − A of final recall over the seeds both completed, its 95% half-width and the paired t-test's p;
    None below two such seeds."""
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
    return len(pairs), mean, half, p


def _paired_row(tier: str, name_a: str, name_b: str, a: dict[str, RunRecord], b: dict[str, RunRecord]) -> str | None:
    """One table row, or None when fewer than two seeds have a finite final recall in both configs."""
    test = _seed_test(tier, a, b)
    if test is None:
        return None
    n, mean, half, p = test
    higher = METRICS[HEADLINE].higher_is_better
    verdict = (f"indistinguishable (p ≥ {ALPHA})" if p >= ALPHA
               else f"{'B' if (mean > 0) == higher else 'A'} better")
    return table_row([tier, name_a, name_b, str(n), f"{mean:+.3f}",
                      f"[{mean - half:+.3f}, {mean + half:+.3f}]", f"{p:.3g}", verdict])


# ---- figures -------------------------------------------------------------------------------------------------


def _loss_section(sweep: Sweep, out: Path) -> str:
    curves = [(r, r.series(TRAIN_LOSS), r.series(EVAL_LOSS)) for r in sweep.runs]
    if not any(train[0] or ev[0] for _, train, ev in curves):
        return "## Loss curves\n\nNo run logged train/loss or eval/loss."
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5.5))
    finite: list[float] = []
    for i, ((run, (ts, tv), (es, ev)), name) in enumerate(zip(curves, sweep.names())):
        color = f"C{i % 10}"
        name += "" if run.status == COMPLETED else f" [{run.status}]"
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
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(sweep.runs) // 25)
    fig.tight_layout()
    save(fig, out / LOSS_PLOT)
    plt.close(fig)
    return f"## Loss curves\n\n![loss curves]({LOSS_PLOT})"


def _last_finite(steps: list[int], values: list[float]) -> tuple[int, float] | None:
    pairs = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    return pairs[-1] if pairs else None


def _step_section(sweep: Sweep, out: Path) -> str:
    """recall_vs_step.png: a panel per tier, each config's recall at every evaluation (the mean over its runs, the
    span of their 95% intervals shaded), one colour per config (the ids of the terminal table), chance dashed."""
    from matplotlib.ticker import MaxNLocator

    title = "## Recall over training"
    histories = [history(r) for r in sweep.runs]
    tiers = [t for t in sweep.tiers if any(s is not None and tier == t and stat == HEADLINE
                                           for h in histories for s, tier, stat in h)]
    if not tiers:
        return f"{title}\n\nNo run logged recall at any step."
    ids = list(dict.fromkeys(sweep.configs))
    colors = _colors(len(ids))
    plt = pyplot()
    fig, axes = small_multiples(len(tiers), (4.0, 2.8), "step", "MC recall")
    chance = _chance(sweep.runs)
    for ax, tier in zip(axes, tiers):
        for k, config in enumerate(ids):
            mine = [(r, h) for r, c, h in zip(sweep.runs, sweep.configs, histories) if c == config]
            by_step: dict[int, list[tuple[float, float, float]]] = {}
            for _, h in mine:
                for (step, t, stat), value in h.items():
                    if step is not None and t == tier and stat == HEADLINE and math.isfinite(value):
                        by_step.setdefault(step, []).append((value, h.get((step, tier, f"{HEADLINE}_low"), value),
                                                             h.get((step, tier, f"{HEADLINE}_high"), value)))
            if not by_step:
                continue
            steps = sorted(by_step)
            ax.fill_between(steps, [min(p[1] for p in by_step[s]) for s in steps],
                            [max(p[2] for p in by_step[s]) for s in steps], color=colors[k], alpha=0.12, linewidth=0)
            ax.plot(steps, [statistics.fmean(p[0] for p in by_step[s]) for s in steps], color=colors[k], marker="o",
                    markersize=3, linewidth=1.3, linestyle="-" if any(r.status == COMPLETED for r, _ in mine) else ":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _chance_line(ax, _tier_chance(sweep.runs, tier, chance))
        ax.set_title(_panel_title(sweep.runs, tier), fontsize=9)
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", markersize=3) for c in colors]
    _legend(fig, handles, [_legend_name(i, sweep.config_names[i]) for i in ids])
    fig.suptitle("MC recall at each evaluation: a config's mean over its runs (shaded: the span of their 95% "
                 "intervals; dotted: no run completed; dashed: chance)", fontsize=10)
    save(fig, out / STEP_PLOT, bbox_inches="tight", metadata={"Title": "MC recall over steps per tier"})
    plt.close(fig)
    return f"{title}\n\n![recall over steps per tier]({STEP_PLOT})"


def _parameter_section(sweep: Sweep, out: Path) -> str:
    """Final recall over the swept parameters (seeds are replicates, averaged): a panel per tier either way."""
    title = "## Recall over the swept parameters"
    params = [p for p in sweep.params if p not in SEED_KEYS]
    if not sweep.tiers:
        return f"{title}\n\nNo plot: no run's summary has a recall/<tier>/mc_acc."
    if not params:
        return f"{title}\n\nNo plot: no parameter other than the seed varies across these runs."
    if len(params) == 1:
        name = f"recall_{_file_safe(params[0])}.png"
        _parameter_plot(sweep, params[0], out / name)
        return (f"{title}\n\nFinal recall over `{params[0]}`, a panel per tier: the mean of a value's completed runs "
                f"with the span of their 95% intervals; the dashed line is chance.\n\n"
                f"![recall over {params[0]}]({name})")
    x_key, y_key = params[0], params[1]
    parts = [title, f"A heatmap per tier over `{x_key}` × `{y_key}`. Each cell gives the final recall, its 95% "
                    "interval and n, the number of questions (×k: the mean of k runs, the span of their intervals). "
                    "The colour is centred on chance (blue above, red below) and faded by the interval's width: a "
                    "cell of few questions stays pale whatever its recall. Grey: no recall (the run's status)."]
    if len(params) > 2:
        parts.append(f"Each cell averages the runs that differ only in {', '.join(params[2:])}.")
    _heatmaps(sweep, x_key, y_key, out / HEATMAPS)
    parts.append(f"![recall per tier over {x_key} × {y_key}]({HEATMAPS})")
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Cell:
    """The completed runs of one parameter value (or pair) on one tier: mean recall, interval span, n."""

    mean: float
    low: float
    high: float
    runs: int
    n: list[int]

    @property
    def strength(self) -> float:
        """How much of its colour the cell shows: 1 minus its interval's width (at least 0.15), so a cell of one
        question ([0.21, 1.00]) stays pale where forty questions ([0.70, 0.93]) show nearly full colour."""
        return min(1.0, max(0.15, 1.0 - (self.high - self.low)))

    @property
    def text(self) -> str:
        n = f"n = {'/'.join(map(str, self.n)) or '?'}" + (f" ×{self.runs}" if self.runs > 1 else "")
        return f"{self.mean:.2f}\n[{self.low:.2f}, {self.high:.2f}]\n{n}"


def _cell(runs: Sequence[RunRecord], tier: str) -> Cell | None:
    """None without a completed run with recall; an interval missing from the summary is Wilson's on n, and with
    neither it spans 0 to 1 (unknown certainty is no certainty)."""
    scored = [(r, v) for r in runs if (v := _completed_recall(r, tier)) is not None]
    if not scored:
        return None
    lows, highs, ns = [], [], set()
    for run, value in scored:
        n = run.final(recall_key(tier, "n"))
        n = int(n) if n is not None and math.isfinite(n) else None
        low, high = run.final(recall_key(tier, "mc_acc_low")), run.final(recall_key(tier, "mc_acc_high"))
        if low is None or high is None or not math.isfinite(low) or not math.isfinite(high):
            low, high = wilson(value * n, n) if n else (0.0, 1.0)
        lows.append(low)
        highs.append(high)
        if n is not None:
            ns.add(n)
    return Cell(statistics.fmean(v for _, v in scored), min(lows), max(highs), len(scored), sorted(ns))


def _parameter_plot(sweep: Sweep, key: str, path: Path) -> None:
    """A panel per tier: final recall over the one swept parameter, with the intervals' span and chance."""
    values = [_param_values(v) for v in sweep.varying]
    xs = _axis_values(values, key)
    plt = pyplot()
    fig, axes = small_multiples(len(sweep.tiers), (max(2.8, 0.55 * len(xs) + 1.4), 2.6), key, "final MC recall")
    chance = _chance(sweep.runs)
    for ax, tier in zip(axes, sweep.tiers):
        points = [(j, c) for j, x in enumerate(xs) if (c := _cell([r for r, v in zip(sweep.runs, values)
                                                                     if v.get(key, MISSING) == x], tier))]
        if points:
            errors = [[max(c.mean - c.low, 0) for _, c in points], [max(c.high - c.mean, 0) for _, c in points]]
            ax.errorbar([j for j, _ in points], [c.mean for _, c in points], yerr=errors, capsize=3, marker="o")
        _chance_line(ax, _tier_chance(sweep.runs, tier, chance))
        ax.set_xticks(range(len(xs)), xs, fontsize=8)
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_ylim(0.0, 1.0)
        ax.set_title(_panel_title(sweep.runs, tier), fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"final recall over {key} (bars: 95% interval; dashed: chance)", fontsize=10)
    save(fig, path, bbox_inches="tight", metadata={"Title": f"final MC recall over {key} per tier"})
    plt.close(fig)


def _heatmaps(sweep: Sweep, x_key: str, y_key: str, path: Path) -> None:
    """A heatmap per tier on one colour scale: mean final recall per cell, faded towards white by the width of its
    interval, annotated with the interval and n. The cells' text is also the PNG's metadata."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize, TwoSlopeNorm

    values = [_param_values(v) for v in sweep.varying]
    xs, ys = _axis_values(values, x_key), _axis_values(values, y_key)
    members: dict[tuple[str, str], list[RunRecord]] = {}
    for run, v in zip(sweep.runs, values):
        members.setdefault((v.get(x_key, MISSING), v.get(y_key, MISSING)), []).append(run)
    chance = _chance(sweep.runs)
    centred = chance is not None and 0 < chance < 1
    norm = TwoSlopeNorm(vcenter=chance, vmin=0.0, vmax=1.0) if centred else Normalize(0.0, 1.0)
    plt = pyplot()
    cmap = plt.get_cmap("RdBu" if centred else "viridis")
    fig, axes = small_multiples(len(sweep.tiers), (1.2 + 1.05 * len(xs), 1.1 + 0.8 * len(ys)), x_key, y_key)
    described = []
    for ax, tier in zip(axes, sweep.tiers):
        image = [[(0.85, 0.85, 0.85, 1.0)] * len(xs) for _ in ys]  # grey: no recall, never mistaken for chance
        for (x, y), runs in members.items():
            i, j = ys.index(y), xs.index(x)
            cell = _cell(runs, tier)
            if cell is None:
                text = "/".join(sorted({r.status for r in runs} - {COMPLETED})) or "no recall"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="darkred")
            else:
                strength = cell.strength
                r, g, b, _ = cmap(norm(cell.mean))
                image[i][j] = (1 - strength + strength * r, 1 - strength + strength * g, 1 - strength + strength * b,
                               1.0)
                text = cell.text
                dark = strength * abs(float(norm(cell.mean)) - 0.5) > 0.3
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
            described.append(f"{tier}: {x_key}={x} {y_key}={y}: {text}".replace("\n", " "))
        ax.imshow(image, origin="lower", aspect="auto")
        ax.set_xticks(range(len(xs)), xs, fontsize=8)
        ax.set_yticks(range(len(ys)), ys, fontsize=8)
        ax.set_title(_panel_title(sweep.runs, tier), fontsize=9)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=list(axes), shrink=0.8, pad=0.02)
    bar.set_label("final MC recall (pale: wide interval)" + (f"; chance {chance:.2f}" if centred else ""))
    if centred:
        bar.ax.axhline(chance, color="black", linestyle="--", linewidth=1)
    title = f"final MC recall per tier over {x_key} × {y_key}" + (f" (chance {chance:.2f})" if centred else "")
    fig.suptitle(title, fontsize=10)
    save(fig, path, bbox_inches="tight", metadata={"Title": title, "Description": "; ".join(described)})
    plt.close(fig)


def _colors(n: int) -> list[Any]:
    """Distinct colours for n configs: tab10, tab20 beyond ten, a continuous map beyond twenty."""
    plt = pyplot()
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = plt.get_cmap("tab20" if n <= 20 else "turbo")
    return [cmap(i if n <= 20 else i / (n - 1)) for i in range(n)]


def _legend(fig: Any, handles: list[Any], labels: list[str]) -> None:
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8,
               ncol=1 + len(labels) // 30, frameon=False)


def _legend_name(config: str, name: str) -> str:
    return f"{config} {name if len(name) <= 45 else name[:44] + '…'}"


def _panel_title(runs: Sequence[RunRecord], tier: str) -> str:
    ns = sorted({int(v) for r in runs if (v := r.final(recall_key(tier, "n"))) is not None and math.isfinite(v)})
    n = f" (n = {'/'.join(map(str, ns))})" if ns else ""
    return f"{tier}{n}" + (" · null" if tier in NULL_TIERS else "")


def _chance_line(ax: Any, chance: float | None) -> None:
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1)


def _tier_chance(runs: Sequence[RunRecord], tier: str, fallback: float | None) -> float | None:
    """The tier's recorded chance level (recall/<tier>/chance), else the sweep's from its predictions."""
    found = (v for r in runs if (v := r.final(recall_key(tier, "chance"))) is not None and math.isfinite(v))
    return next(found, fallback)


def _chance(runs: Sequence[RunRecord]) -> float | None:
    """The first recorded `recall/<tier>/chance`, else 1 / the number of candidates of a scored question (the first
    found), else None."""
    recorded = (v for r in runs for k, v in r.summary.items() if (m := _RECALL.match(k)) and m["stat"] == "chance"
                and math.isfinite(number(v)))
    if (found := next(recorded, None)) is not None:
        return float(found)
    for run in runs:
        path = run.path / PREDICTIONS_FILE
        if path.is_file():
            for row in read_metrics(path):
                if row.get("candidates"):
                    return 1.0 / len(row["candidates"])
    return None


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _axis_values(values: Sequence[dict[str, str]], key: str) -> list[str]:
    """Distinct values of `key` over the runs' parameters, in numeric order when they are all numbers."""
    distinct = {v.get(key, MISSING) for v in values}
    try:
        return sorted(distinct, key=float)
    except ValueError:
        return sorted(distinct)


if __name__ == "__main__":
    sys.exit(main())
