"""A Hydra callback that fits whichever Optuna sweeper a multirun uses to this app, before the sweeper is built.

The plugin minimises by default and stops a study at its first failed trial (`max_failure_rate: 0`, "No trials
are completed yet"), while this app's objective has its own direction (`objective.mode`) and a diverged or failed
job returns None, a failed trial. So, for `sweep=optuna_recall` and a plain `hydra/sweeper=optuna` alike, the
direction follows `objective.mode` and failed trials are tolerated, unless the command line sets either itself.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

OPTUNA_TARGET = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


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
