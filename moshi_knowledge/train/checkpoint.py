"""Training checkpoints: everything needed to continue a run exactly, written atomically, the last K kept.

Layout: `<run_dir>/checkpoints/step_XXXXXXXX/` holding trainable.pt (trainable weights only: the frozen base is
reloaded from the model checkpoint), optimizer.pt, state.json (step, data position, LR scale, NaN-guard counters)
and rng_rank<r>.pt per rank. The folder is written under a temporary name, read back, and renamed into place, so
a folder with a `step_` name was complete when written; resume skips one damaged since (disk fault, a hand edit)
with a warning and loads the newest that still reads back.

An FSDP run (weights sharded over ranks) writes `sharded/` instead of trainable.pt and optimizer.pt: a
torch.distributed.checkpoint (DCP) folder in which each rank writes its own shard of the trainable weights and of
the optimizer state, so no rank ever holds the whole 7B state. DCP re-shards on load, so any world size resumes it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json, read_json
from moshi_knowledge.train.distributed import DistInfo, barrier, is_sharded

log = logging.getLogger(__name__)

PREFIX = "step_"
SHARDED = "sharded"
_PARTIAL = StateDictOptions(strict=False)  # the sharded checkpoint holds trainable weights only


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


def _sharded_state(model: nn.Module, params: Mapping[str, torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The trainable weights and optimizer state as DTensor shards keyed by parameter name (DCP's format).

    get_optimizer_state_dict also creates the optimizer state of a fresh optimizer, so a load has targets."""
    weights = {k: v for k, v in get_model_state_dict(model).items() if k in params}
    return {"model": weights, "optim": get_optimizer_state_dict(model, optimizer)}


def _write_weights(tmp: Path, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                   model: Optional[nn.Module], info: DistInfo) -> None:
    """Collective: sharded models write one DCP shard per rank; otherwise rank 0 writes whole files."""
    if model is not None and is_sharded(model):
        dcp.save(_sharded_state(model, params, optimizer), checkpoint_id=tmp / SHARDED)
    elif info.is_main:
        _write_torch(tmp / "trainable.pt", {name: p.detach().cpu() for name, p in params.items()})
        _write_torch(tmp / "optimizer.pt", optimizer.state_dict())


