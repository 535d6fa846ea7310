"""The stage cache: stable keys, no partial results, and concurrent builders that agree."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import NO_RECALL, QUICK, run_app
from moshi_knowledge.cache import FULL_HASH_LIMIT, MARKER, build_or_reuse, cache_key
from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text


def test_key_depends_on_config_inputs_version_and_file_contents(tmp_path: Path) -> None:
    base = cache_key("qa", "1", {"qa": {"n": 1}}, {"story": "abc"})
    assert base == cache_key("qa", "1", {"qa": {"n": 1}}, {"story": "abc"})
    assert base != cache_key("qa", "1", {"qa": {"n": 2}}, {"story": "abc"})
    assert base != cache_key("qa", "1", {"qa": {"n": 1}}, {"story": "abd"})
    assert base != cache_key("qa", "2", {"qa": {"n": 1}}, {"story": "abc"})
    user_file = tmp_path / "story.txt"
    user_file.write_text("first draft")
    first = cache_key("story", "1", {"story": {"path": str(user_file)}}, {})
    user_file.write_text("second draft")
    assert first != cache_key("story", "1", {"story": {"path": str(user_file)}}, {})


def test_every_file_a_config_names_is_keyed_by_its_contents(tmp_path: Path) -> None:
    """Weights and tokenizer (keys not ending in `path`) count too: a same-size rewrite changes the key."""
    weights, tokenizer = tmp_path / "model.safetensors", tmp_path / "tokenizer.model"
    weights.write_bytes(b"\x01" * 4096)
    tokenizer.write_bytes(b"spm")
    config = {"model": {"moshi_weights": str(weights), "tokenizers": [str(tokenizer)], "device": "auto",
                        "prompt": "Invent a kingdom. " * 30}}  # text too long to be a file name is just text
    first = cache_key("model", "1", config, {})
    weights.write_bytes(b"\x02" * 4096)
    second = cache_key("model", "1", config, {})
    assert second != first
    tokenizer.write_bytes(b"SPM")
    assert cache_key("model", "1", config, {}) not in (first, second)


def _bytes_read() -> int:
    """Bytes this process has read through read() calls so far (Linux /proc accounting)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io to count bytes read")
def test_a_large_file_is_keyed_by_samples_not_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "consolidated.safetensors"
    with big.open("wb") as f:
        f.truncate(6 << 30)  # a sparse 6 GiB file: no disk used, but reading it whole would take many seconds
    assert big.stat().st_size > FULL_HASH_LIMIT
    config = {"model": {"config_path": str(big)}}
    before = _bytes_read()
    first = cache_key("model", "1", config, {})
    assert _bytes_read() - before < 16 << 20

    stat = big.stat()
    with big.open("r+b") as f:  # a different file in the middle, its old mtime kept (as `cp -p` would)
        f.seek(3 << 30)
        f.write(b"changed weights")
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = cache_key("model", "1", config, {})
    assert second != first
    os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten in place, outside the samples
    assert cache_key("model", "1", config, {}) not in (first, second)


def _slow_build(cache: str, counter: str) -> None:
    def build(out: Path) -> None:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (out / "result.txt").write_text("done")

    entry = build_or_reuse(Path(cache), "stage", "k1", {}, build)
    assert (entry.path / "result.txt").read_text() == "done"


def test_two_processes_building_the_same_key_both_succeed_once(tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "c"), str(counter))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(counter.read_text().split()) == 1  # the second process waited and reused the result
    assert (tmp_path / "c" / "stage" / "k1" / "result.txt").read_text() == "done"
    assert not [p for p in (tmp_path / "c" / "stage").iterdir() if p.name.startswith(".tmp")]


def _build_forever(cache: str, key: str = "k2") -> None:
    def build(out: Path) -> None:
        (out / "half.txt").write_text("partial")
        time.sleep(60)

    build_or_reuse(Path(cache), "stage", key, {}, build)


def _start_builder(cache: Path, key: str):
    proc = mp.get_context("spawn").Process(target=_build_forever, args=(str(cache), key))
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline and not list((cache / "stage").glob(f".tmp-{key}-*/half.txt")):
        time.sleep(0.05)
    return proc


