"""Two gloo processes train the tiny model exactly like one process on the same global batch."""

from __future__ import annotations

import os
import socket

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.train.loop import train
from moshi_knowledge.train.nan_guard import NanGuard
from test_train_data import tiny_lm
from test_train_loop import ADAM_ROUNDING, EVAL, TRAIN, config, run, trainable

SETTINGS = dict(max_steps=4, batch_size=4, grad_accum=2, eval_every=2, ckpt_every=2, distributed="ddp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = tiny_lm()
        summary = train(model, TRAIN, EVAL, config(**SETTINGS), NanGuard("skip"), run_dir)
        torch.save({"summary": summary, "weights": trainable(model)}, os.path.join(run_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path) -> None:
    single_summary, single_rows, single = run(tmp_path / "single", **SETTINGS)
    ddp_dir = tmp_path / "ddp"
    ddp_dir.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(ddp_dir)), nprocs=2, join=True)

    ranks = [torch.load(ddp_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(r["summary"]["status"] == "completed" and r["summary"]["world_size"] == 2 for r in ranks)
    for name, weight in trainable(single).items():
        assert torch.allclose(ranks[0]["weights"][name], weight, atol=ADAM_ROUNDING), name
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name]), name
    rows = read_metrics(ddp_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in single_rows]
    for a, b in zip(single_rows, rows):
        for key in ("train/loss", "train/text_loss", "train/audio_loss", "eval/loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)
    assert {p.name for p in (ddp_dir / "checkpoints/step_00000004").iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt"}
    assert single_summary["eval/loss"] == pytest.approx(ranks[1]["summary"]["eval/loss"], abs=1e-5)
