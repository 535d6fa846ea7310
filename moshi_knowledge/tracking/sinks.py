"""Where a run's metrics are mirrored besides its own files: the `logger` config group picks one.

`logger=none` selects `NullSink`, `logger=wandb` selects `WandbSink`. Both are built from the option's fields by
`hydra.utils.instantiate`; the Tracker calls `start` once, then the logging methods, then `finish` exactly once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.tracking.contract import COMPLETED, DIVERGED, INTERRUPTED, STEP
from moshi_knowledge.tracking.files import dumps
from moshi_knowledge.tracking.identity import RunIdentity

if TYPE_CHECKING:  # numpy stays out of the config's import (shell completion)
    import numpy as np

WANDB_MODES = ("offline", "online", "disabled")
LEGACY_MODES = {"dryrun": "offline", "run": "online"}  # older names W&B still accepts in WANDB_MODE
DEFAULT_PROJECT = "moshi-knowledge"
# Keys that tell Hydra how to build an object (`_target_`, ...): not settings, so kept off the dashboard's config.
_INSTANTIATE_KEYS = frozenset({"_target_", "_convert_", "_partial_", "_recursive_", "_args_"})


@dataclass(frozen=True, eq=False)
class AudioClip:
    """A table cell holding sound (a generated answer): the logger shows it as a player."""

    samples: np.ndarray  # mono
    sample_rate: int
    caption: str = ""


class Sink(Protocol):
    log_audio: int
    log_answers: int
    log_adapter: bool

    def start(self, run_dir: Path, config: dict[str, Any], identity: RunIdentity, run_id: str | None) -> str | None:
        """Open the mirror; returns its run id, which a resumed run passes back as `run_id`."""

    def log(self, row: Mapping[str, Any]) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int | None) -> None: ...

    def audio(self, name: str, path: Path, step: int | None) -> None: ...

    def artifact(self, path: Path, name: str, kind: str) -> None: ...

    def finish(self, status: str) -> None:
        """Close the run; `status` is summary.json's final status (contract.STATUS)."""


class NullSink:
    """`logger=none`: the run's files are the whole record."""

    log_audio = 0
    log_answers = 0
    log_adapter = False

    def start(self, run_dir: Path, config: dict[str, Any], identity: RunIdentity, run_id: str | None) -> None:
        return None

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int | None) -> None:
        pass

    def audio(self, name: str, path: Path, step: int | None) -> None:
        pass

    def artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


