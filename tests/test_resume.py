"""Kills at every phase of a real run, then a rerun in the same directory: the directory never says more than is
true (`completed` only with every artifact published), and the rerun finishes with each step logged once. A sweep
resumed in its folder skips its finished jobs and continues the interrupted one from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import NO_RECALL, QUICK
from moshi_knowledge.cache import MARKER
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.tracking.files import read_metrics

pytestmark = pytest.mark.slow  # every test runs the app, most of them several times


class App:
    """`python -m moshi_knowledge` in the background, its merged output collected line by line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "moshi_knowledge", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal_when(self, ready: Callable[[], bool], sig: int = signal.SIGKILL, timeout: float = 300) -> None:
        """Send `sig` as soon as `ready()` holds (polled every 20 ms), then wait for the process to end."""
        end = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the run ended before the moment to stop it:\n{self.output[-3000:]}"
            assert time.monotonic() < end, f"timed out waiting to stop the run:\n{self.output[-3000:]}"
            time.sleep(0.02)
        self.proc.send_signal(sig)
        self.wait()

    def wait(self) -> int:
        rc = self.proc.wait(timeout=600)
        self.reader.join(timeout=10)
        return rc


def _said(app: App, text: str) -> Callable[[], bool]:
    return lambda: text in app.output


def _rows(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl")


def _logged(run: Path, step: int, key: str = "train/loss") -> Callable[[], bool]:
    return lambda: any(r["step"] == step and key in r for r in _rows(run))


def _train_steps(run: Path) -> list[int]:
    return [r["step"] for r in _rows(run) if "train/loss" in r]


def _tells_the_truth(run: Path) -> dict:
    """The summary says completed only with every artifact it points to published."""
    summary = read_json(run / "summary.json") if (run / "summary.json").exists() else {}
    if summary.get("status") == "completed":
        assert (run / "adapter" / "moshi" / "config.json").is_file()
        assert (run / "adapter" / "peft").is_dir()
    return summary


def test_a_run_killed_at_each_phase_reruns_clean(tiny_cache: Path, tmp_path: Path) -> None:
    """Killed while building a stage, after its first steps and while exporting (a kill between checkpoints: the
    sweep test below); each rerun (train.resume=true, the same directory) goes on, and a rerun of the finished run
    does nothing."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    shutil.copytree(tiny_cache, cache, ignore=shutil.ignore_patterns("*.lock"))
    shutil.rmtree(cache / "tokenize")  # built again by the first attempt, which is killed while building it
    args = [*QUICK, NO_RECALL, "train.max_steps=5", "train.ckpt_every=3", "logger=none", "train.resume=true",
            f"paths.cache_dir={cache}", f"hydra.run.dir={run}"]

    data = App(args, tmp_path)
    data.signal_when(_said(data, "stage model"))
    assert not list(cache.glob(f"tokenize/*/{MARKER}"))  # nothing that looks complete
    assert not (run / "summary.json").exists()

    first_steps = App(args, tmp_path)
    first_steps.signal_when(_logged(run, 2))
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").glob("step_*"))
    assert _tells_the_truth(run)["status"] == "running"

    export = App(args, tmp_path)  # killed while writing the adapter, past a checkpoint
    export.signal_when(lambda: (run / "adapter").exists())
    assert "resumed from step" not in export.output  # no checkpoint: a clean restart
    assert _train_steps(run) == [1, 2, 3, 4, 5]  # the killed attempt's steps 1-2 are not kept twice
    _tells_the_truth(run)

    final = App(args, tmp_path)
    assert final.wait() == 0, final.output[-3000:]
    assert "resumed from step 5 of 5" in final.output
    assert _train_steps(run) == [1, 2, 3, 4, 5]
    assert Counter(r["step"] for r in _rows(run) if "eval/loss" in r) == {0: 1, 2: 1, 4: 1, 5: 1}
    assert _tells_the_truth(run)["status"] == "completed"

    metrics, adapter = (run / "metrics.jsonl").read_bytes(), (run / "adapter" / "moshi" / "config.json").stat()
    again = App(args, tmp_path)
    assert again.wait() == 0, again.output[-3000:]
    assert "already ended completed" in again.output and "stage story" not in again.output
    assert (run / "metrics.jsonl").read_bytes() == metrics
    assert (run / "adapter" / "moshi" / "config.json").stat().st_mtime_ns == adapter.st_mtime_ns


def test_recall_killed_or_interrupted_is_measured_on_resume(tiny_cache: Path, tmp_path: Path) -> None:
    """SIGKILL inside the step-0 recall leaves no row; SIGTERM during an evaluation step's training ends the run
    `interrupted` before that step's evaluation, and the resumed run measures it, once."""
    run = tmp_path / "run"
    args = [*QUICK, "eval.tiers=[train,unseen_facts]", "objective.metric=recall/train/mc_acc", "logger=none",
            "train.resume=true", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"]

    recall = App(args, tmp_path)  # killed once the step-0 recall has started its first part
    recall.signal_when(lambda: "recall at step 0: " in recall.output)
    assert _rows(run) == [] and not (run / "predictions.jsonl").exists()
    assert _tells_the_truth(run)["status"] == "running"

    term = App(args, tmp_path)
    term.signal_when(_logged(run, 1), sig=signal.SIGTERM)
    summary = _tells_the_truth(run)
    assert summary["status"] == "interrupted", term.output[-3000:]
    assert not any(r["step"] == 2 for r in read_metrics(run / "predictions.jsonl"))
    assert not _logged(run, 2, "eval/loss")()

    resumed = App(args, tmp_path)
    assert resumed.wait() == 0, resumed.output[-3000:]
    assert "resumed from step 2 of 2" in resumed.output
    rows = _rows(run)
    assert _train_steps(run) == [1, 2]
    assert Counter(r["step"] for r in rows if "eval/loss" in r) == {0: 1, 2: 1}
    assert Counter(r["step"] for r in rows if "recall/train/mc_acc" in r) == {0: 1, 2: 1}
    assert {r["step"] for r in read_metrics(run / "predictions.jsonl")} == {0, 2}
    assert _tells_the_truth(run)["status"] == "completed"


def test_a_resumed_sweep_skips_finished_jobs_and_continues_the_interrupted_one(tiny_cache: Path,
                                                                               tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *QUICK, NO_RECALL, "train.max_steps=3", "train.ckpt_every=1", "train.lr=1e-3,2e-3", "logger=none",
            f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={sweep}"]
    first = App(args, tmp_path)
    first.signal_when(lambda: (sweep / "1" / "checkpoints" / "step_00000002").exists())
    assert read_json(sweep / "0" / "summary.json")["status"] == "completed"
    assert _tells_the_truth(sweep / "1")["status"] == "running"
    finished = (sweep / "0" / "metrics.jsonl").read_bytes()

    resumed = App([*args, "train.resume=true"], tmp_path)
    assert resumed.wait() == 0, resumed.output[-3000:]
    assert "already ended completed" in resumed.output
    assert "resumed from step 2 of 3" in resumed.output
    assert (sweep / "0" / "metrics.jsonl").read_bytes() == finished  # not measured or exported again
    assert _train_steps(sweep / "1") == [1, 2, 3]
    assert _tells_the_truth(sweep / "1")["status"] == "completed"
    assert json.loads((sweep / "1" / "summary.json").read_text())["step"] == 3


def test_an_optuna_study_resumed_on_its_storage_goes_on_in_its_folder(tiny_cache: Path, tmp_path: Path) -> None:
    """The second session asks a new trial (not the first one again) and writes job 1 beside job 0."""
    import optuna

    sweep, storage = tmp_path / "sweep", f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["sweep=optuna_recall", *QUICK, NO_RECALL, "train.max_steps=1", "objective.metric=eval/loss",
            "objective.mode=min", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}", "logger=none",
            "train.resume=true", f"paths.cache_dir={tiny_cache}", f"hydra.sweep.dir={sweep}"]
    for _ in range(2):
        done = App(args, tmp_path)
        assert done.wait() == 0, done.output[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists()) == ["0", "1"]
    trials = optuna.load_study(study_name="optuna_recall", storage=storage).trials
    assert len(trials) == 2 and trials[0].params != trials[1].params
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
