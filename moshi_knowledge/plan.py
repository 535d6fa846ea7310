"""`moshi-knowledge plan [overrides]`: the runs a command would start and the GPU time they would take, before
spending any of it. Nothing runs and nothing is written.

The command line is composed as the app composes it (Hydra's compose API) and checked as a run checks it; a sweep's
grid is expanded as Hydra's basic sweeper expands it (`hydra.sweeper.params`, with the command line's own values
replacing an axis). Each run's GPU time is its training (steps x the time of one step) plus its recall (evaluations
x questions x seconds per question), at the speeds of the committed full-size benchmark
(benchmarks/results/full_scale.json). Steps are `train.max_steps`, or, with `train.exposures_per_fact`, estimated
from the story and Q/A built in memory and the speech's length estimated from its words (dataset/estimate.py):
the run itself computes them exactly from its data and logs them.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from moshi_knowledge.config_schema import register
from moshi_knowledge.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = Path("benchmarks") / "results" / "full_scale.json"
FRAME_RATE = 12.5  # Mimi frames per second (codes.samples; not imported: it would load torch before it is needed)
USAGE = """usage: moshi-knowledge plan [overrides]   (also: python -m moshi_knowledge plan ...)

Prints the runs the same command line would start (a sweep's grid), their number and the GPU-hours they would
take at the speeds of benchmarks/results/full_scale.json. Nothing runs and nothing is written. Example:
  moshi-knowledge plan sweep=injection experiment=moshiko_h200"""
REFUSED = (ConfigCompositionException, OverrideParseException, SearchPathException)
# Story, Q/A and narration backends that ask an LLM: the plan never calls one, so their data size is unknown to it.
LLM_MODULES = ("moshi_knowledge.world.llm", "moshi_knowledge.qa.llm", "moshi_knowledge.speech.narration_llm")


@dataclass(frozen=True)
class Speeds:
    """The full-size figures a GPU estimate scales, with where each comes from."""

    source: str
    device: str
    row_frames_per_s: float  # training: frames of whole rows (padding included) per second
    useful_frames_per_s: float
    useful_fraction: float
    recall_sec_per_point: float
    questions: int
    overhead_sec: tuple[float, float]  # per run, outside the estimate: compile warm-up, recall's set-up

    @property
    def sec_per_question(self) -> float:
        return self.recall_sec_per_point / self.questions

    def describe(self) -> str:
        return (f"speeds: {self.source} ({self.device}, experiment=moshiko_h200): training "
                f"{self.row_frames_per_s:,.0f} row frames/s (app.useful_frames_per_s {self.useful_frames_per_s:,.0f} "
                f"/ app.useful_fraction {self.useful_fraction:.3f}); recall {self.sec_per_question:.4f} s per question "
                f"(mean app.recall_points[].total_sec {self.recall_sec_per_point:.2f} s over its {self.questions} "
                "questions, generation and controls included)")


def read_speeds(path: Path) -> Speeds:
    """The training and recall speeds of the full-scale benchmark's app run."""
    data = json.loads(path.read_text(encoding="utf-8"))
    app = data["app"]
    halves = {f"{t}_{h}" for t in ("eval",) for h in ("tune", "test")}  # an eval half re-counts eval's questions
    questions = sum(int(v) for k, v in app["recall"].items()
                    if k.startswith("recall/") and k.endswith("/n") and k.split("/")[1] not in halves)
    return Speeds(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), data["environment"]["device"],
                  app["useful_frames_per_s"] / app["useful_fraction"], app["useful_frames_per_s"],
                  app["useful_fraction"], statistics.mean(p["total_sec"] for p in app["recall_points"]), questions,
                  (float(app.get("compile_warmup_sec") or 0.0), float(app["recall_points"][0].get("setup_sec") or 0.0)))


# ---- the grid -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    axes: list[tuple[str, list[str]]]  # the swept keys and their values, in the sweeper's order
    jobs: list[list[str]]  # each job's overrides
    sweeper: str  # how the jobs were found
    shape: str  # e.g. "3 x 4 x 3"


