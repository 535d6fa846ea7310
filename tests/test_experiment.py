"""A whole run through the app: data, tiny model, LoRA training, recall before/after, exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import TINY_RUN, run_app
from moshi_knowledge.qa.schema import CAUSE_TIERS
from wandb_offline import decode_only

LORA_RUN = [*TINY_RUN, "lora=all", "lora.rank=4", "logger=none"]


@pytest.fixture(scope="module")
def lora_run(tiny_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One LoRA run of the tiny model at lr 1e-3, alone in its process, mirrored to an offline W&B run."""
    root = tmp_path_factory.mktemp("lora_run")
    run = root / "run"
    args = [*(o for o in LORA_RUN if o != "logger=none"), "logger=wandb", "train.lr=1e-3"]
    done = run_app([*args, f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"], cwd=root)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run, done


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_a_lora_run_writes_the_run_directory_contract(lora_run) -> None:
    run, done = lora_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 4
    assert summary["params/trainable"] < summary["params/total"]  # LoRA trains a small part
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(r["eval/loss"] is not None and r["eval/loss"] > 0 for r in evals)
    assert {"train/loss", "train/text_loss", "train/audio_loss", "train/lr", "train/grad_norm"} <= set(rows[1])
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert sorted({p["step"] for p in predictions}) == [0, 2, 4]
    assert {p["tier"] for p in predictions} == {"train", "paraphrase", "eval", "unseen_facts", *CAUSE_TIERS}
    assert all(2 <= len(p["candidates"]) <= 4 and p["gold"] in [c["text"] for c in p["candidates"]]
               for p in predictions)
    assert all(p["balanced"] and p["chance"] == 1 / len(p["candidates"]) for p in predictions)
    for tier in ("train", "paraphrase", "eval", "eval_tune", "eval_test", "unseen_facts"):
        assert f"recall/{tier}/baseline_mc_acc" in summary and f"recall/{tier}/p_value" in summary
        assert f"recall/{tier}/p_vs_null" in summary and f"recall/{tier}/gen_acc_lenient" in summary
        assert f"recall/{tier}/mde" in summary  # null (NaN) where too few facts for any effect
    assert "recall/train/mc_acc" in done.stdout or "train " in done.stdout  # the printed recall table
    lora = load_file(run / "adapter" / "moshi" / "lora.safetensors")
    assert lora and all(k.endswith((".lora_A.weight", ".lora_B.weight")) or "emb" in k for k in lora)
    assert json.loads((run / "adapter" / "moshi" / "config.json").read_text())["lora_rank"] == 4
    assert (run / "adapter" / "peft" / "adapter_config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1].endswith("4")


@pytest.mark.slow
def test_a_run_logs_each_evaluation_its_recall_parts_and_the_final_table_and_feeds_wandb(lora_run) -> None:
    """The Hydra job log (the file SLURM users keep) holds a line per evaluation, recall's parts as they start and
    the final table; the offline W&B run a short name, predictions and spoken answers at each recall step (step 0
    and the end compare), no Hydra plumbing, and the objective."""
    run_dir, done = lora_run
    log = (run_dir / "moshi_knowledge.log").read_text()
    assert "recall: preparing " in log
    for step in (0, 2, 4):
        line = next(x for x in log.splitlines() if f"step {step}/4 | eval loss" in x)
        assert re.search(r"recall MC train [\d.]+ \(null [\d.]+, p [\d.e-]+\); ", line), line
        assert f"recall at step {step}: generation, " in log and f"recall at step {step}: multiple choice, " in log
    for out in (log, done.stdout):
        assert "MC final" in out and "vs nulls" in out and "status: completed" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["objective"] == summary["recall/eval_tune/mc_acc"]
    wandb_run = decode_only(run_dir)
    assert wandb_run.name == "run-run" and wandb_run.summary["objective"] == summary["objective"]
    assert "_target_" not in json.dumps(wandb_run.config) and wandb_run.config["lora"]["rank"] == 4
    assert "lora:all" in wandb_run.tags and not any("schema" in t for t in wandb_run.tags)
    assert sorted(wandb_run.tables("predictions")) == [0, 2, 4]
    answers = wandb_run.tables("answers")
    assert sorted(answers) == [0, 2, 4]
    for table in answers.values():
        assert len(table.data) == 4 and {"qid", "tier", "question", "gold", "generated"} <= set(table.columns)
        assert all(table.file(cell).stat().st_size > 1000 for cell in table.column("audio"))
        assert table.column("qid") == answers[0].column("qid")  # the same questions at each step
    assert len({tier for tier in answers[0].column("tier")}) == 4  # one of each of four tiers


@pytest.mark.slow
def test_the_same_config_gives_the_same_run_after_another_in_the_same_process(lora_run, tiny_cache: Path,
                                                                              tmp_path: Path) -> None:
    """A sweep's jobs share one process under the basic launcher: the second job (lr 1e-3, after a job at
    lr 1e-2 trained, evaluated and generated) must be the run made alone, to the last digit."""
    alone, _ = lora_run
    done = run_app(["-m", *LORA_RUN, "train.lr=1e-2,1e-3", f"paths.cache_dir={tiny_cache}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    second = tmp_path / "sweep" / "1"
    strip = ("train/step_sec", "train/useful_frames_per_sec", "recall_time/", "memory/", "wall")
    for name in ("metrics.jsonl", "predictions.jsonl"):
        ours, theirs = _records(second / name), _records(alone / name)
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            assert {k: v for k, v in a.items() if not k.startswith(strip)} == \
                {k: v for k, v in b.items() if not k.startswith(strip)}, name
    first = _records(tmp_path / "sweep" / "0" / "metrics.jsonl")
    assert first[-1]["train/loss"] != _records(second / "metrics.jsonl")[-1]["train/loss"], "the jobs differ"


@pytest.mark.slow
def test_eval_only_scores_the_untrained_model(tiny_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    stages = "stages=[story,qa,tts,dataset,model,tokenize,eval]"
    done = run_app([*TINY_RUN, stages, "logger=none", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert {p["step"] for p in predictions} == {0}
    assert not (run / "checkpoints").exists() and not (run / "adapter").exists()


@pytest.mark.slow
def test_seed_replication_recipe_keeps_eval_loss_finite_across_evaluations(tiny_cache: Path, tmp_path: Path) -> None:
    """The published recipe (mono clips on both channels, 100 s unpacked windows) with our re-iterable eval set."""
    run = tmp_path / "run"
    done = run_app(["experiment=seed_replication", *TINY_RUN, "train.max_steps=6", "train.eval_every=2",
                    "train.batch_size=2", "train.seq_sec=100", "lora.rank=2", "eval.recall_every=0",
                    "eval.generate=false", "logger=none", f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"],
                   cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    assert [s for s, _ in evals] == [0, 2, 4, 6]
    assert all(loss is not None and 0 < loss < 100 for _, loss in evals), evals
    meta = json.loads((run / "dataset" / "meta.json").read_text())
    assert meta["layout"] == "mono_duplicate"


@pytest.mark.slow
@pytest.mark.parametrize("lora", ["all", "full"])  # LoRA runs use DDP, full finetuning FSDP (train.distributed=auto)
def test_torchrun_runs_the_app_on_two_processes_with_one_set_of_run_files(
        tiny_cache: Path, tmp_path: Path, lora: str) -> None:
    """`torchrun --nproc-per-node 2 -m moshi_knowledge ...` (gloo on CPU): both ranks train, rank 0 writes."""
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    args = [*TINY_RUN, f"lora={lora}", *(["lora.rank=2"] if lora == "all" else []), "eval.generate=false",
            "logger=none",
            f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "-m", "moshi_knowledge", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one writer: no row twice
    if lora == "all":
        assert (run / "adapter" / "moshi" / "lora.safetensors").is_file()
        assert (run / "predictions.jsonl").is_file()
    else:  # sharded: the weights stay in the per-rank checkpoint; recall needs one process
        assert list((run / "checkpoints").glob("step_*/sharded"))
        assert not (run / "predictions.jsonl").exists()


@pytest.mark.slow
def test_a_failing_finishing_step_keeps_the_finished_run(tiny_cache: Path, tmp_path: Path) -> None:
    """The export breaks after training (its folder's name is taken by a file); the run still ends completed, with
    its recall figures, the table, and the failure named in summary.json."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter").write_text("in the way")
    done = run_app([*TINY_RUN, "lora=all", "lora.rank=4", "logger=none", f"paths.cache_dir={tiny_cache}",
                    f"hydra.run.dir={run}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert [e.split(":")[0] for e in summary["finish_errors"]] == ["export"]
    assert all(f"recall/{tier}/mc_acc" in summary for tier in ("train", "paraphrase", "eval"))
    assert "export failed after training" in done.stdout + done.stderr and "status: completed" in done.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recall = [r for r in rows if "recall_time/total_sec" in r]
    assert [r["step"] for r in recall] == [0, 2, 4]
    assert all(r["recall_time/mc_sec"] > 0 and r["recall_time/gen_sec"] > 0 for r in recall)


@pytest.mark.slow
def test_recall_of_a_checkpoint_with_nan_weights_ends_the_run_diverged(tiny_cache: Path, tmp_path: Path) -> None:
    """model=local on a broken checkpoint, recall only: nothing counts as recalled and the run is not `completed`."""
    import shutil

    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "broken"
    shutil.copytree(next((tiny_cache / "model").glob("*/config.json")).parent, folder)
    weights = load_file(folder / "model.safetensors")
    name = next(k for k in sorted(weights) if k.endswith("weight") and weights[k].is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, folder / "model.safetensors")
    run = tmp_path / "run"
    done = run_app([*(o for o in TINY_RUN if not o.startswith("model.")), "model=local",
                    f"model.moshi_weights={folder / 'model.safetensors'}",
                    f"model.mimi_weights={folder / 'mimi.safetensors'}",
                    f"model.tokenizer={folder / 'tokenizer.model'}", f"model.config_path={folder / 'config.json'}",
                    f"model.mimi_config_path={folder / 'mimi_config.json'}", "model.dtype=float32",
                    "stages=[story,qa,tts,dataset,model,tokenize,eval]", "logger=none",
                    f"paths.cache_dir={tiny_cache}", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and "non-finite" in summary["message"]
    for tier in ("train", "paraphrase", "eval"):
        assert summary[f"recall/{tier}/mc_acc"] == 0 and summary[f"recall/{tier}/gen_acc"] == 0
        assert summary[f"recall/{tier}/n_nonfinite"] == summary[f"recall/{tier}/n"]
    assert "status: diverged" in done.stdout
