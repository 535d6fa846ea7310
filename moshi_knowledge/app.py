"""The Hydra app: its task function, one job of a run or a sweep.

This lives in an importable module, not in `__main__`: the joblib and submitit launchers pickle the task function
to run jobs in other processes, and cloudpickle pickles a function of `__main__` by value, with the globals it
reaches. `task` here is pickled by reference (its module and name), so a worker imports this module instead.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from moshi_knowledge.cli import completes_group_options
from moshi_knowledge.errors import UserError
from moshi_knowledge.quiet import silence_known_warnings

log = logging.getLogger("moshi_knowledge")

if not completes_group_options(sys.argv[1:], os.environ):  # a Tab after `lora=` lists files: < 0.5 s without them
    from moshi_knowledge.config_schema import register

    register()
silence_known_warnings()  # here, as every launcher's worker imports this module to run its job


def task(cfg: DictConfig) -> float | None:
    """One job. Returns the sweep objective (the final `objective.metric`), None for a run that did not complete.

    A user error (bad input, missing file) is logged with its fix and exits 2: every job of a sweep shares the
    mistake, so the whole command stops. Under joblib the job's SystemExit comes back to the launching process and
    ends it with the same code. submitit drops a job's exit code, so there the UserError is raised: Hydra reports
    the job failed (exit 1), ending with its message and fix.
    """
    # torch and the pipeline load here, not at import: shell completion and --help compose configs only
    from moshi_knowledge.experiment import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        objective = run_experiment(cfg, run_dir)
        _release_resources()
    except (UserError, InstantiationException) as exc:
        err = _user_error(exc)
        if err is None:
            raise
        log.error("%s", err.message)
        if err.fix:
            log.error("fix: %s", err.fix)
        if os.environ.get("SUBMITIT_EXECUTOR"):  # set in submitit's jobs, local and SLURM
            raise err from None
        sys.exit(2)
    log.info("run directory: %s", run_dir)
    return objective


app = hydra.main(version_base="1.3", config_path="pkg://moshi_knowledge.conf", config_name="config")(task)


def _release_resources() -> None:
    """The basic launcher runs every sweep job in this process: free the job's model, GPU peak stats and
    torchrun's process group (the next job joins a new one)."""
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError behind `exc`: Hydra wraps errors raised in a `_target_`'s constructor."""
    while exc is not None and not isinstance(exc, UserError):
        exc = exc.__cause__
    return exc
