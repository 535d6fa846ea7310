"""Who a run is, for the dashboard: group, name, tags and job type, read from Hydra when it is running.

In a multirun every job of one sweep shares the sweep directory's name as its group, its name is built from the
job's own overrides, and its tags are the config-group choices (`story:procedural`, `nan_guard:skip`), so the
dashboard can group, filter and compare without anyone typing names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moshi_knowledge.tracking.secrets import is_secret_override

# Overrides that say where or how a job ran, not what it is: left out of run names.
_NAME_SKIP_ROOTS = frozenset({"hydra", "sweep", "launcher", "paths"})
_MAX_TAG_LEN = 64  # W&B rejects longer tags


@dataclass(frozen=True)
class RunIdentity:
    name: str
    group: str
    job_type: str = "run"
    tags: tuple[str, ...] = ()

    @classmethod
    def standalone(cls, name: str) -> RunIdentity:
        """The identity of a run started without Hydra: its own group."""
        return cls(name=name, group=name)


def run_name(overrides: list[str] | tuple[str, ...], job_num: int | None, fallback: str) -> str:
    """`lora.rank=8,train.lr=0.001` (prefixed `3:` with the job number in a multirun); `fallback` if none apply."""
    kept = [o for o in overrides if _describes_run(o)]
    body = ",".join(kept) or fallback
    return body if job_num is None else f"{job_num}:{body}"


def choice_tags(choices: dict[str, str | None]) -> tuple[str, ...]:
    """`group:option` for each selected config-group option, Hydra's own groups left out, except that `launcher`
    names the launcher that ran the job (`hydra/launcher`), however it was picked (`launcher=joblib` or
    `hydra/launcher=joblib`)."""
    chosen = {g: o for g, o in choices.items() if not g.startswith("hydra/")}
    if choices.get("hydra/launcher"):
        chosen["launcher"] = choices["hydra/launcher"]
    tags = (f"{g}:{o}" for g, o in chosen.items() if o is not None)
    return tuple(t[:_MAX_TAG_LEN] for t in tags)


def run_identity_from_hydra(fallback_name: str = "run") -> RunIdentity:
    """The running Hydra job's identity; outside Hydra (tests, notebooks) a standalone one named `fallback_name`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return RunIdentity.standalone(fallback_name)
    hc = HydraConfig.get()
    overrides = tuple(hc.overrides.task)
    choices = dict(hc.runtime.choices)
    output_name = Path(hc.runtime.output_dir).name if hc.runtime.output_dir else fallback_name
    multirun = hc.mode == RunMode.MULTIRUN
    name = run_name(overrides, hc.job.num if multirun else None, output_name)
    return RunIdentity(
        name=name,
        group=Path(hc.sweep.dir).name if multirun else name,
        job_type="sweep" if multirun else "run",
        tags=choice_tags(choices),
    )


def _describes_run(override: str) -> bool:
    root = override.lstrip("+~").split("=", 1)[0].split(".", 1)[0].split("/", 1)[0]
    return root not in _NAME_SKIP_ROOTS and not is_secret_override(override)
