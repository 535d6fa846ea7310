"""Shared fixtures: composing the real config, and a small end-to-end dataset built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from moshi_knowledge.config_schema import register

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi on CPU: skip inductor (NOTES.md)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

register()

REPO = Path(__file__).resolve().parents[1]

# A small but complete pipeline config: few questions, so a full data build takes seconds.
SMALL = ["qa.n_train=12", "qa.n_eval=4", "qa.paraphrases=2", "stages=[story,qa,tts,dataset]", "logger=none"]


def compose_cfg(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def small_data_run(tmp_path_factory: pytest.TempPathFactory):
    """Runs story -> qa -> tts -> dataset once on the small config; returns (cfg, run_dir, cache entries)."""
    from moshi_knowledge.stages import run_stages

    root = tmp_path_factory.mktemp("small_run")
    cfg = compose_cfg([*SMALL, f"paths.cache_dir={root / 'cache'}"])
    run_dir = root / "run"
    entries = run_stages(cfg, run_dir)
    return cfg, run_dir, entries
