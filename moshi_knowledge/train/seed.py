"""One place that seeds every random generator a run draws from (python, numpy, torch)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch (torch with `seed + rank`, so ranks draw different dropout masks).

    Called before the adapter is made as well as before training: peft draws lora_A from torch's global
    generator, and the basic launcher runs every sweep job in one process, so an unseeded adapter would start
    from whatever state the previous job left.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed + rank)
