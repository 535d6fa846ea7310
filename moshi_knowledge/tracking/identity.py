"""Who a run is, for the dashboard: group, name, tags and job type, read from Hydra when it is running.

In a multirun every job of one sweep shares the sweep directory's name as its group, its name holds only what
varies between the jobs (the swept overrides: `3:lora.rank=8,train.lr=0.001`), and its tags are the config-group
choices (`story:procedural`, `nan_guard:skip`), so the dashboard can group, filter and compare without anyone typing
names. A single run is named after its experiment and its run directory (`demo-14-03-22`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from moshi_knowledge.tracking.secrets import is_secret_override

# Overrides that say where or how a job ran, not what it is: left out of run names.
_NAME_SKIP_ROOTS = frozenset({"hydra", "sweep", "launcher", "paths"})
# Config groups that are not choices of the user's: Hydra's own and the schema behind each group's options.
_TAG_SKIP_PREFIXES = ("hydra/", "schema/")
_MAX_TAG_LEN = 64  # W&B rejects longer tags
_MAX_NAME_LEN = 80  # a name reads whole in W&B's run list (W&B cuts at 128)


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


def run_name(overrides: Iterable[str], job_num: int | None, fallback: str,
             swept: Collection[str] | None = None) -> str:
    """`lora.rank=8,train.lr=0.001` (prefixed `3:` with the job number in a multirun); `fallback` if none apply.

    `swept`: the keys a sweep varies; only their overrides name the job (None: every override that describes the
    run). Long floats (an Optuna trial's) keep 4 significant digits and the name stops at _MAX_NAME_LEN characters:
    the exact values are in the run's config."""
    kept = [_short(o) for o in overrides if _describes_run(o) and (swept is None or _key(o) in swept)]
    body = ",".join(kept) or fallback
    name = body if job_num is None else f"{job_num}:{body}"
    return name if len(name) <= _MAX_NAME_LEN else name[:_MAX_NAME_LEN - 1] + "\u2026"


def swept_keys(overrides: Iterable[str]) -> set[str]:
    """The keys of the sweep overrides among `overrides` (`lora.rank=4,8`, `train.lr=interval(0.1,1)`), as Hydra
    parses them; one Hydra cannot parse is no sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, keys = OverridesParser.create(), set()
    for text in overrides:
        try:
            override = parser.parse_overrides([text])[0]
        except HydraException:
            continue
        if override.is_sweep_override():
            keys.add(_key(override.get_key_element()))
    return keys


def choice_tags(choices: dict[str, str | None]) -> tuple[str, ...]:
    """`group:option` for each selected config-group option, Hydra's own groups left out, except that `launcher`
    names the launcher that ran the job (`hydra/launcher`), however it was picked (`launcher=joblib` or
    `hydra/launcher=joblib`)."""
    chosen = {g: o for g, o in choices.items() if not g.startswith(_TAG_SKIP_PREFIXES)}
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
    choices = dict(hc.runtime.choices)
    output_name = Path(hc.runtime.output_dir).name if hc.runtime.output_dir else fallback_name
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun:
        params = hc.sweeper.get("params") or {}
        swept = swept_keys([*(f"{k}={v}" for k, v in params.items()), *_command_line(Path(hc.sweep.dir))])
        name = run_name(tuple(hc.overrides.task), hc.job.num, output_name, swept or None)
    else:
        name = f"{choices.get('experiment') or 'run'}-{output_name}"
    return RunIdentity(
        name=name,
        group=Path(hc.sweep.dir).name if multirun else name,
        job_type="sweep" if multirun else "run",
        tags=choice_tags(choices),
    )


def _command_line(sweep_dir: Path) -> list[str]:
    """The multirun's own overrides (`lora.rank=4,8` before it became one per job), from the multirun.yaml Hydra's
    basic sweeper writes into the sweep directory before the first job; [] without one (the Optuna sweeper)."""
    try:
        saved = yaml.safe_load((sweep_dir / "multirun.yaml").read_text(encoding="utf-8"))
        return [str(o) for o in saved["hydra"]["overrides"]["task"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []


def _key(override: str) -> str:
    """`lora.rank` of `+lora.rank=8` (and of the key element `+lora.rank`)."""
    return override.split("=", 1)[0].lstrip("+~")


def _short(override: str) -> str:
    """The override with its value as a name shows it: a float to 4 significant digits, the rest as given."""
    key, _, value = override.partition("=")
    if not any(c in value for c in ".eE"):
        return override
    try:
        short = f"{float(value):.4g}"
    except ValueError:
        return override
    return f"{key}={short}" if len(short) < len(value) else override


def _describes_run(override: str) -> bool:
    root = _key(override).split(".", 1)[0].split("/", 1)[0]
    return root not in _NAME_SKIP_ROOTS and not is_secret_override(override)
