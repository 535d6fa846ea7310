"""Moshi models: loading (Hub, local, tiny), the tiny checkpoint builder, LoRA and the depformer patch.

moshi wraps its streaming modules in `torch.compile` unless NO_TORCH_COMPILE is set. On CPU that compile
costs ~18 s of inductor time for a tiny forward+backward and buys nothing, so without a GPU we switch it
off here, before any submodule imports moshi. A value the user set wins (setdefault).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
