"""The two files every run keeps whatever the logger: `metrics.jsonl` (appended) and `summary.json` (replaced).

metrics.jsonl is appended and flushed row by row, so a killed run keeps every row it logged and a resumed run
continues the same file. summary.json is rewritten atomically on each update, so it is never half-written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from moshi_knowledge.io_utils import atomic_write_text, read_json
from moshi_knowledge.tracking.contract import STEP

log = logging.getLogger(__name__)


def plain(obj: Any) -> Any:
    """Strict-JSON data: numpy/torch scalars and arrays become Python numbers, non-finite floats become null.

    null is how the contract spells a non-finite value (a NaN loss); strict JSON keeps the files readable by
    jq and JavaScript, which reject NaN.
    """
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return plain(obj.item())
    if hasattr(obj, "tolist"):
        return plain(obj.tolist())
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    return json.dumps(plain(obj), ensure_ascii=False, indent=indent, allow_nan=False)


class MetricsFile:
    """Appends rows to metrics.jsonl, one JSON object per line, flushed at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh: IO[str] = path.open("a", encoding="utf-8")

    def append(self, row: Mapping[str, Any]) -> None:
        self._fh.write(dumps(row) + "\n")
        self._fh.flush()

    def keep_until(self, step: int) -> None:
        """On resume from a checkpoint: drop rows logged after `step`, so each step appears once."""
        self._fh.close()
        kept = [row for row in read_metrics(self.path) if row.get(STEP, 0) <= step]
        atomic_write_text(self.path, "".join(dumps(row) + "\n" for row in kept))
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        self._fh.close()


class SummaryFile:
    """summary.json as a dict: loaded if present (a resumed run keeps its figures), merged and rewritten on update."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        if path.exists():
            try:
                self.values = dict(read_json(path))
            except (ValueError, TypeError):  # written atomically, so only a disk fault or a hand edit garbles it
                log.warning("%s is not a JSON object; the run starts a new summary", path)

    def update(self, values: Mapping[str, Any], drop: Iterable[str] = ()) -> None:
        for key in drop:
            self.values.pop(key, None)
        self.values.update(values)
        atomic_write_text(self.path, dumps(self.values, indent=2) + "\n")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (metrics.jsonl, predictions.jsonl); a torn last line (the process was killed
    mid-write) is skipped with a warning.

    Lines end at "\n" only: `str.splitlines` also splits at U+2028, U+0085 and other separators, which
    `ensure_ascii=False` leaves unescaped inside strings, such as the text a model generated.
    """
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a line that is not JSON (a torn write?)", path, lineno)
    return rows
