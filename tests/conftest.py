"""Shared fixtures: composing the real config, and a small end-to-end dataset built once per session."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from moshi_knowledge.config_schema import register

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi on CPU: skip inductor (docs/moshi.md)
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker and per run it starts, or the
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # workers' torch thread pools contend for the same cores
# W&B stays offline and in each run directory whatever the shell exports (the sink follows WANDB_* variables)
os.environ["WANDB_MODE"] = "offline"
for _var in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_DIR"):
    os.environ.pop(_var, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

register()

REPO = Path(__file__).resolve().parents[1]

# A small but complete pipeline config: few questions, so a full data build takes seconds.
SMALL = ["qa.n_train=12", "qa.n_eval=4", "qa.n_unseen=4", "qa.n_per_cause=3", "qa.paraphrases=2",
         "stages=[story,qa,tts,dataset]", "logger=none"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most slow tests run first: `make test`'s two workers take a file at a time, in this order
    (`--no-loadscope-reorder`), so the long files start early and the two workers end together on short ones,
    instead of one worker finishing a long file alone."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


def compose_cfg(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def story():
    """The default procedural kingdom (seed 0)."""
    from moshi_knowledge.world.procedural import ProceduralStory

    return ProceduralStory(seed=0).generate()


@pytest.fixture(scope="session")
def world(story):
    assert story.world is not None
    return story.world


@pytest.fixture(scope="session")
def small_data_run(tmp_path_factory: pytest.TempPathFactory):
    """Runs story -> qa -> tts -> dataset once on the small config; returns (cfg, run_dir, cache entries)."""
    from moshi_knowledge.stages import run_stages

    root = tmp_path_factory.mktemp("small_run")
    cfg = compose_cfg([*SMALL, f"paths.cache_dir={root / 'cache'}"])
    run_dir = root / "run"
    entries = run_stages(cfg, run_dir)
    return cfg, run_dir, entries


# A whole experiment in seconds: few questions, short conversations, a handful of steps, a small Mimi fit.
# No retain tier: its 30 questions would triple every tiny run's recall time (tests/test_retain.py covers it).
TINY_RUN = [
    "qa.retain=false", "qa.n_train=8", "qa.n_eval=3", "qa.n_unseen=3", "qa.n_per_cause=2", "qa.paraphrases=2",
    "layout.max_duration_sec=20",
    "model.fit_seconds=30",
    "train.max_steps=4", "train.batch_size=2", "train.seq_sec=24", "train.eval_every=2", "train.ckpt_every=2",
    "train.warmup_steps=1", "eval.recall_every=2", "eval.max_answer_sec=1.0", "eval.voice=false",
]

# TINY_RUN trimmed for sweeps of many jobs: two steps, no generation; NO_RECALL trains without the eval stage.
QUICK = [*TINY_RUN, "train.max_steps=2", "eval.generate=false", "eval.voice=false", "lora=all", "lora.rank=2"]
NO_RECALL = "stages=[story,qa,tts,dataset,model,tokenize,train]"


def run_app(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    """The app as a user runs it: a subprocess of `python -m moshi_knowledge`."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "moshi_knowledge", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage cache holding the data, model and tokenize stages of TINY_RUN, built once for the session."""
    from moshi_knowledge.stages import run_stages

    root = tmp_path_factory.mktemp("tiny_cache")
    cfg = compose_cfg([*TINY_RUN, f"paths.cache_dir={root / 'cache'}", "logger=none"])
    run_stages(cfg, root / "warmup")
    return root / "cache"


def refused_in_process(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> str:
    """Run the app in process with `argv`; assert it stops with exit 2, no traceback and nothing in the cache;
    return what it printed and logged."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["moshi-knowledge", *argv, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    from moshi_knowledge.__main__ import main

    with pytest.raises(SystemExit) as stop:
        main()
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert stop.value.code == 2, output
    assert "Traceback" not in output and "fix:" in output, output
    assert not (tmp_path / "cache").exists()  # no stage ran, no LLM reply was cached
    return output
