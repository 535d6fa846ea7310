"""AdamW over the trainable parameters, and the learning-rate schedule as a pure function of the step.

A pure function (instead of a torch scheduler object) makes resume trivial, and lets the NaN guard scale the LR
after a rollback without fighting the scheduler's internal state.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from moshi_knowledge.train.config import TrainConfig

ONE_CYCLE_DIV = 25.0  # one_cycle starts at lr / 25 ...
ONE_CYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4 (torch's OneCycleLR defaults, as moshi-finetune uses)


def build_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    fused = all(p.is_cuda for p in params)  # the fused kernel is CUDA's; CPU keeps the reference loop
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=1e-8, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def _cos_between(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of the update that makes optimizer step `step + 1` (so `step` counts from 0)."""
    warmup = min(cfg.warmup_steps, cfg.max_steps)
    if cfg.schedule == "one_cycle":
        low = cfg.lr / ONE_CYCLE_DIV
        if step < warmup:
            return _cos_between(low, cfg.lr, step / max(warmup, 1))
        return _cos_between(cfg.lr, low / ONE_CYCLE_FINAL_DIV, (step - warmup) / max(cfg.max_steps - warmup - 1, 1))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return cfg.lr
    fraction = (step - warmup) / max(cfg.max_steps - warmup - 1, 1)
    return _cos_between(cfg.lr, cfg.lr * cfg.min_lr_ratio, fraction)
