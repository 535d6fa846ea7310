"""What nan_guard=... sets: the policy and its limits, with the schema of the option registered from here. Free of
torch, so a config composes without importing it; train/nan_guard.py acts on the settings.

`policy` is a str, not a Literal: OmegaConf cannot type a Literal, so the policy is checked here when the guard is
built (preflight builds it before the first stage).
"""

from __future__ import annotations

from dataclasses import dataclass

from moshi_knowledge.errors import UserError

POLICIES = ("off", "skip", "rollback", "halt")


@dataclass
class NanGuardSpec:
    """The guard's settings and their checks; the policies are described in train/nan_guard.py."""

    policy: str = "skip"  # one of POLICIES
    lr_factor: float = 0.5
    max_consecutive: int = 3
    snapshot_every: int = 1  # optimizer steps between the snapshots `rollback` restores

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise UserError(f"nan_guard.policy={self.policy!r} is unknown", f"choose one of {', '.join(POLICIES)}")
        if not 0.0 < self.lr_factor <= 1.0 or self.max_consecutive < 0 or self.snapshot_every < 1:
            raise UserError(
                f"nan_guard: lr_factor={self.lr_factor}, max_consecutive={self.max_consecutive}, "
                f"snapshot_every={self.snapshot_every} out of range",
                "use 0 < lr_factor <= 1, max_consecutive >= 0, snapshot_every >= 1",
            )


@dataclass
class NanGuardSchema(NanGuardSpec):
    _target_: str = "moshi_knowledge.train.nan_guard.NanGuard"


SCHEMAS = {("nan_guard", "nan_guard_schema"): NanGuardSchema}
