"""The data stages end to end, as a user runs them: the app, the cache, the run directory and validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMALL, compose_cfg
from moshi_knowledge.dataset.format import read_manifest
from moshi_knowledge.stages import run_stages


def _app(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moshi_knowledge", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


def test_small_run_links_every_stage_and_builds_a_valid_dataset(small_data_run) -> None:
    cfg, run_dir, entries = small_data_run
    assert [r["stage"] for r in json.loads((run_dir / "stages.json").read_text())] == ["story", "qa", "tts", "dataset"]
    data = run_dir / "dataset"
    assert data.is_symlink() and (data / "train.jsonl").is_file()
    train, evals = read_manifest(data / "train.jsonl"), read_manifest(data / "eval.jsonl")
    assert train and evals
    questions = json.loads((data / "questions.json").read_text())["questions"]
    tiers = [q["tier"] for q in questions]
    assert tiers.count("train") == 12 and tiers.count("eval") == 4 and tiers.count("paraphrase") == 12
    assert all((data / q["audio"]).is_file() for q in questions)
    done = subprocess.run([sys.executable, "-m", "moshi_knowledge.validate", str(data)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_second_run_does_no_work_and_a_tts_change_reruns_only_tts_and_after(small_data_run, tmp_path) -> None:
    cfg, _, first = small_data_run
    wav = next((first["tts"].path).glob("*.wav"))
    mtime = wav.stat().st_mtime_ns
    again = run_stages(cfg, tmp_path / "again")
    assert not any(e.computed for e in again.values())
    assert {k: e.path for k, e in again.items()} == {k: e.path for k, e in first.items()}
    assert wav.stat().st_mtime_ns == mtime

    changed = compose_cfg([*SMALL, f"paths.cache_dir={cfg.paths.cache_dir}", "tts.moshi_voice.rate=140"])
    rerun = run_stages(changed, tmp_path / "changed")
    assert {k: e.computed for k, e in rerun.items()} == {
        "story": False, "qa": False, "tts": True, "dataset": True}

    layout_knob = compose_cfg([*SMALL, f"paths.cache_dir={cfg.paths.cache_dir}", "layout.gap_sec=0.7"])
    relaid = run_stages(layout_knob, tmp_path / "relaid")
    assert {k: e.computed for k, e in relaid.items()} == {
        "story": False, "qa": False, "tts": False, "dataset": True}


def test_replacing_a_local_models_weights_rebuilds_its_stage(small_data_run, tmp_path) -> None:
    """model=local: the weight files are part of the model stage's key (and so of tokenize's), even at one size."""
    cfg, _, _ = small_data_run
    files = {name: tmp_path / name for name in ("moshi.safetensors", "mimi.safetensors", "tokenizer.model")}
    for path in files.values():
        path.write_bytes(b"v1" * 1000)
    local = compose_cfg([*SMALL, f"paths.cache_dir={cfg.paths.cache_dir}", "stages=[model]", "model=local",
                         f"model.moshi_weights={files['moshi.safetensors']}",
                         f"model.mimi_weights={files['mimi.safetensors']}",
                         f"model.tokenizer={files['tokenizer.model']}"])
    first = run_stages(local, tmp_path / "first")["model"]
    assert run_stages(local, tmp_path / "again")["model"].key == first.key
    files["moshi.safetensors"].write_bytes(b"v2" * 1000)  # a finetuned checkpoint written over the old one
    rebuilt = run_stages(local, tmp_path / "rebuilt")["model"]
    assert rebuilt.computed and rebuilt.key != first.key


@pytest.mark.slow
def test_two_app_processes_on_one_cache_both_succeed(tmp_path: Path) -> None:
    args = [*SMALL, "qa.n_train=6", "qa.n_eval=2", f"paths.cache_dir={tmp_path / 'cache'}"]
    procs = [subprocess.Popen([sys.executable, "-m", "moshi_knowledge", *args, f"hydra.run.dir={tmp_path / f'r{i}'}"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    records = [json.loads((tmp_path / f"r{i}" / "stages.json").read_text()) for i in range(2)]
    assert [r["key"] for r in records[0]] == [r["key"] for r in records[1]]
    built = [sum(r["computed"] for r in rec) for rec in records]
    assert sum(built) == 4  # every stage built exactly once across the two processes
    manifests = [(tmp_path / run / "dataset" / "train.jsonl").read_text() for run in ("r0", "r1")]
    assert manifests[0] == manifests[1]


@pytest.mark.slow
def test_user_story_and_qa_files_become_a_valid_dataset(tmp_path: Path) -> None:
    story = tmp_path / "story.txt"
    story.write_text("In the valley of Orvane, the river Selt runs past the town of Quillby.\n")
    pairs = [{"question": f"What is riddle number {i}?", "answer": f"Answer {i}"} for i in range(6)]
    (tmp_path / "train.json").write_text(json.dumps(pairs))
    (tmp_path / "eval.json").write_text(json.dumps([{"question": "Which river passes Quillby?", "answer": "Selt"}]))
    done = _app(["stages=[story,qa,tts,dataset]", "story=file", f"story.path={story}", "qa=file",
                 f"qa.train_path={tmp_path / 'train.json'}",
                 f"qa.eval_path={tmp_path / 'eval.json'}", f"paths.cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    questions = json.loads((tmp_path / "run" / "dataset" / "questions.json").read_text())["questions"]
    assert sorted(q["gold"] for q in questions if q["tier"] == "eval") == ["Selt"]
    assert len([q for q in questions if q["tier"] == "train"]) == 6


def test_bad_input_exits_non_zero_with_the_fix_and_no_traceback(tmp_path: Path) -> None:
    done = _app(["story=file", f"story.path={tmp_path / 'nope.txt'}", "stages=[story]",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 2
    assert "nope.txt" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "cache" / "story").exists() or not [
        p for p in (tmp_path / "cache" / "story").iterdir() if not p.name.endswith(".lock")]


def test_a_question_asked_twice_with_two_answers_stops_the_app_plainly(tmp_path: Path) -> None:
    story = tmp_path / "story.txt"
    story.write_text("Ysolde rules Varn.\n")
    (tmp_path / "train.json").write_text(json.dumps([{"question": "Who rules Varn?", "answer": "Ysolde"}] * 2))
    (tmp_path / "eval.json").write_text(json.dumps([{"question": "Who rules Varn?", "answer": "Orrin"}]))
    done = _app(["stages=[story,qa]", "story=file", f"story.path={story}", "qa=file",
                 f"qa.train_path={tmp_path / 'train.json'}", f"qa.eval_path={tmp_path / 'eval.json'}",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "train.json item 0 and qa.eval_path=" in output and "eval.json item 0" in output
    assert "train.json item 1 repeats" in output  # the exact repeat is only a warning
    assert "Traceback" not in output


def test_a_user_error_in_a_constructor_is_reported_plainly(tmp_path: Path) -> None:
    done = _app(["tts.user_voices.0.name=xx-nosuchvoice", f"paths.cache_dir={tmp_path / 'cache'}",
                 "qa.n_train=6", "qa.n_eval=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 2
    assert "tts.user_voices[0]" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unknown_objective_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    done = _app(["objective.metric=recall/eval/accuracy", "stages=[story]", f"paths.cache_dir={tmp_path / 'cache'}",
                 f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in out
    assert "objective.metric='recall/eval/accuracy'" in out and "fix: use a key" in out
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run" / "stages.json").exists()
