"""A Hydra callback that fits whichever Optuna sweeper a multirun uses to this app, before the sweeper is built.

The plugin minimises by default and stops a study at its first failed trial (`max_failure_rate: 0`, "No trials
are completed yet"), while this app's objective has its own direction (`objective.mode`) and a diverged or failed
job returns None, a failed trial. So, for `sweep=optuna_recall` and a plain `hydra/sweeper=optuna` alike, the
direction follows `objective.mode` and failed trials are tolerated, unless the command line sets either itself.

A study resumed on its storage (`hydra.sweeper.storage=sqlite:///...` and the same `study_name` and
`hydra.sweep.dir`) continues: the plugin numbers a new session's jobs from 0 again and re-seeds its sampler, which
would overwrite the first jobs' folders and propose the very same first trial. So the seed moves on by the
study's number of trials, and the job folders are numbered after the ones it already has.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

OPTUNA_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
JOB_NUM = "${hydra.job.num}"
# the job folder of a resumed study: `${mk_after:${hydra.job.num},N}`. Registered on import, which also happens in
# a joblib or submitit worker when it unpickles this callback with the job's Hydra context.
OmegaConf.register_new_resolver("mk_after", lambda num, offset: int(num) + int(offset), replace=True)


class SweeperDefaults(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if sweeper.get("_target_") != OPTUNA_TARGET:
            return
        given = {o.split("=", 1)[0].lstrip("+~") for o in config.hydra.overrides.hydra}
        with read_write(sweeper), open_dict(sweeper):
            if "hydra.sweeper.direction" not in given:
                sweeper.direction = f"{config.objective.mode}imize"  # max -> maximize, min -> minimize
            if "hydra.sweeper.max_failure_rate" not in given:
                sweeper.max_failure_rate = 1.0
            done = _trials_so_far(sweeper)
            if done and sweeper.sampler.get("seed") is not None and "hydra.sweeper.sampler.seed" not in given:
                sweeper.sampler.seed = int(sweeper.sampler.seed) + done
        if done and OmegaConf.to_container(config.hydra.sweep)["subdir"] == JOB_NUM:  # the default numbering
            # each job's config is composed again from the hydra overrides, so the new numbering goes there
            subdir = f"${{mk_after:{JOB_NUM},{done}}}"
            with read_write(config.hydra):
                config.hydra.sweep.subdir = subdir
                config.hydra.overrides.hydra.append(f"hydra.sweep.subdir='{subdir}'")  # quoted: its comma


def _trials_so_far(sweeper: DictConfig) -> int:
    """How many trials the study already holds in its storage (0 without a storage, a name, or such a study)."""
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        return 0
    import optuna  # only for a sweep that names a storage

    try:
        return len(optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage).trials)
    except KeyError:  # no study of that name yet
        return 0
