"""Atomic file writes: a killed process never leaves a half-written file that looks complete.

The temp files and dirs are created as `open()` and `mkdir()` create them (0o666 / 0o777 less the umask, so
0o644 / 0o755 under the usual 022), not with tempfile's private 0o600 / 0o700: run directories and a shared stage
cache stay readable by the team that shares them.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


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