def save_checkpoint(run_dir: str | Path, step: int, params: Mapping[str, torch.nn.Parameter],
                    optimizer: torch.optim.Optimizer, state: Mapping[str, Any], keep: int, info: DistInfo,
                    model: Optional[nn.Module] = None) -> Path:
    """Collective under torchrun: every rank calls it (each saves its RNG, and its shard if `model` is FSDP-sharded);
    rank 0 writes the rest."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"{PREFIX}{step:08d}", root / f".tmp-{PREFIX}{step:08d}"
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _write_torch(tmp / f"rng_rank{info.rank}.pt", _rng_state())
    _write_weights(tmp, params, optimizer, model, info)
    barrier()
    if info.is_main:
        atomic_write_json(tmp / "state.json", {"step": step, **state})
        if not (tmp / SHARDED).is_dir():
            _read(tmp, info.rank)  # verify after write: a checkpoint that cannot be read back is never published
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def _mismatch(path: Path, names: set[str], params: Mapping[str, torch.nn.Parameter]) -> None:
    if names != set(params):
        diff = sorted(names ^ set(params))[:5]
        raise UserError(f"checkpoint {path} holds different trainable parameters than the model (e.g. {diff})",
                        "resume with the same model and lora settings, or set train.resume=false")


def _load_sharded(path: Path, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                  model: Optional[nn.Module]) -> None:
    if model is None:
        raise ValueError("a sharded checkpoint needs the model to load into")
    names = {k[len("model."):] for k in dcp.FileSystemReader(path / SHARDED).read_metadata().state_dict_metadata
             if k.startswith("model.")}
    _mismatch(path, names, params)
    target = _sharded_state(model, params, optimizer)
    dcp.load(target, checkpoint_id=path / SHARDED)  # in place, each rank reading the pieces of its own shard
    set_model_state_dict(model, target["model"], options=_PARTIAL)
    set_optimizer_state_dict(model, optimizer, target["optim"])


class DamagedCheckpoint(Exception):
    """A checkpoint folder whose files cannot be read back (truncated, garbled or missing)."""


@dataclass
class _Saved:
    state: dict
    trainable: dict[str, torch.Tensor]
    optimizer: dict
    rng: Optional[dict]  # this rank's RNG states (None: a rank that saved none)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Turn any failure to read a checkpoint's files into DamagedCheckpoint."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        # JSONDecodeError is a ValueError; torch's "PytorchStreamReader failed reading zip archive" a RuntimeError
        raise DamagedCheckpoint(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err


def _read_state(path: Path) -> dict:
    state = read_json(path / "state.json")
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("state.json has no step")
    return state


def _read(path: Path, rank: int) -> _Saved:
    """Every file of an unsharded checkpoint, read before anything is applied, so a damaged one changes nothing."""
    with _reading():
        rng = path / f"rng_rank{rank}.pt"
        return _Saved(_read_state(path), torch.load(path / "trainable.pt", map_location="cpu", weights_only=True),
                      torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
                      torch.load(rng, weights_only=False) if rng.exists() else None)  # ours: Python/numpy tuples


def _check_sharded(path: Path) -> dict:
    """state.json of a sharded checkpoint whose DCP metadata and every byte range it names are there; else
    DamagedCheckpoint. Every rank reads the same files, so all ranks reach the same verdict and skip (or load)
    together."""
    with _reading():
        state = _read_state(path)
        metadata = dcp.FileSystemReader(path / SHARDED).read_metadata()
        for item in metadata.storage_data.values():
            shard = path / SHARDED / item.relative_path
            if not shard.is_file() or shard.stat().st_size < item.offset + item.length:
                raise ValueError(f"{item.relative_path} is missing or shorter than its metadata says")
        return state


def load_checkpoint(path: Path, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    info: DistInfo, model: Optional[nn.Module] = None) -> dict:
    """Restore weights, optimizer and this rank's RNG in place; returns state.json. Raises DamagedCheckpoint,
    having changed nothing, for a checkpoint that cannot be read whole (a sharded one: missing or short files).

    Collective for a sharded checkpoint, which needs `model` (any world size, sharded or not, can load it)."""
    if (path / SHARDED).is_dir():
        state = _check_sharded(path)
        _load_sharded(path, params, optimizer, model)
        rng = path / f"rng_rank{info.rank}.pt"
        if rng.exists():
            _set_rng_state(torch.load(rng, weights_only=False))  # our own file: holds Python/numpy RNG tuples
        return state
    if model is not None and is_sharded(model):
        raise UserError(f"checkpoint {path} was written by an unsharded (single-process or DDP) run, and this run "
                        "shards the model with FSDP", "resume it with train.distributed=ddp, or start afresh")
    saved = _read(path, info.rank)
    _mismatch(path, set(saved.trainable), params)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved.trainable[name])
    optimizer.load_state_dict(saved.optimizer)
    if saved.rng is not None:
        _set_rng_state(saved.rng)
    return saved.state


def resume_latest(run_dir: str | Path, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                  info: DistInfo, model: Optional[nn.Module] = None) -> Optional[dict]:
    """Load the newest checkpoint that reads back whole; a damaged newer one is named in a warning and skipped.
    None when there is no checkpoint; a UserError when every one is damaged."""
    dirs = checkpoint_dirs(run_dir)
    damaged = []
    for path in reversed(dirs):
        try:
            return load_checkpoint(path, params, optimizer, info, model=model)
        except DamagedCheckpoint as err:
            log.warning("checkpoint %s is damaged (%s); resuming from the one before it", path, err)
            damaged.append(path.name)
    if not dirs:
        return None
    raise UserError(f"every checkpoint under {Path(run_dir) / 'checkpoints'} is damaged ({', '.join(damaged)})",
                    "delete the checkpoints/ folder to start afresh, or set train.resume=false")