class WandbSink:
    """`logger=wandb`: one W&B run per Tracker, offline unless the config or the environment asks for online.

    `project`, `entity`, `mode` and `dir` left null take W&B's own variables (WANDB_PROJECT, WANDB_ENTITY,
    WANDB_MODE, WANDB_DIR), read when the sink is built, else this app's defaults; a value set in the config wins.
    They are passed to `wandb.init` explicitly because W&B reads its environment only at a process's first init.
    """

    def __init__(
        self,
        project: str | None = None,  # null: WANDB_PROJECT, else DEFAULT_PROJECT
        entity: str | None = None,  # null: WANDB_ENTITY, else your W&B default entity
        mode: str | None = None,  # one of WANDB_MODES; null: WANDB_MODE, else offline. online needs WANDB_API_KEY
        dir: str | None = None,  # the folder that gets wandb/; null: WANDB_DIR, else the run directory
        job_type: str | None = None,  # null: "sweep" inside a multirun, "run" otherwise
        tags: tuple[str, ...] = (),  # added to the Hydra choices (story:procedural, ...)
        log_audio: int = 4,  # dataset conversations uploaded as wandb.Audio
        log_answers: int = 4,  # generated answers per recall evaluation, as audio beside their question and gold
        log_adapter: bool = False,  # upload the trained adapter as an artifact
    ) -> None:
        self._mode_from = "logger.mode" if mode or not os.environ.get("WANDB_MODE") else "WANDB_MODE"
        given = mode or os.environ.get("WANDB_MODE") or "offline"
        mode = LEGACY_MODES.get(given, given)
        if mode not in WANDB_MODES:
            raise UserError(
                f"{self._mode_from}={given!r} is not a W&B mode",
                fix=f"set {self._mode_from} to offline (default; upload later with `wandb sync`), online or disabled",
            )
        self.project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self.dir = dir or os.environ.get("WANDB_DIR") or None
        self.mode, self.job_type = mode, job_type
        self.tags = tuple(tags)
        self.log_audio, self.log_answers, self.log_adapter = log_audio, log_answers, log_adapter
        self._run: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], identity: RunIdentity, run_id: str | None) -> str:
        import wandb

        try:
            # reinit="finish_previous": the default would hand a multirun's job 2 the run of job 1.
            self._run = wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                dir=self.dir or str(run_dir),
                group=identity.group,
                name=identity.name,
                job_type=self.job_type or identity.job_type,
                tags=list(dict.fromkeys([*identity.tags, *self.tags])),
                config=_settings(config),
                id=run_id,
                resume="allow" if run_id else None,
                reinit="finish_previous",
            )
        except wandb.errors.UsageError as err:
            raise UserError(
                f"W&B could not start a run in {self.mode} mode ({self._mode_from}): {err}",
                fix="export WANDB_API_KEY (or run `wandb login`) for online mode, or use logger.mode=offline "
                "and upload later with `wandb sync RUN_DIR/wandb/offline-run-*`",
            ) from err
        # Train, eval and recall rows all carry `step`; plotting every metric against it lines them up.
        self._run.define_metric(STEP)
        self._run.define_metric("*", step_metric=STEP)
        return self._run.id

    def log(self, row: Mapping[str, Any]) -> None:
        self._run.log(dict(row))

    def summary(self, values: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.summary.update(dict(values))

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int | None) -> None:
        import wandb

        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_cell(row.get(c)) for c in columns] for row in rows]
        self._log_media(name, wandb.Table(columns=columns, data=data), step)

    def audio(self, name: str, path: Path, step: int | None) -> None:
        import wandb

        self._log_media(name, wandb.Audio(str(path), caption=Path(path).stem), step)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        import wandb

        # Artifact names are per project: suffix the run id so a sweep's adapters don't become versions of one.
        art = wandb.Artifact(re.sub(r"[^\w.-]", "_", f"{name}-{self._run.id}"), type=kind)
        if Path(path).is_dir():
            art.add_dir(str(path))
        else:
            art.add_file(str(path))
        self._run.log_artifact(art)

    def finish(self, status: str) -> None:
        """W&B's states: a completed or diverged run finished (exit code 0), a failed one failed, and an
        interrupted one preempted (marked before it exits, as W&B asks of jobs that will be requeued)."""
        if self._run is not None:
            if status == INTERRUPTED:
                self._run.mark_preempting()
            self._run.finish(exit_code=0 if status in (COMPLETED, DIVERGED) else 1)
            self._run = None

    def _log_media(self, name: str, media: Any, step: int | None) -> None:
        self._run.log({name: media} if step is None else {name: media, STEP: step})


def _settings(config: Any) -> Any:
    """The config without Hydra's instantiation keys, which would clutter the run page and parallel coordinates."""
    if isinstance(config, Mapping):
        return {k: _settings(v) for k, v in config.items() if k not in _INSTANTIATE_KEYS}
    if isinstance(config, list):
        return [_settings(v) for v in config]
    return config


def _cell(value: Any) -> Any:
    """wandb.Table cells must be scalars or media: nested values go in as JSON text, an AudioClip as wandb.Audio."""
    if isinstance(value, AudioClip):
        import wandb

        return wandb.Audio(value.samples, sample_rate=value.sample_rate, caption=value.caption or None)
    return dumps(value) if isinstance(value, (Mapping, list, tuple)) else value


SCHEMAS = {("logger", "wandb_schema"): init_schema(WandbSink), ("logger", "none_schema"): init_schema(NullSink)}
