"""The Tracker: one run's metrics, summary and media, written to its run directory and mirrored to the logger.

    with Tracker(cfg.logger, run_dir, cfg, run_identity_from_hydra()) as tracker:
        tracker.log({"step": 10, "train/loss": 2.3})
        tracker.summary({"recall/eval/mc_acc": 0.8})
    return objective_value(tracker.values, cfg.objective.metric)   # the sweeper's objective, None unless completed

The run's files are written whatever the logger, so a run without W&B, or a killed one, still has its record.
On leaving the block the run is always closed: status `completed` unless the body set another status
(`diverged`) or raised (`failed`, with the error), the summary's `objective` holds the config's
`objective.metric` (what the sweeper receives), and the W&B run is finished, so the next job of a multirun starts a
run of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from moshi_knowledge.errors import UserError
from moshi_knowledge.tracking.contract import (
    COMPLETED,
    FAILED,
    MESSAGE,
    METRICS_FILE,
    OBJECTIVE,
    RUNNING,
    STATUS,
    STEP,
    SUMMARY_FILE,
    objective_value,
)
from moshi_knowledge.tracking.files import MetricsFile, SummaryFile
from moshi_knowledge.tracking.identity import RunIdentity, run_identity_from_hydra
from moshi_knowledge.tracking.secrets import loggable_config, redact
from moshi_knowledge.tracking.sinks import NullSink, Sink

# summary.json keeps the mirror's run id so a resumed run (same run dir) continues the same W&B run.
MIRROR_ID = "wandb/id"


class Tracker:
    """Context manager for one run. `logger` is the `logger` config node (or a Sink, or None for files only)."""

    def __init__(
        self,
        logger: Mapping[str, Any] | Sink | None,
        run_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        identity: RunIdentity | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self._sink = _make_sink(logger)
        self._config = loggable_config(config)
        objective = self._config.get("objective")
        self._objective: str | None = objective.get("metric") if isinstance(objective, Mapping) else None
        self._identity = identity or run_identity_from_hydra(self.run_dir.name)
        self._metrics: MetricsFile | None = None
        self._summary: SummaryFile | None = None
        self._last: dict[str, Any] = {}
        self._explicit: set[str] = set()
        self.step: int | None = None
        self.run_id: str | None = None

    @property
    def values(self) -> dict[str, Any]:
        """A copy of summary.json's contents; after the block it holds the final status (for the sweep objective)."""
        return dict(self._open_summary().values)

    @property
    def log_audio(self) -> int:
        """How many dataset conversations the logger wants as audio (0 for logger=none)."""
        return self._sink.log_audio

    @property
    def log_answers(self) -> int:
        """How many generated answers per recall evaluation the logger wants as audio (0 for logger=none)."""
        return self._sink.log_answers

    @property
    def log_adapter(self) -> bool:
        """Whether the logger wants the trained adapter uploaded as an artifact."""
        return self._sink.log_adapter

    def __enter__(self) -> Tracker:
        self._metrics = MetricsFile(self.run_dir / METRICS_FILE)
        self._summary = SummaryFile(self.run_dir / SUMMARY_FILE)
        self._summary.update({STATUS: RUNNING}, drop=(MESSAGE,))
        try:
            previous_id = self._summary.values.get(MIRROR_ID)
            self.run_id = self._sink.start(self.run_dir, self._config, self._identity, previous_id)
        except BaseException as err:
            self._close(err)
            raise
        if self.run_id is not None:
            self._summary.update({MIRROR_ID: self.run_id})
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(exc)

    def log(self, row: Mapping[str, Any]) -> None:
        """Append one row; it must carry the integer optimizer `step` that train, eval and recall rows share."""
        step = row.get(STEP)
        if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError(f"a metrics row needs an integer {STEP!r}; got {row!r}")
        self._open_metrics().append(row)
        self.step = step
        self._last.update(row)
        self._sink.log(row)

    def keep_until(self, step: int) -> None:
        """On resume from the checkpoint of `step`: drop the metrics rows the interrupted attempt logged after it."""
        self._open_metrics().keep_until(step)

    def summary(self, values: Mapping[str, Any]) -> None:
        """Merge final figures (status, recall, ...) into summary.json and the logger's summary."""
        self._open_summary().update(values)
        self._explicit.update(values)
        self._sink.summary(values)

    def table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int | None = None) -> None:
        """A table for the logger (e.g. per-question predictions, whose run-dir copy the caller writes itself), at
        `step` (default: the last logged row's); a cell may be a sinks.AudioClip."""
        self._sink.table(name, rows, self.step if step is None else step)

    def audio(self, name: str, path: str | Path) -> None:
        self._sink.audio(name, Path(path), self.step)

    def artifact(self, path: str | Path, name: str, kind: str = "model") -> None:
        self._sink.artifact(Path(path), name, kind)

    def _close(self, exc: BaseException | None) -> None:
        summary = self._open_summary()
        # Like W&B, the summary holds each metric's last value unless the run set it explicitly.
        final = {k: v for k, v in self._last.items() if k not in self._explicit}
        if exc is not None:
            final.update({STATUS: FAILED, MESSAGE: redact(f"{type(exc).__name__}: {exc}")})
        elif summary.values.get(STATUS) == RUNNING:
            final[STATUS] = COMPLETED
        try:
            summary.update(final)
            if self._objective is not None:
                final[OBJECTIVE] = objective_value(summary.values, self._objective)
                summary.update({OBJECTIVE: final[OBJECTIVE]})
            self._sink.summary({k: final[k] for k in (STATUS, MESSAGE, OBJECTIVE) if k in final})
        finally:
            self._open_metrics().close()
            self._sink.finish(FAILED if exc is not None else summary.values.get(STATUS, COMPLETED))

    def _open_metrics(self) -> MetricsFile:
        if self._metrics is None:
            raise RuntimeError("use the Tracker as a context manager: `with Tracker(...) as tracker:`")
        return self._metrics

    def _open_summary(self) -> SummaryFile:
        if self._summary is None:
            raise RuntimeError("use the Tracker as a context manager: `with Tracker(...) as tracker:`")
        return self._summary


def _make_sink(logger: Mapping[str, Any] | Sink | None) -> Sink:
    if logger is None:
        return NullSink()
    if not isinstance(logger, Mapping):
        return logger
    try:
        return instantiate(logger, _convert_="all")
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):  # Hydra wraps a bad setting's UserError; hand over the original
            raise err.__cause__ from None
        raise
