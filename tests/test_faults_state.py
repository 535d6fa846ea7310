"""Faults of state and environment: damaged cache entries are rebuilt, a full or read-only disk and an unreadable
file end in one sentence (exit 2) instead of a traceback, and summary.json then says `failed` with it."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_RECALL, QUICK, TINY_RUN, compose_cfg
from moshi_knowledge.cache import damage as entry_damage
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.stages import run_stages

# What each stage's damage does to its entry's main file: garbage, truncation, a missing part.
DAMAGE = {
    "story": ("story.txt", lambda p: p.write_bytes(b"\x00\xff garbage")),
    "qa": ("qa.json", lambda p: p.write_text("not json at all")),
    "tts": ("index.json", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
    "dataset": ("conversations.json", lambda p: p.write_text("[]")),
    "model": ("config.json", lambda p: p.unlink()),
    "tokenize": ("index.json", lambda p: p.write_text("{}")),
}


def _copy(cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, ignore=shutil.ignore_patterns("*.lock"))
    return copy


@pytest.fixture(scope="module")
def entry_names(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The cache entry each stage of TINY_RUN reuses (the shared cache holds other tests' entries too)."""
    entries = run_stages(_cfg(tiny_cache, "[tokenize]"), tmp_path_factory.mktemp("names") / "run")
    return {stage: entry.path.name for stage, entry in entries.items()}


def _entry(cache: Path, stage: str, names: dict[str, str]) -> Path:
    return cache / stage / names[stage]


def _cfg(cache: Path, stages: str):
    return compose_cfg([*TINY_RUN, f"paths.cache_dir={cache}", "logger=none", f"stages={stages}"])


def test_every_damaged_stage_entry_is_named_and_rebuilt(tiny_cache: Path, entry_names: dict[str, str],
                                                        tmp_path: Path, caplog) -> None:
    cache = _copy(tiny_cache, tmp_path)
    for stage, (name, damage) in DAMAGE.items():
        damage(_entry(cache, stage, entry_names) / name)
    with caplog.at_level(logging.WARNING, logger="moshi_knowledge.cache"):
        run_stages(_cfg(cache, "[tokenize]"), tmp_path / "run")
    record = {r["stage"]: r["computed"] for r in read_json(tmp_path / "run" / "stages.json")}
    assert record == {stage: True for stage in ("story", "qa", "tts", "dataset", "model", "tokenize")}
    warned = "\n".join(r.getMessage() for r in caplog.records)
    for stage, (name, _) in DAMAGE.items():
        assert f"{_entry(cache, stage, entry_names)} is damaged ({name} " in warned
    for stage, (name, _) in DAMAGE.items():  # rebuilt whole, and intact by the fingerprints of the rebuild
        entry = _entry(cache, stage, entry_names)
        assert (entry / name).is_file() and entry_damage(entry) is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no questions list", "a question without its tier"])
