"""Matplotlib for report figures: a backend that needs no display, and figures written atomically."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from moshi_knowledge.io_utils import atomic_write_bytes


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only: works on machines without a display), imported late so
    that commands which draw nothing do not pay for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int = 110, **options: Any) -> None:
    """Write `fig` as a PNG at `path` in one step: a reader never sees half a file (`options` go to savefig)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, **options)
    atomic_write_bytes(path, buffer.getvalue())
