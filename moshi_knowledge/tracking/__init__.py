"""Run tracking: metrics.jsonl + summary.json in every run directory, mirrored to W&B when `logger=wandb`.

`contract` names the keys of those files; `Tracker` writes them; `runs` reads them back for the report.
"""

from moshi_knowledge.tracking.contract import check_objective, objective_value, recall_key
from moshi_knowledge.tracking.identity import RunIdentity, run_identity_from_hydra
from moshi_knowledge.tracking.tracker import Tracker

__all__ = ["RunIdentity", "Tracker", "check_objective", "objective_value", "recall_key", "run_identity_from_hydra"]
