"""`moshi-knowledge plan` (moshi_knowledge/plan.py) and the study it plans, sweep=injection, run for real at test
sizes: the grid, the run count, the GPU-hours from the committed benchmark, the errors, and each job's dose."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, TINY_RUN, compose_cfg, run_app
from moshi_knowledge.dataset.estimate import training_conversations
from moshi_knowledge.dataset.facts import CONVERSATION_FACTS
from moshi_knowledge.dataset.format import read_manifest
from moshi_knowledge.plan import expand, read_speeds
from moshi_knowledge.preflight import check_config
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.study import STUDY_PLOT
from moshi_knowledge.sweep_report import main as report_main
from moshi_knowledge.tracking.contract import EXPOSURES_PER_FACT, TRAINED_FACTS
from moshi_knowledge.world.schema import Story

STUDY = yaml.safe_load((REPO / "conf" / "sweep" / "injection.yaml").read_text())["hydra"]["sweeper"]["params"]
STUDY_RUNS = math.prod(len(str(v).split(",")) for v in STUDY.values())


def test_the_study_crosses_three_regimes_a_log_grid_of_doses_and_three_seeds() -> None:
    assert STUDY["layout"] == "dialogue,narration,mixed" and STUDY["seed"] == "0,1,2"
    doses = [float(d) for d in str(STUDY["train.exposures_per_fact"]).split(",")]
    ratios = [b / a for a, b in zip(doses, doses[1:])]
    assert len(doses) >= 3 and all(2.5 <= r <= 4 for r in ratios)  # about evenly spaced on a log scale
    assert STUDY_RUNS == 3 * len(doses) * 3


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local", "submitit_slurm"])
@pytest.mark.parametrize("experiment", [None, "moshiko_h200"])
def test_the_study_composes_on_every_launcher_and_keeps_its_regime_settings(launcher: str, experiment: str | None
                                                                             ) -> None:
    """The regime settings hold under any experiment (the command line's experiment replaces regime_qa)."""
    job = ["sweep=injection", f"launcher={launcher}", "layout=mixed", "train.exposures_per_fact=3", "seed=1"]
    cfg = compose_cfg([*job, *([f"experiment={experiment}"] if experiment else [])])
    check_config(cfg)
    assert cfg.qa.heldout_share == 0.5 and cfg.narration.restatements == 3 and cfg.narration.shuffle
    assert cfg.train.max_steps is None and cfg.train.exposures_per_fact == 3 and cfg.train.warmup_steps == 0
    assert cfg.model._target_.endswith("HubModel" if experiment else "TinyModel")
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        hydra_cfg = compose(config_name="config", overrides=job, return_hydra_config=True).hydra
    assert launcher.split("_")[-1] in hydra_cfg.launcher._target_.lower() and str(hydra_cfg.mode).endswith("MULTIRUN")


def test_the_grid_is_expanded_as_the_basic_sweeper_expands_it() -> None:
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        full = expand(["sweep=injection"])
        narrowed = expand(["sweep=injection", "seed=0", "train.exposures_per_fact=choice(1,3)", "layout=narration"])
        optuna = expand(["sweep=optuna_recall"])
        single = expand(["experiment=moshiko_h200"])
        adhoc = expand(["experiment=moshiko_h200", "lora.rank=8,16", "train.lr=1e-4,1e-3"])
    assert single.jobs == [["experiment=moshiko_h200"]] and single.axes == []
    assert len(adhoc.jobs) == 4 and [k for k, _ in adhoc.axes] == ["lora.rank", "train.lr"]
    assert len(full.jobs) == STUDY_RUNS and [k for k, _ in full.axes] == list(STUDY)
    assert len(narrowed.jobs) == 2  # a value given on the command line replaces the sweep's axis
    assert {j for job in narrowed.jobs for j in job} >= {"seed=0", "layout=narration", "train.exposures_per_fact=3"}
    assert len(optuna.jobs) == 20 and "Optuna" in optuna.sweeper


def test_the_speeds_are_the_committed_benchmark_s() -> None:
    speeds = read_speeds(REPO / "benchmarks" / "results" / "full_scale.json")
    data = json.loads((REPO / "benchmarks" / "results" / "full_scale.json").read_text())["app"]
    assert speeds.row_frames_per_s == pytest.approx(data["useful_frames_per_s"] / data["useful_fraction"])
    # 16 rows of 100 s at that speed take the benchmark's own step time
    assert 16 * 100 * 12.5 / speeds.row_frames_per_s == pytest.approx(data["step_sec"], rel=0.05)
    assert speeds.questions == 330 and 0.005 < speeds.sec_per_question < 0.1


@pytest.mark.slow
def test_plan_of_the_study_on_moshiko_counts_its_runs_and_gpu_hours(tmp_path: Path) -> None:
    done = run_app(["plan", "sweep=injection", "experiment=moshiko_h200"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"runs: {STUDY_RUNS}\n" in out and "layout: dialogue, narration, mixed" in out
    hours = re.search(r"GPU-hours \(estimated\): ([0-9.]+) = training ([0-9.]+) \+ recall ([0-9.]+)", out)
    assert hours and float(hours[1]) > 0 and float(hours[2]) > 0 and float(hours[3]) > 0, out
    assert "benchmarks/results/full_scale.json" in out and "row frames/s" in out and "s per question" in out
    assert "steps from estimate" in out  # the dose's steps come from the data's size, and it says so
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow
def test_plan_on_the_tiny_default_prints_the_grid_and_says_no_estimate_exists(tmp_path: Path) -> None:
    done = run_app(["plan", "sweep=injection"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert f"runs: {STUDY_RUNS}\n" in out and "train.exposures_per_fact: 1, 3, 10, 30" in out
    assert "GPU-hours: no estimate exists (model=tiny is the CPU model" in out
    table = [line for line in out.splitlines() if re.match(r"^\d+\s+(dialogue|narration|mixed)\s", line)]
    assert len(table) == STUDY_RUNS and all(line.split()[4].isdigit() for line in table)  # every run's steps


@pytest.mark.parametrize(("args", "named"), [
    (["train.nope=1"], "train.nope"),
    (["sweep=nope"], "sweep/nope"),
    (["sweep=injection", "train.max_steps=10"], "train.max_steps=10 and train.exposures_per_fact"),
    (["--bogus"], "--bogus"),
])
def test_plan_of_a_bad_command_line_exits_2(tmp_path: Path, args: list[str], named: str) -> None:
    done = run_app(["plan", *args], cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.startswith("error: ") and named in done.stderr and "fix: " in done.stderr
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []


# ---- the study at test sizes ------------------------------------------------------------------------------------

# TINY_RUN without its length (the sweep sets the dose and no warmup); two eval questions, which qa.heldout_share=0.5
# leaves room for in a world of 8 training facts; multiple-choice recall of the study's tiers at the start and the
# end only, so that the three regimes' jobs take about two minutes and the report can read the study
STUDY_RUN = [o for o in TINY_RUN if not o.startswith(("train.max_steps=", "train.warmup_steps=", "qa.n_eval="))]
STUDY_RUN += ["qa.n_eval=2", "eval.generate=false", "eval.recall_every=0",
              "eval.tiers=[train,heldout_facts,unseen_facts]", "objective.metric=recall/heldout_facts/mc_acc"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    done = run_app(["-m", "sweep=injection", "train.exposures_per_fact=1", "seed=0", *STUDY_RUN, "logger=none",
                    f"paths.cache_dir={root / 'cache'}", f"hydra.sweep.dir={root / 'sweep'}"], cwd=root, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return root / "sweep"


def _statements(run: Path) -> Counter:
    facts = json.loads((run / "dataset" / CONVERSATION_FACTS).read_text())["conversations"]
    return Counter(f for cid, stated in facts.items() if cid.startswith("train") for f in stated)


@pytest.mark.slow
def test_each_study_job_trains_its_dose_and_records_it(study: Path) -> None:
    runs = sorted(p.parent for p in study.rglob("summary.json"))
    layouts = [OmegaConf.load(run / ".hydra" / "config.yaml").layout._target_.rsplit(".", 1)[1] for run in runs]
    assert layouts == ["DialogueLayout", "NarrationLayout", "MixedLayout"]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed", run
        assert summary[EXPOSURES_PER_FACT] >= 1 and summary[TRAINED_FACTS] == len(_statements(run))


@pytest.mark.slow
def test_the_study_report_gives_one_verdict_per_regime(study: Path) -> None:
    """`moshi-knowledge report` on the study's sweep: the Study section, a verdict line for each of the three regimes
    (one seed: no test across seeds, so no tier can be called above the null) and the dose-response figure."""
    assert report_main([str(study)]) == 0
    text = (study / "report.md").read_text()
    assert "## Study" in text and (study / STUDY_PLOT).is_file()
    section = text.split("## Study", 1)[1].split("\n## ", 1)[0]
    verdicts = [line for line in section.splitlines() if line.startswith("- **")]
    assert [line.split("**")[1] for line in verdicts] == ["dialogue", "narration", "mixed"]
    assert all("above the null on" not in line for line in verdicts)


@pytest.mark.slow
def test_each_regime_states_the_facts_it_trains_as_often_as_its_augmentation_says(study: Path) -> None:
    """dialogue: a training item's fact once per phrasing; narration: every narrated fact in 3 restatements (the
    sweep's); mixed: both."""
    dialogue, narration, mixed = sorted(p.parent for p in study.rglob("summary.json"))
    qa = json.loads((dialogue / "qa" / "qa.json").read_text())
    asked = Counter({item["fact_ids"][0]: len(item["phrasings"]) for item in qa["train"]})
    unseen = {f for item in qa["unseen_facts"] for f in item["fact_ids"]}
    narrated = {f for t in ("train", "heldout_facts", "eval") for item in qa[t] for f in item["fact_ids"]} - unseen
    assert qa["heldout_facts"] and _statements(dialogue) == asked
    assert _statements(narration) == Counter({f: 3 for f in narrated})
    assert _statements(mixed) == Counter({f: 3 for f in narrated}) + asked


@pytest.mark.slow
def test_the_plan_s_estimate_of_each_regime_s_data_is_close_to_what_was_built(study: Path) -> None:
    """The conversations the plan estimates from text: the same number, the same facts, lengths within 10%."""
    for run in sorted(p.parent for p in study.rglob("summary.json")):
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
        estimated = training_conversations(QASet.load(run / "qa"), Story.load(run / "story"),
                                           instantiate(cfg.layout), cfg.tts)
        built = read_manifest(run / "dataset" / "train.jsonl")
        assert len(estimated) == len(built), run
        assert Counter(f for c in estimated for f in c.facts) == _statements(run)
        seconds = sum(c.frames for c in estimated) / 12.5
        assert seconds == pytest.approx(sum(r["duration"] for r in built), rel=0.10), run
