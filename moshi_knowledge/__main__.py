"""The Hydra app: `python -m moshi_knowledge [overrides]` (also the `moshi-knowledge` console script)."""

from __future__ import annotations

import gc
import logging
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from moshi_knowledge.config_schema import register
from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.keys import load_env_file
from moshi_knowledge.tracking.secrets import is_secret_override

log = logging.getLogger("moshi_knowledge")

register()

# Set when Hydra hands a composed config to `app`: an exit 1 before that is Hydra refusing the command line.
_JOB_STARTED = threading.Event()


@hydra.main(version_base="1.3", config_path="pkg://moshi_knowledge.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Returns the sweep objective (the final `objective.metric`), None for a run that did not complete."""
    _JOB_STARTED.set()
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
        sys.exit(2)
    log.info("run directory: %s", run_dir)
    return objective


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


def _refuse_secret_overrides(args: list[str]) -> None:
    """An API key on the command line would be saved by Hydra in the run's .hydra/ files before any code of ours
    runs: refuse it first, without echoing it."""
    for arg in args:
        if "=" in arg and not arg.startswith("-") and is_secret_override(arg):
            setting = arg.split("=", 1)[0].lstrip("+~")
            print(f"error: {setting}: a key or token is never a setting; the command line was refused before "
                  "anything was written", file=sys.stderr)
            print("  fix: export it (OPENAI_API_KEY, GEMINI_API_KEY, ...) or put it in ./.env", file=sys.stderr)
            sys.exit(2)


def main() -> None:
    """`moshi-knowledge report SWEEP_DIR` renders a sweep report; anything else is the Hydra app."""
    if sys.argv[1:2] == ["report"]:
        from moshi_knowledge.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    load_env_file()  # before the check: a .env key pasted into an override is then recognised as a secret
    _refuse_secret_overrides(sys.argv[1:])
    _JOB_STARTED.clear()
    try:
        app()
    except SystemExit as stop:
        # Hydra prints its composition error (unknown key, bad override, missing option) and exits 1: a user error
        if stop.code == 1 and not _JOB_STARTED.is_set():
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
