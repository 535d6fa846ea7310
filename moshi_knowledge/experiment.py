"""One run of the experiment: check every setting, run the cached stages, then train and measure recall in the
run directory (recipe.RunRecipe).

Training and evaluation are not cached: their results are the run. Everything they write (metrics.jsonl,
summary.json, predictions.jsonl, checkpoints/, adapter/) lands in the run directory, and the tracker mirrors it
to W&B. A diverged run ends normally with its status, so a sweep carries on.

The recipe (peft, recall, the training loop: seconds of imports) is imported only once the checks have passed and
a stage needs it, so a mistyped setting or a text-only run (`stages=[story,qa]`) does not wait for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import explain_os_errors, read_json
from moshi_knowledge.preflight import check_config, check_weights
from moshi_knowledge.stages import RUN_STAGES, run_stages
from moshi_knowledge.tracking.contract import COMPLETED, DIVERGED, STATUS, SUMMARY_FILE, objective_value
from moshi_knowledge.tracking.identity import run_identity_from_hydra
from moshi_knowledge.tracking.tracker import Tracker

log = logging.getLogger(__name__)

CONFIG_HASH = "config_hash"  # summary.json: the run's config (where it runs aside), so a resumed sweep knows its jobs
FINAL = (COMPLETED, DIVERGED)  # a run that ended so is not run again by train.resume=true


def run_experiment(cfg: DictConfig, run_dir: Path) -> float | None:
    """Check every setting, then run the stages listed in `cfg.stages`; return the sweep objective (None unless
    completed).

    Under torchrun every rank trains; only rank 0 tracks, evaluates recall and writes the run's files. A full disk
    or a folder we may not write becomes a UserError naming it (status `failed` with that sentence).
    With `train.resume=true`, a run directory whose run already ended (a resumed sweep's finished job) with this
    config is not run again: its objective is read back.
    """
    with explain_os_errors():
        check_config(cfg)
        check_weights(cfg)
        wanted = [s for s in cfg.stages if s in RUN_STAGES]
        done = _finished(cfg, run_dir) if wanted else None
        if done is not None:
            log.info("this job already ended %s in %s; skipped (train.resume=false runs it again)",
                     done[STATUS], run_dir)
            return objective_value(done, cfg.objective.metric)
        entries = run_stages(cfg, run_dir)
        if not wanted:
            return None
        from moshi_knowledge.recipe import RunRecipe
        from moshi_knowledge.train.distributed import init_from_env

        dist, device = init_from_env()
        if not dist.is_main:
            RunRecipe(cfg, entries, run_dir, wanted, device, tracker=None).run()
            return None
        with Tracker(cfg.logger, run_dir, cfg, run_identity_from_hydra(run_dir.name)) as tracker:
            with explain_os_errors():  # inside the Tracker too, so summary.json says `failed` with the sentence
                tracker.summary({CONFIG_HASH: config_hash(cfg)})
                RunRecipe(cfg, entries, run_dir, wanted, device, tracker).run()
            return objective_value(tracker.values, cfg.objective.metric)


def config_hash(cfg: DictConfig) -> str:
    """What makes a run this run: the resolved config without where it runs or logs and without `train.resume`."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for node in ("paths", "logger"):
        config.pop(node, None)
    config.get("train", {}).pop("resume", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(cfg: DictConfig, run_dir: Path) -> Mapping[str, Any] | None:
    """summary.json of a run that already ended in `run_dir` with this config, when `train.resume=true`."""
    path = run_dir / SUMMARY_FILE
    if not cfg.train.resume or not path.is_file():
        return None
    try:
        summary = read_json(path)
    except ValueError:  # a torn summary is no proof of a finished run
        return None
    if not isinstance(summary, dict) or summary.get(STATUS) not in FINAL:
        return None
    if summary.get(CONFIG_HASH) != config_hash(cfg):
        raise UserError(f"{run_dir} holds a finished run of another config, and train.resume=true would continue it",
                        "resume a sweep with the same command line it was started with, or give a new "
                        "hydra.sweep.dir / hydra.run.dir")
    return summary
