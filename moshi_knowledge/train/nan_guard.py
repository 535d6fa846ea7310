"""What a run does when a step's loss or gradient norm is not finite (the `nan_guard` config group).

Policies: `off` (step anyway, only count), `skip` (drop the update), `rollback` (restore the last good trainable
weights and optimizer state, scale the LR by `lr_factor`), `halt` (end the run, status "diverged"). `skip` and
`rollback` give up, status "diverged", when more than `max_consecutive` events come in a row.
"""

from __future__ import annotations

import copy
from typing import Literal, Mapping

import torch

from moshi_knowledge.specs.nan_guard import NanGuardSpec

Action = Literal["step", "skip", "rollback", "halt"]


class NanGuard(NanGuardSpec):
    """NanGuardSpec's settings (checked when built) plus the run's count of non-finite steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.events = 0
        self.consecutive = 0
        self.message = ""

    def on_good_step(self) -> None:
        self.consecutive = 0

    def on_nonfinite(self, step: int) -> Action:
        """Count the event at optimizer step `step` and say what to do; sets `message` when giving up."""
        self.events += 1
        self.consecutive += 1
        if self.policy == "off":
            return "step"
        if self.policy == "halt":
            self.message = f"non-finite loss or gradient norm at step {step}; nan_guard=halt ended the run"
            return "halt"
        if self.consecutive > self.max_consecutive:
            self.message = (f"{self.consecutive} non-finite steps in a row up to step {step}, more than "
                            f"nan_guard.max_consecutive={self.max_consecutive}; nan_guard={self.policy} gave up")
            return "halt"
        return "skip" if self.policy == "skip" else "rollback"

    def state_dict(self) -> dict:
        return {"events": self.events, "consecutive": self.consecutive}

    def load_state_dict(self, state: Mapping) -> None:
        self.events, self.consecutive = int(state["events"]), int(state["consecutive"])


class Snapshot:
    """An in-memory copy of the trainable weights and the optimizer state, for `rollback`."""

    def __init__(self) -> None:
        self._params: dict[str, torch.Tensor] = {}
        self._optimizer: dict = {}

    def take(self, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        self._params = {name: p.detach().clone() for name, p in params.items()}
        self._optimizer = copy.deepcopy(optimizer.state_dict())

    def restore(self, params: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self._params[name])
        optimizer.load_state_dict(copy.deepcopy(self._optimizer))
