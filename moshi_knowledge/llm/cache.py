"""On-disk cache of LLM responses, keyed by the full request, so a sweep never pays twice and a rerun is offline.

The request (provider, endpoint, model, sampling settings, messages, output schema) is hashed; the API
key is never part of it, so it never reaches the cache. Each entry stores the request beside the
response, which makes the cache auditable and guards against hash collisions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from moshi_knowledge.io_utils import atomic_write_json, read_json

CACHE_VERSION = 1  # bump when the meaning of a cached response changes


def request_key(request: dict[str, Any]) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **request}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """`root=None` disables caching (every call goes to the network)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root else None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, request: dict[str, Any]) -> str | None:
        if self.root is None:
            return None
        path = self._path(request_key(request))
        if not path.is_file():
            return None
        entry = read_json(path)
        return entry["response"] if entry.get("request") == _json_roundtrip(request) else None

    def put(self, request: dict[str, Any], response: str) -> None:
        if self.root is not None:
            atomic_write_json(self._path(request_key(request)), {"request": request, "response": response})


def _json_roundtrip(obj: Any) -> Any:
    """The request as it reads back from JSON (tuples become lists), for comparison with a stored entry."""
    return json.loads(json.dumps(obj, ensure_ascii=False))
