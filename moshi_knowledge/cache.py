"""Content-addressed stage cache: keys, locks and atomic publish. The only code that knows about caching.

A stage's key hashes its name, version, resolved config and its inputs' keys. Its output is built in a
temp dir and renamed into place, so a killed stage leaves nothing that looks complete (its temp dir is removed by
the next build of that stage on the host, under the lock); a file lock makes a second process computing the same
key wait and then reuse the result. The marker records every file's fingerprint at publish time, and each reuse
checks them: an entry damaged since (a disk fault, a hand edit) is named in a warning and rebuilt, instead of
crashing a later stage with a JSON error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_json

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"  # .tmp-<key>-<host>-<pid>-<random>: a build in progress, or debris of a killed one
MARKER = ".stage.json"  # written last inside the temp dir; its presence in a final dir means complete
FULL_HASH_LIMIT = 64 << 20  # files up to this size (stories, Q/A files, tiny checkpoints) are hashed whole
SAMPLE_BLOCK = 1 << 20


def file_fingerprint(path: Path) -> dict[str, Any]:
    """What a file named by a config adds to its stage's key: enough to notice any change of its contents.

    A small file is hashed whole (exact, and cheap). A large one (a 15 GB Moshi checkpoint) would take minutes to
    hash on every run, so it is keyed by its size, its mtime_ns and a sha256 of three 1 MiB blocks (start, middle,
    end): a rewritten file has a new mtime, and a different checkpoint copied with its old mtime kept
    (`cp -p`, rsync) differs in the sampled weight blocks. Touching a large file therefore rebuilds its stages.
    """
    stat = path.stat()
    size = stat.st_size
    if size <= FULL_HASH_LIMIT:
        return {"sha256": _digest(path, [(0, size)])}
    blocks = [(offset, SAMPLE_BLOCK) for offset in (0, (size - SAMPLE_BLOCK) // 2, size - SAMPLE_BLOCK)]
    return {"size": size, "mtime_ns": stat.st_mtime_ns, "sampled_sha256": _digest(path, blocks)}


def _digest(path: Path, spans: list[tuple[int, int]]) -> str:
    """sha256 of the file's bytes in `spans` (offset, length), read 1 MiB at a time."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for offset, length in spans:
            f.seek(offset)
            while length > 0:
                block = f.read(min(length, SAMPLE_BLOCK))
                if not block:
                    break
                h.update(block)
                length -= len(block)
    return h.hexdigest()


def _with_file_contents(node: Any) -> Any:
    """Every string of the config that names an existing file also contributes the file's fingerprint, so
    editing a user's story or Q/A file, or replacing `model.moshi_weights`, invalidates the stages that read it
    even though the path did not change. (os.path.isfile, unlike Path.is_file, is simply False for a long
    prompt or other text that cannot be a file name.)"""
    if isinstance(node, dict):
        return {k: _with_file_contents(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_file_contents(v) for v in node]
    if isinstance(node, str) and os.path.isfile(node):
        return {"path": node, **file_fingerprint(Path(node))}
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


def _temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made a temp dir; None for a name in another format (left alone)."""
    try:
        head, pid, _ = name[len(TMP_PREFIX):].rsplit("-", 2)
        _, host = head.split("-", 1)
        return host, int(pid)
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_dead_temps(stage_dir: Path) -> None:
    """Remove the temp dirs that killed builds of this host left behind. Called under a key's lock; a temp dir of a
    live process, or of another host (a shared cache), is another build in progress and stays."""
    host = socket.gethostname()
    for tmp in stage_dir.glob(f"{TMP_PREFIX}*"):
        owner = _temp_owner(tmp.name)
        if owner is not None and owner[0] == host and not _alive(owner[1]):
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class CacheEntry:
    stage: str
    key: str
    path: Path
    computed: bool  # False when an earlier run (or a concurrent process) had already built it


def _manifest(entry: Path) -> dict[str, dict[str, Any]]:
    """The fingerprint of every file of a built entry (its marker aside), by path relative to the entry."""
    return {p.relative_to(entry).as_posix(): file_fingerprint(p)
            for p in sorted(entry.rglob("*")) if p.is_file() and p.name != MARKER}


def damage(entry: Path) -> str | None:
    """Why a published entry cannot be trusted any more (a file missing or changed since its marker was written,
    or an unreadable marker); None when it is intact. An entry whose marker predates the manifest is trusted."""
    try:
        record = json.loads((entry / MARKER).read_text(encoding="utf-8"))
        files = record.get("files") if isinstance(record, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its {MARKER} cannot be read ({type(err).__name__})"
    for name, fingerprint in (files or {}).items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_fingerprint(path) != fingerprint:
            return f"{name} changed since it was published"
    return None


def _discard(final: Path, reason: str) -> None:
    """Move a damaged entry out of the way (a rename, so no reader sees it half-deleted), then delete it."""
    stage_dir = final.parent
    try:
        trash = stage_dir / f"{TMP_PREFIX}{final.name}-{socket.gethostname()}-{os.getpid()}-damaged"
        os.rename(final, trash)
    except OSError as err:
        raise UserError(f"cache entry {final} is damaged ({reason}) and cannot be rebuilt: {err.strerror}",
                        f"delete {final} (or make {stage_dir} writable) and rerun") from None
    shutil.rmtree(trash, ignore_errors=True)


def build_or_reuse(
    cache_dir: Path, stage: str, key: str, record: dict[str, Any], build: Callable[[Path], None]
) -> CacheEntry:
    """Return the cached output of `stage` at `key`, building it with `build(tmp_dir)` if absent or damaged."""
    stage_dir = Path(cache_dir) / stage
    final = stage_dir / key
    if (final / MARKER).exists():
        reason = damage(final)
        if reason is None:
            return CacheEntry(stage, key, final, computed=False)
        log.warning("cache entry %s is damaged (%s); rebuilding it", final, reason)
    stage_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(stage_dir / f"{key}.lock")):
        if (final / MARKER).exists():
            reason = damage(final)  # again under the lock: another process may have rebuilt it meanwhile
            if reason is None:
                return CacheEntry(stage, key, final, computed=False)
            _discard(final, reason)
        if final.exists():  # a directory without its marker is debris of a killed run
            shutil.rmtree(final)
        _remove_dead_temps(stage_dir)
        tmp = stage_dir / f"{TMP_PREFIX}{key}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            atomic_write_json(tmp / MARKER, {"stage": stage, "key": key, **record, "files": _manifest(tmp)})
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return CacheEntry(stage, key, final, computed=True)
