"""Real Hydra multiruns of the app on the tiny model: W&B runs, statuses, Optuna, the report, no leaked keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import NO_RECALL, QUICK, run_app
from moshi_knowledge.sweep_report import main as report_main

CANARY = "sk-canary-0123456789abcdefghijklmnop"


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _runs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.rglob("summary.json"))


@pytest.fixture(scope="module")
def grid(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`-m lora.rank=2,4 train.lr=1e-3,100` with nan_guard=halt and W&B offline: lr=100 really diverges."""
    root = tmp_path_factory.mktemp("grid")
    done = run_app(["-m", *QUICK, "lora.rank=2,4", "train.lr=1e-3,100", "nan_guard=halt", "logger=wandb",
                    f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={root / 'sweep'}"],
                   cwd=root, env={"OPENAI_API_KEY": CANARY, "WANDB_API_KEY": CANARY[::-1]})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return root / "sweep"


@pytest.fixture(scope="module")
def lr_pair(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`-m train.lr=1e-3,2e-3` on the basic launcher (both jobs in one process), then job 1's config run alone."""
    root = tmp_path_factory.mktemp("lr_pair")
    args = [*QUICK, "train.max_steps=3", NO_RECALL, "logger=none", f"paths.cache_dir={tiny_cache}"]
    sweep = run_app(["-m", *args, "train.lr=1e-3,2e-3", f"hydra.sweep.dir={root / 'sweep'}"], cwd=root)
    assert sweep.returncode == 0, sweep.stdout[-4000:] + sweep.stderr[-4000:]
    alone = run_app([*args, "train.lr=2e-3", f"hydra.run.dir={root / 'alone'}"], cwd=root)
    assert alone.returncode == 0, alone.stdout[-4000:] + alone.stderr[-4000:]
    return root / "sweep" / "1", root / "alone"


@pytest.mark.slow
def test_a_sweep_job_starts_from_the_same_adapter_and_trains_as_it_does_alone(lr_pair: tuple[Path, Path]) -> None:
    """The LoRA initialisation is seeded: job 1 does not inherit the random state job 0 left in the process."""
    job, alone = lr_pair
    losses = [[(r["step"], r.get("train/loss"), r.get("eval/loss")) for r in _rows(run)] for run in (job, alone)]
    assert len(losses[0]) >= 4 and losses[0] == losses[1]  # exact equality, step by step
    adapter = Path("adapter/moshi/lora.safetensors")
    assert (job / adapter).read_bytes() == (alone / adapter).read_bytes()


@pytest.mark.slow
def test_stages_without_eval_measure_no_recall(lr_pair: tuple[Path, Path]) -> None:
    for run in lr_pair:
        assert not (run / "predictions.jsonl").exists()
        keys = {k for row in _rows(run) for k in row} | set(json.loads((run / "summary.json").read_text()))
        assert "eval/loss" in keys and not [k for k in keys if k.startswith("recall/")], sorted(keys)


@pytest.mark.slow
def test_multirun_gives_one_complete_run_dir_and_wandb_run_per_job(grid: Path) -> None:
    runs = _runs(grid)
    assert len(runs) == 4
    ids = set()
    for run in runs:
        assert (run / "metrics.jsonl").stat().st_size > 0
        offline = list((run / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, run
        ids.add(offline[0].name.rsplit("-", 1)[-1])
        assert json.loads((run / "summary.json").read_text())["wandb/id"] == offline[0].name.rsplit("-", 1)[-1]
    assert len(ids) == 4


@pytest.mark.slow
def test_halt_ends_the_diverging_jobs_as_diverged_and_the_others_complete(grid: Path) -> None:
    by_lr = {}
    for run in _runs(grid):
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        status = json.loads((run / "summary.json").read_text())["status"]
        by_lr.setdefault("100" if "train.lr=100" in overrides else "1e-3", set()).add(status)
    assert by_lr == {"1e-3": {"completed"}, "100": {"diverged"}}


@pytest.mark.slow
def test_report_renders_the_table_and_plots_with_the_right_statuses(grid: Path, capsys) -> None:
    assert report_main([str(grid)]) == 0
    table = (grid / "report.md").read_text()
    assert table.count("completed") >= 2 and table.count("diverged") >= 2
    for png in ("loss_curves.png",):
        assert (grid / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diverged" in capsys.readouterr().out


def test_report_subcommand_of_the_console_script_names_a_bad_dir(tmp_path: Path) -> None:
    done = run_app(["report", str(tmp_path)], cwd=tmp_path)
    assert done.returncode == 2 and "no runs under" in done.stderr


@pytest.mark.slow
def test_no_api_key_reaches_any_file_of_the_sweep(grid: Path) -> None:
    leaked = [p for p in grid.rglob("*") if p.is_file()
              and (CANARY.encode() in p.read_bytes() or CANARY[::-1].encode() in p.read_bytes())]
    assert not leaked


@pytest.mark.slow
def test_optuna_sweep_with_a_diverging_trial_completes(tiny_cache: Path, tmp_path: Path) -> None:
    done = run_app([*QUICK, "sweep=optuna_recall", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=1",
                    "train.lr=choice(1e-3,100)", "lora.rank=choice(2)", "train.audio_drop=choice(0.5)",
                    "nan_guard=halt", "logger=none", "objective.metric=recall/train/mc_acc",
                    f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    statuses = [json.loads((r / "summary.json").read_text())["status"] for r in _runs(tmp_path / "sweep")]
    assert len(statuses) == 3 and "diverged" in statuses and "completed" in statuses
    assert (tmp_path / "sweep" / "optimization_results.yaml").is_file()


def _strict(text: str) -> list[dict]:
    """JSON lines parsed the strict way: NaN or Infinity in the file is an error."""
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")
    return [json.loads(line, parse_constant=reject) for line in text.splitlines()]


@pytest.mark.slow
def test_nan_guard_off_ends_a_job_as_diverged_and_the_sweep_goes_on(tiny_cache: Path, tmp_path: Path) -> None:
    """With the guard off an injected NaN poisons the weights: that job ends `diverged` with its non-finite figures
    written as null and its recall counted wrong; the skip job completes; the multirun exits 0."""
    done = run_app(["-m", *QUICK, "nan_guard=off,skip", "debug.inject_nonfinite_at=[2]", "logger=none",
                    f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    by_guard = {}
    for run in _runs(tmp_path / "sweep"):
        guard = "off" if "nan_guard=off" in (run / ".hydra" / "overrides.yaml").read_text() else "skip"
        by_guard[guard] = run
    summary = json.loads((by_guard["off"] / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["train/loss"] is None
    assert summary["recall/train/n_nonfinite"] == summary["recall/train/n"] and summary["recall/train/mc_acc"] == 0
    _strict((by_guard["off"] / "metrics.jsonl").read_text())
    final = [r for r in _strict((by_guard["off"] / "predictions.jsonl").read_text()) if r["step"] == 2]
    assert final and all(not r["finite"] and not r["mc_correct"] for r in final)
    assert all(c["score"] is None for r in final for c in r["candidates"])
    assert json.loads((by_guard["skip"] / "summary.json").read_text())["status"] == "completed"
