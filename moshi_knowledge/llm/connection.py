"""Where an LLM backend is reached and how patiently: one settings node that story, qa and the judge share.

It is a nested node of each (`story.connection.base_url=...`, `eval.judge_connection.timeout_s=...`), so the
same knobs have the same names, defaults and checks wherever an LLM is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moshi_knowledge.errors import UserError


@dataclass
class Connection:  # not frozen: OmegaConf would make the composed node read-only, refusing overrides
    base_url: Optional[str] = None  # an OpenAI-compatible server (vLLM, ...) or a Gemini endpoint; null: the provider
    timeout_s: float = 600.0  # per request
    max_retries: int = 5  # retries of a request that failed with 429, 5xx or a timeout
    backoff_s: float = 2.0  # the first retry's wait; it doubles at each retry
    cache_dir: Optional[str] = None  # replies cached on disk by request; null: none

    def check(self, key: str) -> None:
        """Raise a UserError naming `key`.<setting> for a value no request could use."""
        for name, ok, want in (("timeout_s", self.timeout_s > 0, "a positive number of seconds"),
                               ("max_retries", self.max_retries >= 0, "0 or more"),
                               ("backoff_s", self.backoff_s >= 0, "0 or more seconds")):
            if not ok:
                raise UserError(f"{key}.{name}={getattr(self, name)!r} is invalid", f"set {key}.{name} to {want}")
