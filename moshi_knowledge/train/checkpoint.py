"""Training checkpoints: everything needed to continue a run exactly, written atomically, the last K kept.

Layout: `<run_dir>/checkpoints/step_XXXXXXXX/` holding trainable.pt (trainable weights only: the frozen base is
reloaded from the model checkpoint), optimizer.pt, state.json (step, data position, LR scale, NaN-guard counters)
and rng_rank<r>.pt per rank. The folder is written under a temporary name and renamed into place, so a folder
with a `step_` name is always complete.
"""

from __future__ import annotations

import io
import os
import random
import shutil
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json, read_json
from moshi_knowledge.train.distributed import DistInfo, barrier

PREFIX = "step_"


def _write_torch(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | Path, step: int, params: Mapping[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], keep: int, info: DistInfo) -> Path:
    """Collective under torchrun: every rank calls it (each saves its RNG); rank 0 writes the rest."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:08d}", root / f".tmp-{PREFIX}{step:08d}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _write_torch(tmp / f"rng_rank{info.rank}.pt", _rng_state())
    barrier()
    if info.is_main:
        _write_torch(tmp / "trainable.pt", {name: p.detach().cpu() for name, p in params.items()})
        _write_torch(tmp / "optimizer.pt", optimizer.state_dict())
        atomic_write_json(tmp / "state.json", {"step": step, **state})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def load_checkpoint(path: Path, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    info: DistInfo) -> dict:
    """Restore weights, optimizer and this rank's RNG in place; returns state.json."""
    saved = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    if set(saved) != set(params):
        diff = sorted(set(saved) ^ set(params))[:5]
        raise UserError(f"checkpoint {path} holds different trainable parameters than the model (e.g. {diff})",
                        "resume with the same model and lora settings, or set train.resume=false")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng = path / f"rng_rank{info.rank}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))  # our own file: holds Python/numpy RNG tuples
    return read_json(path / "state.json")
