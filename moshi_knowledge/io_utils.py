"""Atomic file writes: a killed process never leaves a half-written file that looks complete.

The temp files and dirs are created as `open()` and `mkdir()` create them (0o666 / 0o777 less the umask, so
0o644 / 0o755 under the usual 022), not with tempfile's private 0o600 / 0o700: run directories and a shared stage
cache stay readable by the team that shares them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moshi_knowledge.errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_ALLOWED = (errno.EROFS, errno.EACCES, errno.EPERM)


def temp_path_beside(path: Path) -> Path:
    """A fresh hidden name in `path`'s directory, for a file or dir renamed onto `path` once complete."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the mode open() gives: 0o666 less the umask
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _existing_dir(path: Path) -> Path:
    """`path`'s nearest folder that exists and is not one of our temp folders (the one a failed write was in)."""
    for folder in (path, *path.parents):
        if folder.is_dir() and not folder.name.startswith(".tmp-") and not folder.name.endswith(".tmp"):
            return folder
    return path


def environment_error(err: OSError) -> UserError | None:
    """A full disk, a read-only folder or a file we may not read, as one sentence naming the place and the fix;
    None for any other OSError (a bug, not the machine's state)."""
    where = Path(err.filename) if err.filename else None
    if err.errno in _NO_SPACE:
        folder = _existing_dir(where.parent) if where else Path.cwd()
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free there"
        except OSError:
            free = "its free space unknown"
        return UserError(f"no space left on device under {folder} ({free}); nothing written so far is lost",
                         "free space on that disk (or point paths.cache_dir / hydra.run.dir to another one) and "
                         "rerun the same command: finished stages and checkpoints are reused")
    if err.errno in _NOT_ALLOWED:
        reason = "is on a read-only file system" if err.errno == errno.EROFS else "is not accessible to this user"
        place = str(where) if where else "a file of the run"
        if where is not None and not where.exists():  # a file about to be made: the folder refused it
            place = str(_existing_dir(where.parent))
        return UserError(f"{place} {reason} ({err.strerror})",
                         "make it readable and writable for you (chmod/chown), or point paths.cache_dir / "
                         "hydra.run.dir to a writable folder, and rerun the same command")
    return None


@contextlib.contextmanager
def explain_os_errors() -> Iterator[None]:
    """Turn an environment fault (ENOSPC, EROFS, EACCES) inside the block into a UserError: the user reads which
    folder and what to do, not a traceback. Any other OSError propagates unchanged."""
    try:
        yield
    except OSError as err:
        explained = environment_error(err)
        if explained is None:
            raise
        raise explained from err
