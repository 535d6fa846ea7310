"""Full finetuning under FSDP2 with two gloo processes: same training as one process, sharded checkpoints resume.

The tiny LM trains every parameter, so `train.distributed=auto` shards it (FSDP) instead of using DDP.
"""

from __future__ import annotations

import os
import shutil
import socket

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.train.checkpoint import SHARDED, load_checkpoint, resume_latest
from moshi_knowledge.train.distributed import DistInfo, is_sharded
from moshi_knowledge.train.loop import train
from moshi_knowledge.train.nan_guard import NanGuard
from moshi_knowledge.train.optim import build_optimizer
from test_train_data import tiny_lm
from test_train_loop import ADAM_ROUNDING, EVAL, TRAIN, config, run, trainable

STEPS = 4
SETTINGS = dict(max_steps=STEPS, batch_size=4, grad_accum=2, eval_every=2, ckpt_every=STEPS // 2, distributed="auto")
HALF = f"checkpoints/step_{STEPS // 2:08d}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_weights(model) -> dict[str, torch.Tensor]:
    """Every rank gathers the whole of each sharded parameter."""
    return {n: p.full_tensor().detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """Run `straight` (STEPS steps, checkpoints at STEPS/2 and STEPS), then `resumed` from a copy of its half-way
    checkpoint; each rank saves what it saw."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        straight, resumed = os.path.join(root, "straight"), os.path.join(root, "resumed")
        model = tiny_lm()
        summary = train(model, TRAIN, EVAL, config(**SETTINGS), NanGuard("skip"), straight)
        out = {"summary": summary, "weights": _full_weights(model), "sharded": is_sharded(model),
               "local_numel": sum(p.to_local().numel() for p in model.parameters())}
        if rank == 0:
            shutil.copytree(os.path.join(straight, HALF), os.path.join(resumed, HALF))
        dist.barrier()
        model = tiny_lm(seed=1)  # other initial weights: everything must come from the checkpoint
        out["resumed"] = train(model, TRAIN, EVAL, config(**SETTINGS, resume=True), NanGuard("skip"), resumed)
        out["resumed_weights"] = _full_weights(model)
        torch.save(out, os.path.join(root, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2, join=True)
    return root, [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.slow
def test_two_fsdp_ranks_match_one_process(fsdp_run, tmp_path) -> None:
    root, ranks = fsdp_run
    single_summary, single_rows, single = run(tmp_path, **SETTINGS)
    total = sum(p.numel() for p in single.parameters())
    for r in ranks:
        assert r["summary"]["status"] == "completed" and r["summary"]["world_size"] == 2
        assert r["sharded"] and r["local_numel"] < 0.6 * total  # each rank holds about half of the weights
    for name, weight in trainable(single).items():
        assert torch.allclose(ranks[0]["weights"][name], weight, atol=ADAM_ROUNDING), name
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
    rows = read_metrics(root / "straight" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in single_rows]
    for a, b in zip(single_rows, rows):
        for key in ("train/loss", "train/grad_norm", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


@pytest.mark.slow
def test_sharded_checkpoint_resumes_exactly(fsdp_run) -> None:
    root, ranks = fsdp_run
    half = root / "straight" / HALF
    assert {p.name for p in (half / SHARDED).iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not (half / "trainable.pt").exists()
    straight, resumed = ranks[0]["summary"], ranks[0]["resumed"]
    assert resumed["status"] == "completed" and resumed["step"] == STEPS
    assert resumed["train/loss"] == pytest.approx(straight["train/loss"], abs=1e-6)
    assert resumed["eval/loss"] == pytest.approx(straight["eval/loss"], abs=1e-6)
    for name, weight in ranks[0]["weights"].items():
        assert torch.allclose(ranks[0]["resumed_weights"][name], weight, atol=1e-6), name
    rows = read_metrics(root / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 4]  # it continued, it did not start over


@pytest.mark.slow
def test_one_process_loads_a_two_rank_sharded_checkpoint(fsdp_run) -> None:
    root, ranks = fsdp_run
    model = tiny_lm(seed=1)
    params = {n: p for n, p in model.named_parameters()}
    optimizer = build_optimizer(list(params.values()), config())
    state = load_checkpoint(root / "straight" / f"checkpoints/step_{STEPS:08d}", params, optimizer, DistInfo(),
                            model=model)
    assert state["step"] == STEPS
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(params[name].detach(), weight), name
    assert len(optimizer.state) == len(params)  # AdamW moments came back too


@pytest.mark.parametrize("damage", ["truncated shard", "missing metadata", "garbled state"])
def test_resume_skips_a_damaged_sharded_checkpoint(fsdp_run, tmp_path, damage, caplog) -> None:
    root, ranks = fsdp_run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "straight" / "checkpoints", run_dir / "checkpoints")
    newest = run_dir / f"checkpoints/step_{STEPS:08d}"
    if damage == "truncated shard":
        shard = newest / SHARDED / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "missing metadata":
        (newest / SHARDED / ".metadata").unlink()
    else:
        (newest / "state.json").write_text("{garbled")
    model = tiny_lm(seed=1)
    params = {n: p for n, p in model.named_parameters()}
    state = resume_latest(run_dir, params, build_optimizer(list(params.values()), config()), DistInfo(), model=model)
    assert state["step"] == STEPS // 2, "the intact checkpoint before the damaged one"
    assert any(newest.name in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