def test_a_damaged_questions_file_is_rebuilt_before_it_is_read(tiny_cache: Path, entry_names: dict[str, str],
                                                               tmp_path: Path, damage: str, caplog) -> None:
    cache = _copy(tiny_cache, tmp_path)
    path = _entry(cache, "dataset", entry_names) / "questions.json"
    original = path.read_bytes()
    data = json.loads(original)
    if damage == "garbage":
        path.write_bytes(os.urandom(200))
    elif damage == "truncated":
        path.write_bytes(original[: len(original) // 3])
    elif damage == "no questions list":
        path.write_text(json.dumps({k: v for k, v in data.items() if k != "questions"}))
    else:
        del data["questions"][0]["tier"]
        path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="moshi_knowledge.cache"):
        run_stages(_cfg(cache, "[dataset]"), tmp_path / "run")
    assert "is damaged (questions.json changed since it was published); rebuilding it" in caplog.text
    assert path.read_bytes() == original


def test_a_damaged_entry_that_cannot_be_replaced_is_an_error_naming_it(tiny_cache: Path, entry_names: dict[str, str],
                                                                      tmp_path: Path, monkeypatch) -> None:
    cache = _copy(tiny_cache, tmp_path)
    entry = _entry(cache, "qa", entry_names)
    (entry / "qa.json").write_text("[")
    real_rename = os.rename

    def read_only(src, dst):
        if Path(src) == entry:
            raise OSError(errno.EROFS, "Read-only file system", str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", read_only)
    with pytest.raises(UserError) as err:
        run_stages(_cfg(cache, "[qa]"), tmp_path / "run")
    assert str(entry) in err.value.message and "qa.json changed" in err.value.message
    assert err.value.fix and f"delete {entry}" in err.value.fix


# The real app with one kind of OS call failing under a folder, as a full or read-only disk or an unreadable file
# makes it fail: a test-side wrapper around `python -m moshi_knowledge`, no hook in the app.
FAULTY = """
import builtins, errno, io, os, sys
prefix, code, what = sys.argv[1], getattr(errno, sys.argv[2]), sys.argv[3]
del sys.argv[1:4]
real_open, real_mkdir, real_symlink, real_builtin_open = os.open, os.mkdir, os.symlink, builtins.open

def refuse(path):
    if os.path.abspath(os.fspath(path)).startswith(prefix):
        raise OSError(code, os.strerror(code), os.fspath(path))

def fake_open(path, flags, *args, **kwargs):
    if what == "read" or flags & (os.O_WRONLY | os.O_RDWR):
        refuse(path)
    return real_open(path, flags, *args, **kwargs)

def fake_builtin_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, bytes, os.PathLike)) and (what == "read" or set(mode) & set("wax+")):
        refuse(file)
    return real_builtin_open(file, mode, *args, **kwargs)

def fake_mkdir(path, *args, **kwargs):
    if what == "write":
        refuse(path)
    return real_mkdir(path, *args, **kwargs)

def fake_symlink(src, dst, *args, **kwargs):
    if what == "write":
        refuse(dst)
    return real_symlink(src, dst, *args, **kwargs)

os.open, os.mkdir, os.symlink = fake_open, fake_mkdir, fake_symlink
builtins.open = io.open = fake_builtin_open  # pathlib opens through io.open
sys.argv[0] = "moshi-knowledge"
from moshi_knowledge.__main__ import main
main()
"""


def _faulty_app(tmp_path: Path, prefix: Path, code: str, what: str, args: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty_app.py"
    script.write_text(FAULTY)
    return subprocess.run([sys.executable, str(script), str(prefix.resolve()), code, what, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_full_disk_during_training_is_one_sentence_and_a_failed_status(tiny_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _faulty_app(tmp_path, run / "checkpoints", "ENOSPC", "write",
                       [*QUICK, NO_RECALL, "logger=none", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"])
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert f"no space left on device under {run.resolve()}" in out  # where the checkpoint was being written
    summary = read_json(run / "summary.json")
    assert summary["status"] == "failed"
    assert "no space left on device under" in summary["message"]


@pytest.mark.parametrize("fault", ["read-only cache", "read-only run directory", "unreadable story file"])
def test_read_only_folders_and_unreadable_files_are_one_sentence(tmp_path: Path, fault: str) -> None:
    cache, run, story = tmp_path / "cache", tmp_path / "run", tmp_path / "story.txt"
    story.write_text("Once upon a time there was a small kingdom by the sea, ruled by a queen named Ada.\n" * 3)
    args = ["story=file", f"story.path={story}", "stages=[story]", "logger=none", f"paths.cache_dir={cache}",
            f"hydra.run.dir={run}"]
    prefix, code, what, named = {
        "read-only cache": (cache, "EROFS", "write", f"{tmp_path.resolve()} is on a read-only file system"),
        # the first file the app makes in the run directory (Hydra's own .hydra/ files are written before)
        "read-only run directory": (run / ".story", "EROFS", "write", f"{run.resolve()} is on a read-only file"),
        "unreadable story file": (story, "EACCES", "read", f"{story.resolve()} is not accessible to this user"),
    }[fault]
    done = _faulty_app(tmp_path, prefix, code, what, args)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out[-3000:]
    assert "Traceback" not in out
    assert named in out and "fix:" in out