def _values(override: Override) -> list[str]:
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise UserError(f"{override.input_line}: an interval is Optuna's, not a grid's",
                            "give the axis as a list of values (a,b,c) or range(...)")
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def expand(args: list[str]) -> Grid:
    """The jobs the command line starts: composed once without its swept values, to read the sweeper."""
    parser = OverridesParser.create()
    given = parser.parse_overrides(args)
    plain = [o.input_line for o in given if not o.is_sweep_override()]
    base = compose(config_name="config", overrides=plain, return_hydra_config=True)
    sweeper = base.hydra.sweeper
    params = OmegaConf.to_container(sweeper.params, resolve=False) if sweeper.get("params") else {}
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        trials = int(sweeper.n_trials)
        axes = [(k, [str(v)]) for k, v in params.items()]
        return Grid(axes, [plain] * trials, "Optuna: hydra.sweeper.n_trials, each trial estimated at the base "
                    "config (the values it draws are not known before)", f"{trials} trials")
    # Hydra's BasicSweeper: the config's params, then the command line; a later value of a key replaces its axis
    lines = [f"{k}={v}" for k, v in params.items()] + list(args)
    axes_by_key: OrderedDict[str, list[str]] = OrderedDict()
    for override in parser.parse_overrides(lines):
        axes_by_key[override.get_key_element()] = _values(override)
    keys = list(axes_by_key)
    jobs = [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*axes_by_key.values())]
    swept = [(k, v) for k, v in axes_by_key.items() if len(v) > 1 or k in params]
    shape = " x ".join(str(len(v)) for _, v in swept if len(v) > 1) or "1"
    return Grid(swept, jobs, "hydra.sweeper.params of the basic sweeper, with the command line's values"
                if params else "the command line", shape)


# ---- one run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPlan:
    overrides: list[str]
    steps: Optional[int]
    steps_from: str  # "max_steps" | "estimate" | "unknown"
    evaluations: int
    questions: Optional[int]
    train_sec: Optional[float]  # None: no GPU estimate for this run, for the reason `no_gpu`
    recall_sec: Optional[float]
    no_gpu: str = ""

    @property
    def gpu_sec(self) -> Optional[float]:
        if self.train_sec is None or self.recall_sec is None:
            return None
        return self.train_sec + self.recall_sec


class DataCache:
    """Story, Q/A and narration built in memory once per distinct config (every seed its own)."""

    def __init__(self) -> None:
        self.built: dict[str, Any] = {}

    def get(self, nodes: list[DictConfig], build: Any) -> Any:
        """What `build()` returns for these config nodes (resolved against the whole config)."""
        key = json.dumps([OmegaConf.to_container(n, resolve=True) for n in nodes], sort_keys=True, default=str)
        if key not in self.built:
            self.built[key] = build()
        return self.built[key]


def _offline(cfg: DictConfig, groups: tuple[str, ...]) -> bool:
    """Whether these groups' backends build without an LLM (the plan calls none)."""
    return all(get_class(cfg[g]._target_).__module__ not in LLM_MODULES for g in groups if "_target_" in cfg[g])


def _story_qa(cfg: DictConfig, data: DataCache) -> tuple[Any, Any] | None:
    if not _offline(cfg, ("story", "qa")):
        return None
    story = data.get([cfg.story], lambda: instantiate(cfg.story).generate())
    qa = data.get([cfg.story, cfg.qa], lambda: instantiate(cfg.qa).build(story))
    return story, qa


