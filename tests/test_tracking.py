"""Tracker: run-dir files with and without W&B, one W&B run per job, clean finish, no secrets; sweep configs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import wandb
import yaml
from hydra import compose, initialize_config_dir

from conftest import NO_RECALL, QUICK, REPO, compose_cfg, run_app
from moshi_knowledge.config_schema import SCHEMAS
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.metrics import recall_stats
from moshi_knowledge.sweep_report import main as report_main
from moshi_knowledge.tracking.contract import check_objective, objective_value
from moshi_knowledge.tracking.files import MetricsFile, read_metrics
from moshi_knowledge.tracking.identity import RunIdentity, choice_tags, run_identity_from_hydra, run_name, swept_keys
from moshi_knowledge.tracking.secrets import is_secret_name, is_secret_override, loggable_config
from moshi_knowledge.tracking.sinks import AudioClip, WandbSink
from moshi_knowledge.tracking.tracker import Tracker
from wandb_offline import decode_only

WANDB_OFFLINE = {"_target_": "moshi_knowledge.tracking.sinks.WandbSink", "mode": "offline", "project": "test"}
WANDB_VARS = {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p-env", "WANDB_ENTITY": "e-env", "WANDB_DIR": "/d-env"}


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _offline_run_ids(run_dir: Path) -> set[str]:
    """Run ids of the offline W&B runs stored in run_dir (directory names end in the id; no .wandb reader exists,
    docs/tools.md)."""
    dirs = list((run_dir / "wandb").glob("offline-run-*"))
    assert all(any(d.glob("run-*.wandb")) for d in dirs), dirs
    return {d.name.rsplit("-", 1)[1] for d in dirs}


# ---- files, whatever the logger ---------------------------------------------------------------------------------


def test_files_only_logger_writes_metrics_and_summary(tmp_path: Path) -> None:
    with Tracker(None, tmp_path, {"lr": 1e-3}, RunIdentity.standalone("r")) as tracker:
        tracker.log({"step": 1, "train/loss": np.float32(2.5), "train/lr": 1e-3})
        tracker.log({"step": 2, "train/loss": float("nan"), "nan_guard/events": np.int64(1)})
        tracker.log({"step": 2, "eval/loss": 2.0})
        tracker.summary({"recall/eval/mc_acc": 0.75})
        assert _summary(tmp_path)["status"] == "running"
        tracker.table("predictions", [{"q": "who?", "ok": True}])  # no logger: nothing to do, must not fail
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 2]
    assert rows[0]["train/loss"] == 2.5 and rows[1]["train/loss"] is None  # NaN is written as null
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    summary = _summary(tmp_path)
    assert summary["status"] == "completed"
    assert summary["recall/eval/mc_acc"] == 0.75
    assert summary["eval/loss"] == 2.0 and summary["nan_guard/events"] == 1 and summary["step"] == 2
    assert summary["train/loss"] is None  # the last logged value, non-finite
    assert not (tmp_path / "wandb").exists()
    assert tracker.values["status"] == "completed"


def test_a_status_set_by_the_run_is_kept_and_is_not_an_objective(tmp_path: Path) -> None:
    with Tracker(None, tmp_path) as tracker:
        tracker.log({"step": 3, "train/loss": 1e9})
        tracker.summary({"status": "diverged", "message": "halted", "recall/eval/mc_acc": 0.5})
    assert tracker.values["status"] == "diverged"
    assert objective_value(tracker.values, "recall/eval/mc_acc") is None
    assert objective_value({**tracker.values, "status": "completed"}, "recall/eval/mc_acc") == 0.5
    assert objective_value({"status": "completed", "recall/eval/mc_acc": None}, "recall/eval/mc_acc") is None


def test_objective_is_any_reported_key_with_a_direction() -> None:
    tiers = ["train", "paraphrase", "eval"]
    for metric in ("recall/paraphrase/mc_acc", "eval/loss", "recall/train/mc_rank", "recall/eval/delta"):
        check_objective(metric, "max", tiers, recall_stats())
    assert objective_value({"status": "completed", "eval/loss": 1.5}, "eval/loss") == 1.5
    for metric in ("recall/eval/accuracy", "recall/retain/mc_acc", "eval/los", "eval"):
        with pytest.raises(UserError, match=f"(?s)objective.metric='{metric}'.*eval.tiers"):
            check_objective(metric, "max", tiers, recall_stats())
    with pytest.raises(UserError, match="(?s)objective.mode='maximize'.*max or min"):
        check_objective("eval/loss", "maximize", tiers, recall_stats())


def test_rows_need_an_integer_step(tmp_path: Path) -> None:
    with Tracker(None, tmp_path) as tracker:
        with pytest.raises(ValueError, match="step"):
            tracker.log({"train/loss": 1.0})


def test_resume_keeps_rows_up_to_the_checkpoint_and_clears_the_old_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with Tracker(None, tmp_path) as tracker:
            for step in range(1, 6):
                tracker.log({"step": step, "train/loss": 1.0 / step})
            raise RuntimeError("preempted")
    assert _summary(tmp_path)["status"] == "failed"
    with Tracker(None, tmp_path) as tracker:
        tracker.keep_until(3)  # the checkpoint was at step 3
        tracker.log({"step": 4, "train/loss": 0.2})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]
    summary = _summary(tmp_path)
    assert summary["status"] == "completed" and "message" not in summary


def test_a_killed_run_keeps_its_rows_and_says_running(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from moshi_knowledge.tracking.tracker import Tracker
        tracker = Tracker(None, {str(tmp_path)!r}).__enter__()
        for step in range(3):
            tracker.log({{"step": step, "train/loss": 1.0}})
        os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3
    assert _summary(tmp_path)["status"] == "running"


def test_logger_options_compose_from_the_real_config(tmp_path: Path) -> None:
    prefix = "" if "logger" in compose_cfg() else "+"
    none_cfg = compose_cfg([f"{prefix}logger=none"])
    wandb_cfg = compose_cfg([f"{prefix}logger=wandb", "logger.log_audio=2"])
    assert wandb_cfg.logger.mode is None and wandb_cfg.logger.log_audio == 2  # null: WANDB_MODE, else offline
    with Tracker(none_cfg.logger, tmp_path, none_cfg) as tracker:
        assert tracker.log_audio == 0 and not tracker.log_adapter and tracker.run_id is None
        tracker.log({"step": 0, "train/loss": 1.0})
    assert _summary(tmp_path)["status"] == "completed"


def test_an_unknown_wandb_mode_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="logger.mode='onlin'"):
        WandbSink(mode="onlin")
    with pytest.raises(UserError, match="logger.mode='onlin'"):  # through the config node, as the app builds it
        Tracker({**WANDB_OFFLINE, "mode": "onlin"}, tmp_path)


def test_wandb_settings_left_null_follow_the_environment_and_given_ones_win(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in WANDB_VARS:
        monkeypatch.delenv(var, raising=False)
    sink = WandbSink()
    assert (sink.mode, sink.project, sink.entity, sink.dir) == ("offline", "moshi-knowledge", None, None)
    for var, value in WANDB_VARS.items():
        monkeypatch.setenv(var, value)
    sink = WandbSink()
    assert (sink.mode, sink.project, sink.entity, sink.dir) == tuple(WANDB_VARS.values())
    sink = WandbSink(mode="offline", project="p", entity="e", dir="/d")
    assert (sink.mode, sink.project, sink.entity, sink.dir) == ("offline", "p", "e", "/d")
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # W&B's older name for offline
    assert WandbSink().mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "onlin")
    with pytest.raises(UserError, match="WANDB_MODE='onlin' is not a W&B mode"):
        WandbSink()
    with pytest.raises(UserError, match="logger.mode='onlin' is not a W&B mode"):
        WandbSink(mode="onlin")


# ---- W&B mirror -----------------------------------------------------------------------------------------------


def test_two_trackers_in_one_process_are_two_offline_runs(tmp_path: Path) -> None:
    ids = []
    for i in range(2):
        run_dir = tmp_path / str(i)
        with Tracker(WANDB_OFFLINE, run_dir, {"job": i}, RunIdentity(f"job{i}", "g")) as tracker:
            assert wandb.run is not None and wandb.run.id == tracker.run_id
            tracker.log({"step": 1, "train/loss": 1.0 + i})
            tracker.log({"step": 1, "eval/loss": 2.0 + i})
        assert wandb.run is None  # finished on exit: the next job cannot reuse it
        ids.append(tracker.run_id)
        assert _offline_run_ids(run_dir) == {tracker.run_id}
        assert _summary(run_dir)["wandb/id"] == tracker.run_id
        assert read_metrics(run_dir / "metrics.jsonl")[0]["train/loss"] == 1.0 + i
    assert ids[0] != ids[1]


def test_a_run_whose_body_raises_is_finished_and_the_next_is_distinct(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(WANDB_OFFLINE, tmp_path / "a") as failed:
            failed.log({"step": 1, "train/loss": 1.0})
            raise RuntimeError("boom")
    assert wandb.run is None
    summary = _summary(tmp_path / "a")
    assert summary["status"] == "failed" and summary["message"] == "RuntimeError: boom"
    with Tracker(WANDB_OFFLINE, tmp_path / "b") as nxt:
        assert wandb.run.id == nxt.run_id != failed.run_id
    assert _offline_run_ids(tmp_path / "b") == {nxt.run_id}


def test_an_interrupted_run_is_marked_preempting_in_wandb(tmp_path: Path, monkeypatch) -> None:
    """What a requeued SLURM job needs: W&B shows the run as preempted, not finished, and it can be resumed."""
    calls: list[tuple[str, object]] = []
    run_cls = wandb.sdk.wandb_run.Run
    mark, finish = run_cls.mark_preempting, run_cls.finish

    def recording_mark(self):
        calls.append(("mark_preempting", None))
        return mark(self)

    def recording_finish(self, exit_code=None, **kwargs):
        calls.append(("finish", exit_code))
        return finish(self, exit_code=exit_code, **kwargs)

    monkeypatch.setattr(run_cls, "mark_preempting", recording_mark)
    monkeypatch.setattr(run_cls, "finish", recording_finish)
    for status, expected in (("interrupted", [("mark_preempting", None), ("finish", 1)]),
                             ("completed", [("finish", 0)])):
        calls.clear()
        with Tracker(WANDB_OFFLINE, tmp_path / status) as tracker:
            tracker.log({"step": 1, "train/loss": 1.0})
            tracker.summary({"status": status})
        assert calls == expected, status
        assert _summary(tmp_path / status)["status"] == status


def test_tables_audio_and_artifacts_reach_the_offline_run(tmp_path: Path) -> None:
    import soundfile as sf

    wav = tmp_path / "conv.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(2400) / 5.0)).astype(np.float32), 24000)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    logger = {**WANDB_OFFLINE, "log_adapter": True}
    with Tracker(logger, tmp_path / "run") as tracker:
        tracker.log({"step": 5, "train/loss": 1.0})
        tracker.table("predictions", [{"question": "who?", "ok": True, "scores": [0.1, 0.9]}])
        tracker.audio("conversation", wav)
        assert tracker.log_adapter and tracker.log_audio == 4
        tracker.artifact(adapter, "adapter")
    files = [p.name for p in (tmp_path / "run" / "wandb").rglob("*") if p.is_file()]
    assert any(name.startswith("predictions") and name.endswith(".table.json") for name in files), files
    assert any(name.endswith(".wav") for name in files), files


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    with Tracker(WANDB_OFFLINE, tmp_path) as first:
        first.log({"step": 1, "train/loss": 1.0})
    with Tracker(WANDB_OFFLINE, tmp_path) as second:
        second.log({"step": 2, "train/loss": 0.5})
    assert first.run_id == second.run_id
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_the_wandb_run_holds_settings_tables_per_step_spoken_answers_and_the_objective(tmp_path: Path) -> None:
    """Decoded from the offline run: a config without Hydra's `_target_` plumbing, no schema tags, a predictions
    and an answers table at each step (step 0 and the end compare), the answers with their audio, and the
    objective under one summary key."""
    config = {"lora": {"_target_": "moshi_knowledge.specs.lora.LoraSpec", "rank": 8},
              "eval": {"_target_": "moshi_knowledge.evaluation.config.EvalConfig", "_convert_": "object",
                       "tiers": [{"_target_": "x.Y", "name": "train"}]},
              "objective": {"metric": "recall/train/mc_acc", "mode": "max"}}
    tags = choice_tags({"lora": "all", "schema/lora@lora": "lora_schema", "hydra/launcher": "basic"})
    clip = AudioClip((0.1 * np.sin(np.arange(2400) / 5.0)).astype(np.float32), 24000, "q1")
    with Tracker(WANDB_OFFLINE, tmp_path, config, RunIdentity("0:lora.rank=8", "sweep-x", tags=tags)) as tracker:
        for step, said in ((0, "uh"), (4, "ada")):
            tracker.table("predictions", [{"qid": "q1", "mc_correct": said == "ada", "candidates": [{"text": "a"}]}],
                          step)
            tracker.table("answers", [{"qid": "q1", "question": "who?", "gold": "Ada", "generated": said,
                                       "audio": clip}], step)
            tracker.log({"step": step, "recall/train/mc_acc": float(said == "ada")})
        tracker.summary({"recall/train/mc_acc": 1.0})
    run = decode_only(tmp_path)
    assert (run.name, run.group, run.tags) == ("0:lora.rank=8", "sweep-x", ["lora:all", "launcher:basic"])
    assert run.config["lora"] == {"rank": 8} and run.config["eval"] == {"tiers": [{"name": "train"}]}
    assert run.summary["objective"] == 1.0 == _summary(tmp_path)["objective"]
    assert sorted(run.tables("predictions")) == [0, 4]
    answers = run.tables("answers")
    assert [answers[s].column("generated") for s in (0, 4)] == [["uh"], ["ada"]]
    for table in answers.values():
        assert table.column("question") == ["who?"] and table.column("gold") == ["Ada"]
        (audio,) = table.column("audio")
        assert audio["_type"] == "audio-file" and table.file(audio).stat().st_size > 4000  # 0.1 s of 16-bit audio


def test_the_objective_is_null_unless_the_run_completed(tmp_path: Path) -> None:
    config = {"objective": {"metric": "eval/loss", "mode": "min"}}
    with Tracker(None, tmp_path / "diverged", config) as tracker:
        tracker.log({"step": 1, "eval/loss": 2.0})
        tracker.summary({"status": "diverged"})
    assert _summary(tmp_path / "diverged")["objective"] is None
    with Tracker(None, tmp_path / "done", config) as tracker:
        tracker.log({"step": 1, "eval/loss": 2.0})
    assert _summary(tmp_path / "done")["objective"] == 2.0


@pytest.mark.slow
def test_wandb_follows_its_environment_in_a_real_sweep_unless_the_config_says_otherwise(
        tiny_cache: Path, tmp_path: Path) -> None:
    """Four jobs in one process (W&B reads its environment only at a process's first init) under WANDB_MODE=disabled,
    WANDB_PROJECT and WANDB_DIR: a null logger.mode takes disabled, logger.mode=offline wins; a null logger.project
    takes WANDB_PROJECT, logger.project=from-config wins; every offline run is stored under WANDB_DIR."""
    home = tmp_path / "wandb_home"
    done = run_app(["-m", *QUICK, NO_RECALL, "logger=wandb", "logger.mode=null,offline",
                    "logger.project=null,from-config", f"paths.cache_dir={tiny_cache}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path,
                   env={"WANDB_MODE": "disabled", "WANDB_PROJECT": "from-env", "WANDB_DIR": str(home)})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    stored = {d.name.rsplit("-", 1)[1]: d for d in (home / "wandb").glob("offline-run-*")}
    jobs, projects = sorted((tmp_path / "sweep").glob("*/summary.json")), {}
    assert len(jobs) == 4
    for job in jobs:
        overrides = (job.parent / ".hydra" / "overrides.yaml").read_text()
        summary = json.loads(job.read_text())
        assert summary["status"] == "completed" and not (job.parent / "wandb").exists()
        run = stored.get(summary["wandb/id"])
        if "logger.mode=offline" not in overrides:
            assert run is None  # disabled: nothing stored
            continue
        project = "from-config" if "logger.project=from-config" in overrides else "env"
        # W&B's log names the run as project/id (its argv, in the .wandb file, holds both names)
        projects[project] = re.findall(rf"finishing run (\S+)/{summary['wandb/id']}",
                                       (run / "logs" / "debug.log").read_text())
    assert projects == {"from-config": ["from-config"], "env": ["from-env"]}
    assert len(stored) == 2


def test_online_without_a_key_is_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(UserError, match="WANDB_API_KEY"):
        with Tracker({**WANDB_OFFLINE, "mode": "online"}, tmp_path / "run"):
            pass
    assert _summary(tmp_path / "run")["status"] == "failed"
    assert wandb.run is None


# ---- secrets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,secret",
    [("api_key", True), ("OPENAI_API_KEY", True), ("apiKey", True), ("hf_token", True), ("db_password", True),
     ("client_secret", True), ("tokenizer", False), ("max_tokens", False), ("keyword", False), ("lr", False)],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_no_secret_reaches_any_file_of_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "sk-canary-7f3a9c2e41b8"
    monkeypatch.setenv("OPENAI_API_KEY", canary)
    monkeypatch.setenv("MOSHI_TEST_CANARY_TOKEN", canary + "-2")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "llm": {"base_url": "http://x/?key=${oc.env:OPENAI_API_KEY}", "api_key": "typed-in-secret-value",
                "model": "benign-marker-5c1d"},
        "hydra": {"run": {"dir": "somewhere"}},
        "tokenizer": "kept.model",
    })
    plain = loggable_config(cfg)
    assert plain == {"llm": {"model": "benign-marker-5c1d"}, "tokenizer": "kept.model"}
    overrides = ["llm.model=m1", f"+llm.base_url=http://x/{canary}", "+llm.api_key=abc"]
    assert [o for o in overrides if not is_secret_override(o)] == ["llm.model=m1"]
    identity = RunIdentity(name=run_name(overrides, 0, "run"), group="g", tags=choice_tags({"story": "procedural"}))
    with pytest.raises(RuntimeError):
        with Tracker(WANDB_OFFLINE, tmp_path, cfg, identity) as tracker:
            tracker.log({"step": 1, "train/loss": 1.0})
            raise RuntimeError(f"request failed for key {canary}")  # errors can echo a key
    assert "***" in _summary(tmp_path)["message"]
    blobs = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert len(blobs) > 5
    for secret in (canary, "typed-in-secret-value"):
        assert not any(secret.encode() in blob for blob in blobs), secret
    # Positive control: the same grep does find config values that belong there (in the binary .wandb file).
    assert any(b"benign-marker-5c1d" in blob for blob in blobs)


# ---- identity -------------------------------------------------------------------------------------------------


def test_identity_outside_hydra_and_from_overrides() -> None:
    assert run_identity_from_hydra("solo") == RunIdentity(name="solo", group="solo", job_type="run", tags=())
    overrides = ["+sweep=lora_rank_lr", "lora.rank=8", "paths.cache_dir=/c", "train.lr=0.001", "hydra.verbose=true"]
    assert run_name(overrides, 3, "x") == "3:lora.rank=8,train.lr=0.001"
    assert run_name(["+sweep=nan_guard"], None, "x") == "x"
    tags = choice_tags({"story": "procedural", "nan_guard": "skip", "experiment": None, "hydra/sweeper": "basic"})
    assert tags == ("story:procedural", "nan_guard:skip")
    # the launcher tag names the launcher that ran the job, also when picked as hydra/launcher=joblib
    tags = choice_tags({"story": "procedural", "launcher": "basic", "hydra/launcher": "joblib"})
    assert tags == ("story:procedural", "launcher:joblib")
    # the schema behind each group's option is plumbing, not a choice
    assert choice_tags({"lora": "all", "schema/lora@lora": "lora_schema"}) == ("lora:all",)


def test_a_sweep_job_is_named_by_what_the_sweep_varies_and_briefly() -> None:
    swept = swept_keys(["lora.rank=8,32", "train.lr=tag(log, interval(1e-5, 1e-2))", "+x=choice(a,b)",
                        "qa.n_train=8", "train.seq_sec=24", "bad=[unclosed"])
    assert swept == {"lora.rank", "train.lr", "x"}
    overrides = ["qa.n_train=8", "lora.rank=8", "train.seq_sec=24", "train.lr=0.000123456789012", "paths.cache_dir=/c"]
    assert run_name(overrides, 12, "x", swept) == "12:lora.rank=8,train.lr=0.0001235"  # an Optuna trial's float
    assert run_name(["train.lr=1e-4"], 0, "x", {"train.lr"}) == "0:train.lr=1e-4"  # kept as typed when shorter
    long = run_name([f"key{i}.setting=value{i}" for i in range(20)], 3, "x")
    assert len(long) == 80 and long.endswith("\u2026")


# ---- sweep and launcher configs, in a tiny Hydra app with the keys they sweep ---------------------------------

TINY_CONFIG = """
defaults:
  - logger: none
  - nan_guard: skip
  - lora: all
  - _self_
  - sweep: null
  - launcher: basic
paths: {runs_dir: runs}
lora: {rank: 8}
train: {lr: 0.001, audio_drop: 0.5, resume: false}
objective: {metric: recall/eval/mc_acc, mode: max}
fake: {diverge_job: -1, fail_job: -1}
hydra:
  callbacks:
    sweeper_defaults: {_target_: moshi_knowledge.sweeper.SweeperDefaults}
"""

# The task stands in for train + eval: loss falls unless lr >= 1 (or it is the diverging job), recall grows with
# rank; it goes through the Tracker and returns the sweep objective exactly as the app does.
TINY_APP = '''
import dataclasses, json, math
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig
from moshi_knowledge.config_schema import register
from moshi_knowledge.tracking.contract import objective_value
from moshi_knowledge.tracking.identity import run_identity_from_hydra
from moshi_knowledge.tracking.tracker import Tracker

register()

@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def app(cfg):
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    identity = run_identity_from_hydra()
    (run_dir / "identity.json").write_text(json.dumps(dataclasses.asdict(identity)))
    diverges = cfg.train.lr >= 1 or hc.job.num == cfg.fake.diverge_job
    with Tracker(cfg.logger, run_dir, cfg, identity) as tracker:
        loss = 3.0
        for step in range(1, 5):
            loss = math.nan if diverges and step >= 3 else loss * (0.7 + cfg.train.lr)
            events = int(diverges and step >= 3)
            tracker.log({"step": step, "train/loss": loss, "nan_guard/events": events})
            if hc.job.num == cfg.fake.fail_job:
                raise RuntimeError("CUDA out of memory")
            if events and cfg.nan_guard.policy in ("halt", "skip"):
                tracker.summary({"status": "diverged", "message": f"non-finite loss at step {step}"})
                break
            tracker.log({"step": step, "eval/loss": loss + 0.5})
        if not diverges:
            acc = min(1.0, cfg.lora.rank / 64 + cfg.train.audio_drop / 10)
            tracker.summary({"recall/eval/mc_acc": acc, "recall/eval/mc_acc_low": acc * 0.8,
                             "recall/eval/mc_acc_high": min(1.0, acc * 1.1), "recall/eval/delta": acc - 0.25,
                             "recall/eval/p_value": 0.01})
        elif cfg.nan_guard.policy == "off":
            tracker.summary({"status": "diverged", "message": "trainable weights are non-finite"})
    return objective_value(tracker.values, cfg.objective.metric)

app()
'''


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_app")
    conf = root / "conf"
    for group in ("sweep", "launcher", "logger", "lora"):
        (conf / group).mkdir(parents=True)
        for src in (REPO / "conf" / group).glob("*.yaml"):
            (conf / group / src.name).write_text(src.read_text())
    (conf / "nan_guard").mkdir()
    for policy in ("off", "skip", "rollback", "halt"):
        (conf / "nan_guard" / f"{policy}.yaml").write_text(f'policy: "{policy}"\n')
    (conf / "config.yaml").write_text(TINY_CONFIG)
    (root / "app.py").write_text(TINY_APP)
    return root


def _multirun(app: Path, *overrides: str) -> Path:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, "app.py", *overrides, f"paths.runs_dir={app / 'runs'}"], cwd=app,
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweeps = sorted((app / "runs" / "sweeps").iterdir(), key=lambda p: p.stat().st_mtime)
    return sweeps[-1]


def _jobs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (REPO / "conf" / "sweep").glob("*.yaml")))
def test_every_swept_key_exists_in_the_real_config(sweep: str) -> None:
    """A key (`lora.rank`) must be a field of a schema of its group; a group (`nan_guard`) must have each option;
    any other key (`seed`) must be in config.yaml."""
    params = yaml.safe_load((REPO / "conf" / "sweep" / f"{sweep}.yaml").read_text())["hydra"]["sweeper"]["params"]
    for key, values in params.items():
        if "." in key:
            group, name = key.split(".", 1)
            fields = {f for (g, _), schema in SCHEMAS.items() if g == group for f in schema.__dataclass_fields__}
            assert name in fields, f"conf/sweep/{sweep}.yaml sweeps {key}, which no {group} schema has"
        elif (REPO / "conf" / key).is_dir():
            for option in str(values).split(","):
                assert (REPO / "conf" / key / f"{option}.yaml").exists(), f"{sweep}: {key}={option}"
        else:  # a root key (`seed`)
            assert key in compose_cfg(), f"conf/sweep/{sweep}.yaml sweeps {key}, which config.yaml lacks"


@pytest.mark.parametrize(
    "launcher,target", [("basic", "BasicLauncher"), ("joblib", "JoblibLauncher"),
                        ("submitit_slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")],
)
def test_launcher_presets_select_their_plugin(tiny_app: Path, launcher: str, target: str) -> None:
    with initialize_config_dir(config_dir=str(tiny_app / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "submitit_slurm":
        assert cfg.train.resume is True and cfg.hydra.launcher.max_num_timeout > 0
        assert cfg.hydra.launcher.gpus_per_node == 1


@pytest.mark.slow
def test_grid_sweep_with_wandb_gives_one_run_per_job(tiny_app: Path) -> None:
    sweep_dir = _multirun(tiny_app, "-m", "sweep=lora_rank_lr", "lora.rank=2,4", "train.lr=0.001,0.003",
                          "logger=wandb")
    jobs = _jobs(sweep_dir)
    assert len(jobs) == 4
    ids = set()
    for job in jobs:
        summary = _summary(job)
        assert summary["status"] == "completed" and len(read_metrics(job / "metrics.jsonl")) == 8
        assert _offline_run_ids(job) == {summary["wandb/id"]}
        ids.add(summary["wandb/id"])
        identity = json.loads((job / "identity.json").read_text())
        assert identity["group"] == sweep_dir.name and identity["job_type"] == "sweep"
        assert identity["name"].startswith(f"{job.name}:lora.rank=")
        assert {"sweep:lora_rank_lr", "logger:wandb", "nan_guard:skip"} <= set(identity["tags"])
    assert len(ids) == 4


@pytest.mark.slow
def test_nan_guard_sweep_under_joblib_ends_diverged_jobs_with_their_status(tiny_app: Path) -> None:
    sweep_dir = _multirun(tiny_app, "sweep=nan_guard", "launcher=joblib")
    statuses = {}
    for job in _jobs(sweep_dir):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        statuses[(overrides.split("nan_guard=")[1].split()[0], "train.lr=100" in overrides)] = _summary(job)["status"]
    assert len(statuses) == 8
    assert all(s == ("diverged" if big_lr and policy != "rollback" else "completed")
               for (policy, big_lr), s in statuses.items()), statuses


@pytest.mark.slow
def test_optuna_sweep_survives_a_diverged_and_a_failed_trial(tiny_app: Path) -> None:
    sweep_dir = _multirun(tiny_app, "sweep=optuna_recall", "hydra.sweeper.n_trials=3", "fake.diverge_job=1",
                          "fake.fail_job=2")
    statuses = [_summary(job)["status"] for job in _jobs(sweep_dir)]
    assert statuses == ["completed", "diverged", "failed"]
    results = (sweep_dir / "optimization_results.yaml").read_text()
    assert "best_value" in results and "train.lr" in results
    assert report_main([str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    assert "3 runs: 1 completed, 1 diverged, 1 failed" in report and "## Optuna result" in report


@pytest.mark.slow
def test_plain_optuna_sweeper_follows_objective_mode_and_outlives_failed_trials(tiny_app: Path) -> None:
    """`hydra/sweeper=optuna` alone (the plugin minimises and stops at a failed trial by default) maximises recall
    and carries on past a failed and a diverged trial."""
    sweep_dir = _multirun(tiny_app, "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=5",
                          "hydra.sweeper.sampler.seed=0", "train.audio_drop=interval(0.0,0.9)",
                          "hydra.sweep.dir=runs/sweeps/plain_optuna", "fake.fail_job=1", "fake.diverge_job=2")
    summaries = [_summary(job) for job in _jobs(sweep_dir)]
    assert [s["status"] for s in summaries][:3] == ["completed", "failed", "diverged"] and len(summaries) == 5
    values = [s["recall/eval/mc_acc"] for s in summaries if s["status"] == "completed"]
    assert len(set(values)) > 1
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(max(values))


def test_a_sweep_names_each_job_by_what_varies(tiny_app: Path) -> None:
    """Only the swept override names a job (not the fixed one, nor the config's schema choices in its tags)."""
    sweep_dir = _multirun(tiny_app, "-m", "lora.rank=2,4", "train.audio_drop=0.3",
                          "hydra.sweep.dir=runs/sweeps/names")
    identities = [json.loads((job / "identity.json").read_text()) for job in _jobs(sweep_dir)]
    assert [i["name"] for i in identities] == ["0:lora.rank=2", "1:lora.rank=4"]
    assert {i["group"] for i in identities} == {"names"}
    assert all("logger:none" in i["tags"] and not any("schema" in t for t in i["tags"]) for i in identities)


def test_launcher_tag_names_the_launcher_that_ran(tiny_app: Path) -> None:
    sweep_dir = _multirun(tiny_app, "-m", "hydra/launcher=joblib", "lora.rank=2,4",
                          "hydra.sweep.dir=runs/sweeps/joblib_tag")
    for job in _jobs(sweep_dir):
        tags = json.loads((job / "identity.json").read_text())["tags"]
        assert "launcher:joblib" in tags and "launcher:basic" not in tags


def test_rows_holding_unicode_line_separators_read_back_whole(tmp_path: Path) -> None:
    """A tiny model's generated text can hold U+2028 or U+0085, which JSON leaves unescaped and which
    `str.splitlines` treats as line ends (seen: the demo's recall failed to read its own predictions.jsonl)."""
    rows = [{"step": 0, "generated": "a\u2028b\x85c\u2029d\x1ce"}, {"step": 1, "generated": "plain"}]
    metrics = MetricsFile(tmp_path / "predictions.jsonl")
    for row in rows:
        metrics.append(row)
    metrics.close()
    assert len((tmp_path / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) > len(rows)
    assert read_metrics(tmp_path / "predictions.jsonl") == rows
