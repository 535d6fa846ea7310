"""The stage cache: stable keys, no partial results, and concurrent builders that agree."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from moshi_knowledge.cache import FULL_HASH_LIMIT, MARKER, build_or_reuse, cache_key


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