def estimate_steps(cfg: DictConfig, data: DataCache) -> tuple[Optional[int], str]:
    """Steps from train.max_steps, or estimated from the data's size for train.exposures_per_fact."""
    dose = cfg.train.exposures_per_fact
    if dose is None:
        return int(cfg.train.max_steps), "max_steps"
    built = _story_qa(cfg, data)
    imported = not get_class(cfg.dataset._target_).trains_on_layout
    narrated = "narration" in cfg.layout  # layout=narration|mixed read the narration group
    if built is None or imported or (narrated and not _offline(cfg, ("narration",))):
        return None, "unknown"
    import torch  # the estimate replays the training stream's own packing

    from moshi_knowledge.codes.samples import ConversationCodes
    from moshi_knowledge.codes.stream import StreamSpec
    from moshi_knowledge.dataset.estimate import training_conversations
    from moshi_knowledge.train.exposures import FactIndex, steps_for_exposures, training_stream

    story, qa = built
    convs = training_conversations(qa, story, instantiate(cfg.layout), cfg.tts)
    samples = [ConversationCodes(c.id, torch.zeros(17, c.frames, dtype=torch.long), []) for c in convs]
    index = FactIndex.build(samples, {c.id: c.facts for c in convs})
    if index is None:
        return None, "unknown"
    spec = StreamSpec(delays=(0, 0, 1), card=0, text_card=0)  # moshi's delays are 0 and 1: a 2-frame packing gap
    train_cfg = instantiate(cfg.train)
    return steps_for_exposures(training_stream(samples, spec, train_cfg), index, dose, train_cfg.batch_size), "estimate"


def recall_points(cfg: DictConfig, steps: Optional[int]) -> int:
    """How many recall evaluations a run makes: at step 0, where an evaluation and recall_every meet, at the end."""
    stages = set(cfg.stages)
    if "eval" not in stages:
        return 0
    if "train" not in stages:
        return 1
    if steps is None:
        return 0
    every, evals = cfg.eval.recall_every, cfg.train.eval_every
    points = {steps} | ({0} if cfg.train.eval_at_start else set())
    if every > 0 and evals > 0:
        step = every * evals // _gcd(every, evals)
        points |= set(range(step, steps, step))
    return len(points)


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def questions(cfg: DictConfig, data: DataCache) -> Optional[int]:
    """Questions one recall evaluation scores: every item of eval.tiers, at most eval.max_per_tier each."""
    built = _story_qa(cfg, data)
    if built is None:
        return None
    cap = cfg.eval.max_per_tier
    sizes = [len(getattr(built[1], tier)) for tier in cfg.eval.tiers]
    return sum(n if cap is None else min(n, cap) for n in sizes)


def is_tiny(cfg: DictConfig) -> bool:
    return str(cfg.model._target_).endswith(".TinyModel")


def plan_run(overrides: list[str], data: DataCache, speeds: Optional[Speeds]) -> RunPlan:
    """One job: composed, checked as the run checks it, then estimated."""
    from moshi_knowledge.preflight import check_config

    cfg = compose(config_name="config", overrides=overrides)
    check_config(cfg)
    steps, source = estimate_steps(cfg, data)
    n_evals, n_questions = recall_points(cfg, steps), questions(cfg, data)
    why = _no_gpu_estimate(cfg, speeds, steps, n_questions if n_evals else 0)
    if why or speeds is None or steps is None:
        return RunPlan(overrides, steps, source, n_evals, n_questions, None, None, why)
    train_sec = steps * cfg.train.batch_size * cfg.train.seq_sec * FRAME_RATE / speeds.row_frames_per_s
    recall_sec = n_evals * (n_questions or 0) * speeds.sec_per_question
    return RunPlan(overrides, steps, source, n_evals, n_questions, train_sec, recall_sec)


def _no_gpu_estimate(cfg: DictConfig, speeds: Optional[Speeds], steps: Optional[int],
                     n_questions: Optional[int]) -> str:
    """Why this run gets no GPU estimate; empty when it gets one."""
    if speeds is None:
        return f"{BENCHMARK} is not in this checkout"
    if is_tiny(cfg):
        return "model=tiny is the CPU model: the benchmark measured only the full-size moshiko (7.7 B)"
    if steps is None or n_questions is None:
        return "its steps or questions are known only once its data is built"
    return ""


# ---- output ---------------------------------------------------------------------------------------------------


