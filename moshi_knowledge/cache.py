"""Content-addressed stage cache: keys, locks and atomic publish. The only code that knows about caching.

A stage's key hashes its name, version, resolved config and its inputs' keys. Its output is built in a
temp dir and renamed into place, so a killed stage leaves nothing that looks complete; a file lock makes
a second process computing the same key wait and then reuse the result.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from moshi_knowledge.io_utils import atomic_write_json

MARKER = ".stage.json"  # written last inside the temp dir; its presence in a final dir means complete


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _with_file_contents(node: Any, key: str = "") -> Any:
    """Config values under keys ending in `path` that name files also contribute the file's hash,
    so editing a user's story or Q/A file invalidates the cache even though its path did not change."""
    if isinstance(node, dict):
        return {k: _with_file_contents(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_file_contents(v, key) for v in node]
    if isinstance(node, str) and key.endswith("path") and Path(node).is_file():
        return {"path": node, "sha256": _file_digest(Path(node))}
    return node


def cache_key(stage: str, version: str, config: Any, input_keys: dict[str, str], extra: str = "") -> str:
    material = {
        "stage": stage,
        "version": version,
        "config": _with_file_contents(config),
        "inputs": dict(sorted(input_keys.items())),
        "extra": extra,
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class CacheEntry:
    stage: str
    key: str
    path: Path
    computed: bool  # False when an earlier run (or a concurrent process) had already built it


def build_or_reuse(
    cache_dir: Path, stage: str, key: str, record: dict[str, Any], build: Callable[[Path], None]
) -> CacheEntry:
    """Return the cached output of `stage` at `key`, building it with `build(tmp_dir)` if absent."""
    stage_dir = Path(cache_dir) / stage
    final = stage_dir / key
    if (final / MARKER).exists():
        return CacheEntry(stage, key, final, computed=False)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(stage_dir / f"{key}.lock")):
        if (final / MARKER).exists():
            return CacheEntry(stage, key, final, computed=False)
        if final.exists():  # a directory without its marker is debris of a killed run
            shutil.rmtree(final)
        tmp = stage_dir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            atomic_write_json(tmp / MARKER, {"stage": stage, "key": key, **record})
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CacheEntry(stage, key, final, computed=True)
