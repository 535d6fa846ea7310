"""The stage cache: stable keys, no partial results, and concurrent builders that agree."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from moshi_knowledge.cache import MARKER, build_or_reuse, cache_key


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


def _build_forever(cache: str) -> None:
    def build(out: Path) -> None:
        (out / "half.txt").write_text("partial")
        time.sleep(60)

    build_or_reuse(Path(cache), "stage", "k2", {}, build)


def test_a_killed_build_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_build_forever, args=(str(tmp_path / "c"),))
    proc.start()
    deadline = time.time() + 30
    while time.time() < deadline and not list((tmp_path / "c" / "stage").glob(".tmp-*/half.txt")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not (tmp_path / "c" / "stage" / "k2").exists()
    # The next build is not fooled by the debris and the lock of the dead process does not block it.
    entry = build_or_reuse(tmp_path / "c", "stage", "k2", {}, lambda out: (out / "ok.txt").write_text("ok"))
    assert entry.computed and (entry.path / MARKER).exists() and (entry.path / "ok.txt").exists()


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
