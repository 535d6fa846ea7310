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


def small_multiples(n: int, panel: tuple[float, float], xlabel: str, ylabel: str,
                    max_cols: int = 3) -> tuple[Any, list[Any]]:
    """A figure of `n` panels of `panel` inches (width, height), at most `max_cols` a row, one per tier or regime so
    that nine series stay nine readable panels rather than nine lines on one; the panels left over in the last row
    are removed, and each panel has its x label where no panel sits below it, its y label in the first column."""
    plt = pyplot()
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(panel[0] * cols, panel[1] * rows), squeeze=False,
                             layout="constrained")
    axes = [ax for row in grid for ax in row]
    for ax in axes[n:]:
        ax.remove()
    for k, ax in enumerate(axes[:n]):
        if k + cols >= n:
            ax.set_xlabel(xlabel, fontsize=8)
        if k % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=8)
    return fig, axes[:n]
