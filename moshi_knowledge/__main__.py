"""The Hydra app: `python -m moshi_knowledge [overrides]` (also the `moshi-knowledge` console script)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from moshi_knowledge.config_schema import register
from moshi_knowledge.errors import UserError
from moshi_knowledge.stages import run_stages

log = logging.getLogger("moshi_knowledge")

register()


@hydra.main(version_base="1.3", config_path="pkg://moshi_knowledge.conf", config_name="config")
def app(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_stages(cfg, run_dir)
    except UserError as err:
        log.error("%s", err.message)
        if err.fix:
            log.error("fix: %s", err.fix)
        sys.exit(2)
    log.info("run directory: %s", run_dir)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
