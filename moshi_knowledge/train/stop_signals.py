"""SIGTERM and SIGINT end training between two steps, not in the middle of one.

SLURM sends SIGTERM some seconds before it preempts or times out a job (and Ctrl-C sends SIGINT). Inside
`StopSignals()`, a signal only records itself; the training loop asks `requested()` after each optimizer step,
saves a checkpoint and ends the run with status `interrupted`, which a requeued job resumes
(`train.resume=true`). A second signal of the same kind while the first is being handled is ignored. The previous
handlers come back on leaving the block. Signals can only be caught in the main thread; elsewhere (a training
run started from a worker thread) the block changes nothing.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch

from moshi_knowledge.train.distributed import all_reduce_sum, dist_info

CAUGHT = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in CAUGHT}
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self.received = self.received or signal.Signals(signum)

    def requested(self, device: torch.device) -> bool:
        """Whether any rank got a signal (collective under torchrun, so that every rank stops at the same step)."""
        if dist_info().world == 1:
            return self.received is not None
        flag = torch.tensor([1 if self.received else 0], device=device)
        return int(all_reduce_sum(flag)) > 0
