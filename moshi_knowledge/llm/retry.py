"""Retries with exponential backoff for transient failures (429, 5xx, timeouts, dropped connections).

Both SDKs can retry on their own, but with different knobs; we turn theirs off and retry here so that
`max_retries` and `backoff_s` mean the same for every provider, and tests can set the backoff near zero.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from moshi_knowledge.errors import UserError

T = TypeVar("T")
MAX_BACKOFF_S = 60.0
log = logging.getLogger(__name__)


def retry_after_s(exc: BaseException) -> float | None:
    """The server's Retry-After (seconds), when the error carries an HTTP response that sends one."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def with_retries(
    call: Callable[[], T],
    transient: Callable[[BaseException], str | None],
    *,
    max_retries: int,
    backoff_s: float,
    label: str,
    fix: str,
) -> T:
    """Run `call`; when `transient(exc)` names a reason, wait and try again, at most `max_retries` times."""
    for attempt in range(max_retries + 1):
        try:
            return call()
        except Exception as exc:
            reason = transient(exc)
            if reason is None:
                raise
            if attempt == max_retries:
                raise UserError(
                    f"{label}: gave up after {max_retries} retries; last failure: {reason}", fix,
                ) from exc
            delay = min(MAX_BACKOFF_S, backoff_s * 2**attempt * (1 + 0.1 * random.random()))
            delay = max(delay, min(MAX_BACKOFF_S, retry_after_s(exc) or 0.0))
            log.warning("%s: %s; retry %d/%d in %.1f s", label, reason, attempt + 1, max_retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
