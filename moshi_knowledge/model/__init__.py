"""Moshi models: loading (Hub, local, tiny), the tiny checkpoint builder, LoRA and the depformer patch.

moshi wraps a few small functions (RMS norm, rope, gating) in `torch.compile` unless NO_TORCH_COMPILE is set.
On CPU that compile costs ~18 s of inductor time for a tiny forward+backward and buys nothing, so without a GPU
we switch it off here, also for moshi modules that were imported first. A value the user set wins (setdefault).

On a GPU the compile stays on, but one run calls the RMS norm in more guard variants than dynamo's default
limit of 8 compiled versions per function (training with and without grad under checkpointing, eval, scoring,
streaming generation, two widths): past the limit it silently falls back to eager for the rest of the run. The
limit is raised so that every variant keeps its compiled version (docs/moshi.md).

Only training compiles. Dynamo marks a dimension dynamic once one function has seen it at two sizes, and the
LM's RMS norm and rope are the same functions as Mimi's and recall's: compiling Mimi's shapes (tokenize,
recall prompts, the voice measure) or recall's many batch and sequence lengths before the first training step
put training on dynamic-shape kernels, 7% slower than the benchmark's static ones on the H200
(benchmarks/results/full_scale.md). So Mimi and recall run inside `uncompiled()`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

RECOMPILE_LIMIT = 64

if not torch.cuda.is_available():
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
if os.environ.get("NO_TORCH_COMPILE"):
    from moshi.utils import compile as moshi_compile

    # moshi reads the variable when it defines its compiled functions; those of modules imported before this
    # line still check this flag at every call.
    moshi_compile._compile_disabled = True
else:
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


@contextlib.contextmanager
def uncompiled() -> Iterator[None]:
    """Run `torch.compile`d functions eagerly inside the block, compiling nothing new (see the module's doc)."""
    with torch.compiler.set_stance("force_eager"):
        yield
