"""Reading run directories back: every directory under a root that holds a summary.json is one run, with its
overrides (.hydra/overrides.yaml) and config-group choices (.hydra/hydra.yaml: `layout: narration`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moshi_knowledge.io_utils import read_json
from moshi_knowledge.tracking.contract import METRICS_FILE, STATUS, STEP, SUMMARY_FILE, number
from moshi_knowledge.tracking.files import read_metrics


@dataclass
class RunRecord:
    path: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    overrides: list[str]
    choices: dict[str, str] = field(default_factory=dict)  # config group -> option, from .hydra/hydra.yaml

    @property
    def status(self) -> str:
        return str(self.summary.get(STATUS, "unknown"))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of `key`, sorted by step; a step logged twice (a resumed run) keeps its last value."""
        rows = (row for row in self.metrics if key in row and isinstance(row.get(STEP), int))
        by_step = {row[STEP]: number(row[key]) for row in rows}
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def final(self, key: str) -> float | None:
        """The summary's value of `key`, else the last logged one (NaN for a null); None when never measured."""
        if key in self.summary:
            return number(self.summary[key])
        _, values = self.series(key)
        return values[-1] if values else None

    def param_values(self) -> dict[str, str]:
        """`{key: value}` from the overrides (`+lora.rank=8` -> `{"lora.rank": "8"}`)."""
        pairs = (o.lstrip("+~").split("=", 1) for o in self.overrides if "=" in o)
        return {k: v for k, v in pairs}


def load_run(run_dir: Path) -> RunRecord:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) if overrides_file.exists() else []
    return RunRecord(
        path=run_dir,
        summary=read_json(run_dir / SUMMARY_FILE),
        metrics=read_metrics(run_dir / METRICS_FILE),
        overrides=[str(o) for o in overrides or []],
        choices=read_choices(run_dir),
    )


def read_choices(run_dir: Path) -> dict[str, str]:
    """The config-group options the run was composed with (`hydra.runtime.choices`), which say a run's `layout` even
    when an experiment preset chose it rather than an override; {} without a readable .hydra/hydra.yaml (a report
    must not fail on one run's Hydra files)."""
    path = run_dir / ".hydra" / "hydra.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    node = config
    for part in ("hydra", "runtime", "choices"):
        node = node.get(part) if isinstance(node, dict) else None
    return {str(k): str(v) for k, v in node.items() if v is not None} if isinstance(node, dict) else {}


def find_runs(root: Path) -> list[RunRecord]:
    """Every run under `root` (itself included), in path order with job numbers sorted numerically."""
    dirs = {p.parent for p in root.rglob(SUMMARY_FILE) if not _hidden(p.relative_to(root))}
    return [load_run(d) for d in sorted(dirs, key=lambda d: _natural_key(d.relative_to(root)))]


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _natural_key(rel: Path) -> list[tuple[int, Any]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in rel.parts]
