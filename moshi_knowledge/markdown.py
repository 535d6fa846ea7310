"""Text for reports: Markdown table rows, and the one number formatter every report shares (the sweep report, its
Study section and a run's final table), so that a missing or non-finite figure reads the same everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "–"


def table_row(cells: Sequence[str]) -> str:
    """A Markdown table row; a `|` inside a cell is escaped so it cannot split the cell."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def fmt(value: Any, spec: str = ".3g", missing: str = MISSING, nan: str | None = None) -> str:
    """`value` formatted with `spec`; `missing` when it is absent (None, null) or not a number, and `nan` (default:
    `missing`) when it is not finite, for a table that must tell "never measured" from "diverged"."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return missing
    if not math.isfinite(value):
        return missing if nan is None else nan
    return format(value, spec)


def plural(n: int, noun: str) -> str:
    """`1 run`, `3 runs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