def _table(grid: Grid, runs: list[RunPlan]) -> list[str]:
    keys = [k for k, _ in grid.axes]
    head = ["run", *keys, "steps", "from", "recalls", "questions", "GPU h"]
    rows = []
    for i, run in enumerate(runs, start=1):
        chosen = dict(o.split("=", 1) for o in run.overrides)
        gpu = "n/a" if run.gpu_sec is None else f"{run.gpu_sec / 3600:.3f}"
        rows.append([str(i), *(chosen.get(k, "") for k in keys), "?" if run.steps is None else str(run.steps),
                     run.steps_from, str(run.evaluations), "?" if run.questions is None else str(run.questions), gpu])
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [head, *rows]]


def _steps_note(runs: list[RunPlan]) -> list[str]:
    notes = []
    if any(r.steps_from == "max_steps" for r in runs):
        notes.append("steps from max_steps: train.max_steps, as the run trains")
    if any(r.steps_from == "estimate" for r in runs):
        notes.append("steps from estimate: train.exposures_per_fact over the training conversations the data would "
                     "hold (story and Q/A built in memory, nothing written; speech lengths estimated from word counts "
                     "at the voices' rates, within about 5% on the default data); the run computes its exact steps "
                     "from the built data and logs them")
    if any(r.steps_from == "unknown" for r in runs):
        notes.append("steps unknown: train.exposures_per_fact needs the data's size, which this config's backends "
                     "(an LLM, or an imported dataset) give only when the data is built")
    return notes


def render(args: list[str], grid: Grid, runs: list[RunPlan], speeds: Optional[Speeds]) -> str:
    lines = [f"plan: {' '.join(args) or '(defaults)'}", f"grid ({grid.sweeper}): {grid.shape}"]
    lines += [f"  {k}: {', '.join(v)}" for k, v in grid.axes]
    lines += ["", *_table(grid, runs), "", f"runs: {len(runs)}"]
    known = [r.gpu_sec for r in runs if r.gpu_sec is not None]
    why = "; ".join(dict.fromkeys(r.no_gpu for r in runs if r.no_gpu))
    if speeds is None or not known:
        lines.append(f"GPU-hours: no estimate exists ({why})")
    else:
        train_h = sum(r.train_sec or 0.0 for r in runs) / 3600
        recall_h = sum(r.recall_sec or 0.0 for r in runs) / 3600
        missing = len(runs) - len(known)
        lines.append(f"GPU-hours (estimated): {sum(known) / 3600:.2f} = training {train_h:.2f} + recall {recall_h:.2f}"
                     + (f"; {missing} run(s) without an estimate ({why})" if missing else ""))
        lines.append(speeds.describe())
        lines.append("training: steps x train.batch_size x train.seq_sec x 12.5 frames/s / the row frames/s above; "
                     "recall: evaluations x questions x the seconds per question above")
        warmup, setup = speeds.overhead_sec
        lines.append(f"not counted: the data, model and tokenize stages, loading the model, and per run the compile "
                     f"warm-up ({warmup:.0f} s) and recall's set-up ({setup:.0f} s) of the benchmark: "
                     f"{len(known) * (warmup + setup) / 3600:.2f} h more for these runs")
    lines += _steps_note(runs)
    return "\n".join(lines)


def make_plan(args: list[str]) -> str:
    register()
    path = REPO / BENCHMARK
    speeds = read_speeds(path) if path.is_file() else None
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        grid = expand(args)
        data = DataCache()
        runs = [plan_run(job, data, speeds) for job in grid.jobs]
    return render(args, grid, runs, speeds)


def main(argv: list[str]) -> int:
    """Exit 0 with the plan; 2 with the error and its fix for a command line that cannot run."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    args = [a for a in argv if a not in ("-m", "--multirun")]
    flags = [a for a in args if a.startswith("-")]
    try:
        if flags:
            raise UserError(f"plan: {flags[0]} is not an override", "give overrides only (key=value), as to a run")
        print(make_plan(args))
    except UserError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"  fix: {err.fix}", file=sys.stderr)
        return 2
    except REFUSED as err:
        print(f"error: {str(err).strip()}", file=sys.stderr)
        print("  fix: correct the override (moshi-knowledge --help lists the groups, --cfg job shows the config)",
              file=sys.stderr)
        return 2
    return 0
