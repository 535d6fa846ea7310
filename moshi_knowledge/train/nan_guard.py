"""What a run does when a step's loss or gradient norm is not finite (the `nan_guard` config group).

Policies: `off` (step anyway, only count), `skip` (drop the update), `rollback` (restore the last good trainable
weights and optimizer state, scale the LR by `lr_factor`), `halt` (end the run, status "diverged"). `skip` and
`rollback` give up, status "diverged", when more than `max_consecutive` events come in a row.
"""

from __future__ import annotations

import copy
from typing import Literal, Mapping

import torch

from moshi_knowledge.errors import UserError

Policy = Literal["off", "skip", "rollback", "halt"]
Action = Literal["step", "skip", "rollback", "halt"]
POLICIES = ("off", "skip", "rollback", "halt")


class NanGuard:
    def __init__(self, policy: Policy = "skip", lr_factor: float = 0.5, max_consecutive: int = 3,
                 snapshot_every: int = 1) -> None:
        if policy not in POLICIES:
            raise UserError(f"nan_guard.policy={policy!r} is unknown", f"choose one of {', '.join(POLICIES)}")
        if not 0.0 < lr_factor <= 1.0 or max_consecutive < 0 or snapshot_every < 1:
            raise UserError(
                f"nan_guard: lr_factor={lr_factor}, max_consecutive={max_consecutive}, "
                f"snapshot_every={snapshot_every} out of range",
                "use 0 < lr_factor <= 1, max_consecutive >= 0, snapshot_every >= 1",
            )
        self.policy, self.lr_factor = policy, lr_factor
        self.max_consecutive, self.snapshot_every = max_consecutive, snapshot_every
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