def test_a_killed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    proc = _start_builder(tmp_path / "c", "k2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not (tmp_path / "c" / "stage" / "k2").exists()
    # The next build is not fooled by the debris and the lock of the dead process does not block it.
    entry = build_or_reuse(tmp_path / "c", "stage", "k2", {}, lambda out: (out / "ok.txt").write_text("ok"))
    assert entry.computed and (entry.path / MARKER).exists() and (entry.path / "ok.txt").exists()


def test_the_next_build_removes_temp_dirs_of_killed_builds_only(tmp_path: Path) -> None:
    """A killed build's .tmp-* folder is removed by the next build of the stage; a live build's folder stays."""
    stage = tmp_path / "c" / "stage"
    live = _start_builder(tmp_path / "c", "k9")
    killed = _start_builder(tmp_path / "c", "k2")
    os.kill(killed.pid, signal.SIGKILL)
    killed.join()
    try:
        assert len(list(stage.glob(".tmp-k2-*"))) == 1
        build_or_reuse(tmp_path / "c", "stage", "k5", {}, lambda out: (out / "ok.txt").write_text("ok"))
        assert list(stage.glob(".tmp-k2-*")) == []
        assert [p.name for p in stage.glob(".tmp-k9-*")] and list(stage.glob(".tmp-k9-*/half.txt"))
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.join()


def test_a_failing_build_raises_and_leaves_no_entry(tmp_path: Path) -> None:
    def build(out: Path) -> None:
        (out / "x").write_text("x")
        raise RuntimeError("boom")

    try:
        build_or_reuse(tmp_path, "stage", "k3", {}, build)
    except RuntimeError:
        pass
    assert not (tmp_path / "stage" / "k3").exists()
    assert not list((tmp_path / "stage").glob(".tmp-*"))


# ---- modes: what the team sharing a run directory or a cache can read ------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _unreadable(root: Path) -> list[str]:
    """Files not readable, and dirs not listable, by group and others (symlinks to cache entries are skipped)."""
    bad = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        need = 0o055 if path.is_dir() else 0o044
        if path.stat().st_mode & need != need:
            bad.append(f"{oct(path.stat().st_mode & 0o777)} {path.relative_to(root)}")
    return bad


def test_atomic_writes_and_published_entries_get_the_modes_of_open_and_mkdir(tmp_path: Path, umask_022) -> None:
    """0o644 files and 0o755 dirs under umask 022, as open() and mkdir() give, not tempfile's private 0o600/0o700."""
    written = [atomic_write_text(tmp_path / "a.txt", "a"), atomic_write_json(tmp_path / "b.json", {"b": 1}),
               atomic_write_bytes(tmp_path / "deep" / "c.bin", b"c")]
    atomic_write_text(tmp_path / "a.txt", "replaced")  # a rewrite keeps the mode too
    assert [oct(p.stat().st_mode & 0o777) for p in written] == ["0o644"] * 3
    entry = build_or_reuse(tmp_path / "cache", "stage", "k1", {}, lambda out: atomic_write_text(out / "x.txt", "x"))
    assert oct(entry.path.stat().st_mode & 0o777) == "0o755"
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in entry.path.iterdir()} == {"x.txt": "0o644",
                                                                                       MARKER: "0o644"}
    os.umask(0o002)  # a team's umask: group-writable too
    assert oct(atomic_write_text(tmp_path / "d.txt", "d").stat().st_mode & 0o777) == "0o664"


@pytest.mark.slow
def test_a_run_leaves_its_files_and_its_cache_readable_by_the_team(tmp_path: Path, umask_022) -> None:
    """The real app under umask 022, building every stage: summary.json, metrics.jsonl, stages.json, the adapter
    (peft/ included), checkpoints and each cache entry are group/other readable."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    done = run_app([*QUICK, NO_RECALL, "logger=none", f"paths.cache_dir={cache}", f"hydra.run.dir={run}"],
                   cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in ("summary.json", "metrics.jsonl", "stages.json", "adapter/peft", "checkpoints"):
        assert (run / name).exists(), name
    assert len(list(cache.glob(f"*/*/{MARKER}"))) == 6  # story, qa, tts, dataset, model, tokenize
    assert _unreadable(run) == [] and _unreadable(cache) == []
