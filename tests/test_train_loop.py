"""The training loop on a tiny real moshi LMModel: loss, eval set, NaN guard, checkpoints, resume, run directory."""

from __future__ import annotations

import math
import os
import signal

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import pytest
import torch

from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import read_json
from moshi_knowledge.tracking.files import read_metrics
from moshi_knowledge.train import checkpoint as checkpoint_module
from moshi_knowledge.train.attention import segment_attention
from moshi_knowledge.train.batches import collate, eval_batches
from moshi_knowledge.train.checkpoint import checkpoint_dirs
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.loop import Trainer, evaluate, forward_sums, set_gradient_checkpointing, train
from moshi_knowledge.train.loss import LossSettings
from moshi_knowledge.train.nan_guard import NanGuard
from moshi_knowledge.train.optim import lr_at
from test_train_data import PAD, spoken_qa, tiny_lm

torch.set_num_threads(1)

TRAIN = spoken_qa(10, seed=1, turns=2)
EVAL = spoken_qa(3, seed=2)


def config(**overrides) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, seq_sec=6.0, lr=3e-3, warmup_steps=2, eval_every=2, ckpt_every=3,
                precision="fp32", log_every=1)
    return TrainConfig(**(base | overrides))


# Summing in another order (micro-batches, ranks) changes fp32 gradients by rounding, and Adam's division by the
# second moments turns that into up to ~2e-5 on the few weights whose gradient is near zero (26 of 287k elements
# above 1e-5 in the DDP test on an AVX-512 CPU). A weight moves by about lr a step, so a real difference (a missed
# all-reduce, a wrong split) lands far above lr / 30.
ADAM_ROUNDING = config().lr / 30


def run(tmp_path, guard: str = "skip", model=None, train_samples=TRAIN, eval_samples=EVAL, guard_kw=None,
        inject=(), **overrides):
    model = model if model is not None else tiny_lm()
    summary = train(model, train_samples, eval_samples, config(**overrides), NanGuard(guard, **(guard_kw or {})),
                    tmp_path, inject_nonfinite_at=inject)
    return summary, read_metrics(tmp_path / "metrics.jsonl"), model


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def all_finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def by_step(rows: list[dict]) -> dict[int, dict]:
    return {r["step"]: r for r in rows}


# ---- loss and batches -----------------------------------------------------------------------------------------
def test_padding_content_does_not_change_the_loss() -> None:
    model = tiny_lm()
    spec = StreamSpec.from_lm(model)
    batch = collate([[(TRAIN[0].codes, 0)], [(TRAIN[1].codes, 0), (TRAIN[2].codes, TRAIN[1].n_frames + 2)]],
                    spec, 90)
    noisy = collate([[(TRAIN[0].codes, 0)], [(TRAIN[1].codes, 0), (TRAIN[2].codes, TRAIN[1].n_frames + 2)]],
                    spec, 90)
    end = [TRAIN[0].n_frames, TRAIN[1].n_frames + 2 + TRAIN[2].n_frames]
    g = torch.Generator().manual_seed(0)
    for b, e in enumerate(end):
        noisy.codes[b, :, e:] = torch.randint(0, 40, (17, 90 - e), generator=g)
    settings = LossSettings()
    with torch.no_grad():
        with segment_attention(model, batch.segments):
            clean = forward_sums(model, batch, spec, settings).as_vector()
        with segment_attention(model, noisy.segments):
            dirty = forward_sums(model, noisy, spec, settings).as_vector()
    assert torch.allclose(clean, dirty, rtol=1e-6, atol=0)
    assert clean[1] > 0 and clean[3] > 0  # text and audio weights present


def test_text_padding_weight_and_first_codebook_multiplier_weigh_targets() -> None:
    model = tiny_lm()
    spec = StreamSpec.from_lm(model)
    batch = collate([[(TRAIN[0].codes, 0)]], spec, 60)
    with torch.no_grad():
        base = forward_sums(model, batch, spec, LossSettings(text_padding_weight=1.0))
        no_pad = forward_sums(model, batch, spec, LossSettings(text_padding_weight=0.0))
        cb0 = forward_sums(model, batch, spec, LossSettings(first_codebook_weight_multiplier=3.0))
    n_text = int(batch.loss_mask[0, 0].sum())
    n_words = int(((batch.codes[0, 0] != PAD) & (batch.codes[0, 0] != 0) & batch.loss_mask[0, 0]).sum())
    assert base.text_w == n_text and no_pad.text_w == n_words
    n_cb0 = int(batch.loss_mask[0, 1].sum())
    assert cb0.audio_w == base.audio_w + 2 * n_cb0


def test_gradient_checkpointing_gives_the_same_gradients_with_packing() -> None:
    spec = StreamSpec.from_lm(tiny_lm())
    batch = collate([[(TRAIN[1].codes, 0), (TRAIN[2].codes, TRAIN[1].n_frames + 2)]], spec, 80)
    grads = []
    for enabled in (False, True):
        model = tiny_lm()
        set_gradient_checkpointing(model, enabled)
        with segment_attention(model, batch.segments):
            sums = forward_sums(model, batch, spec, LossSettings())
            (sums.text_ce + sums.audio_ce).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_grad_accumulation_matches_one_big_batch(tmp_path) -> None:
    _, rows_one, one = run(tmp_path / "a", max_steps=2, eval_every=0, ckpt_every=0, eval_at_start=False)
    _, rows_acc, acc = run(tmp_path / "b", max_steps=2, eval_every=0, ckpt_every=0, eval_at_start=False,
                           grad_accum=2)
    for a, b in zip(rows_one, rows_acc):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-6)
        assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-5)
    for (name, a), b in zip(trainable(one).items(), trainable(acc).values()):
        assert torch.allclose(a, b, atol=ADAM_ROUNDING), name


def test_loss_falls_on_a_tiny_memorisation_task(tmp_path) -> None:
    data = spoken_qa(6, seed=3)
    summary, rows, _ = run(tmp_path, train_samples=data, eval_samples=data, max_steps=40, eval_every=20,
                           audio_drop=0.0, lr=1e-2, warmup_steps=5, ckpt_every=0)
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert summary["status"] == "completed"
    assert evals[-1] < 0.5 * evals[0]
    assert rows[-1]["train/text_loss"] < 0.5 * rows[1]["train/text_loss"]


# ---- eval set -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_eval,eval_batch_size,packing", [(2, None, True), (11, 2, False), (11, 1, True)])
def test_eval_loss_is_finite_and_identical_when_weights_do_not_change(tmp_path, n_eval, eval_batch_size, packing):
    eval_set = spoken_qa(n_eval, seed=9)
    summary, rows, model = run(tmp_path, eval_samples=eval_set, lr=0.0, max_steps=3, eval_every=1, ckpt_every=0,
                               eval_batch_size=eval_batch_size, packing=packing)
    losses = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses) and len(set(losses)) == 1
    assert summary["eval/ppl"] == pytest.approx(math.exp(losses[0]))
    spec = StreamSpec.from_lm(model)
    batches = eval_batches(eval_set, spec, 75, eval_batch_size or 4, packing)
    if n_eval == 2:
        assert len(batches) == 1 and len(batches[0]) < 4  # smaller than one batch
    else:
        assert len(batches) > 1
    direct = evaluate(model, batches, spec, LossSettings(), precision="fp32")
    assert direct["eval/loss"] == pytest.approx(losses[0], rel=1e-9)


# ---- NaN guard ------------------------------------------------------------------------------------------------
def test_nan_guard_off_counts_and_lets_weights_go_non_finite(tmp_path) -> None:
    summary, rows, model = run(tmp_path, "off", max_steps=3, inject=[2], eval_every=0, ckpt_every=0)
    assert summary["status"] == "diverged" and "non-finite" in summary["message"] and not all_finite(model)
    assert summary["nan_guard/events"] == 2  # the injected step poisons the weights, so step 3 is non-finite too
    assert by_step(rows)[2]["train/loss"] is None and by_step(rows)[3]["train/loss"] is None


def test_nan_guard_skip_drops_the_update(tmp_path) -> None:
    summary, rows, model = run(tmp_path, "skip", max_steps=5, inject=[2, 4], ckpt_every=1, keep_checkpoints=5)
    assert summary["status"] == "completed" and summary["nan_guard/events"] == 2 and all_finite(model)
    steps = by_step(rows)
    assert steps[2]["nan_guard/action"] == "skip" and steps[3]["nan_guard/action"] == "step"
    assert steps[2]["train/loss"] is None and steps[5]["nan_guard/events"] == 2
    weights = [torch.load(d / "trainable.pt") for d in checkpoint_dirs(tmp_path)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # step 2 changed nothing
    assert not all(torch.equal(weights[1][k], weights[2][k]) for k in weights[0])  # step 3 did


def test_nan_guard_skip_gives_up_after_max_consecutive(tmp_path) -> None:
    summary, rows, model = run(tmp_path, "skip", guard_kw={"max_consecutive": 2}, max_steps=6, inject=[2, 3, 4])
    assert summary["status"] == "diverged" and summary["step"] == 4 and summary["nan_guard/events"] == 3
    assert "max_consecutive=2" in summary["message"] and all_finite(model)
    assert max(r["step"] for r in rows) == 4


def test_nan_guard_rollback_restores_last_good_state_and_lowers_lr(tmp_path) -> None:
    _, clean_rows, _ = run(tmp_path / "clean", "rollback", max_steps=4, ckpt_every=1, keep_checkpoints=4)
    summary, rows, model = run(tmp_path / "hit", "rollback", max_steps=4, inject=[3], ckpt_every=1,
                               keep_checkpoints=4, guard_kw={"lr_factor": 0.25})
    assert summary["status"] == "completed" and summary["nan_guard/events"] == 1 and all_finite(model)
    after_rollback = torch.load(tmp_path / "hit/checkpoints/step_00000003/trainable.pt")
    good_step_2 = torch.load(tmp_path / "clean/checkpoints/step_00000002/trainable.pt")
    assert all(torch.equal(after_rollback[k], good_step_2[k]) for k in good_step_2)
    cfg = config(max_steps=4)
    assert by_step(rows)[4]["train/lr"] == pytest.approx(0.25 * lr_at(3, cfg))
    assert by_step(clean_rows)[4]["train/lr"] == pytest.approx(lr_at(3, cfg))


def test_nan_guard_rollback_gives_up_after_max_consecutive(tmp_path) -> None:
    summary, _, model = run(tmp_path, "rollback", max_steps=8, inject=[2, 3, 4, 5])
    assert summary["status"] == "diverged" and summary["step"] == 5 and all_finite(model)


def test_nan_guard_halt_ends_the_run_as_diverged(tmp_path) -> None:
    summary, rows, model = run(tmp_path, "halt", max_steps=6, inject=[2])
    assert summary["status"] == "diverged" and summary["step"] == 2 and summary["nan_guard/events"] == 1
    assert "halt" in summary["message"] and all_finite(model)
    assert read_json(tmp_path / "summary.json")["status"] == "diverged"
    assert [r["step"] for r in rows] == [0, 1, 2]


# ---- checkpoints, resume, run directory -----------------------------------------------------------------------
class Interrupt(RuntimeError):
    pass


def test_resume_continues_exactly(tmp_path) -> None:
    _, straight_rows, straight = run(tmp_path / "straight", max_steps=6)

    def crash_at_4(step, model):
        if step == 4:
            raise Interrupt("simulated crash")

    with pytest.raises(Interrupt):
        train(tiny_lm(), TRAIN, EVAL, config(max_steps=6), NanGuard("skip"), tmp_path / "resumed", on_eval=crash_at_4)
    assert read_json(tmp_path / "resumed/summary.json")["status"] == "failed"
    summary, rows, resumed = run(tmp_path / "resumed", max_steps=6, resume=True)
    assert summary["status"] == "completed"
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows]  # each step logged once
    for a, b in zip(straight_rows, rows):
        for key in ("train/loss", "train/text_loss", "train/audio_loss", "eval/loss", "train/lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    for (name, a), b in zip(trainable(straight).items(), trainable(resumed).values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_the_public_step_api_repeats_the_loop_and_resumes_from_its_own_checkpoint(tmp_path) -> None:
    """What benchmarks time: `train_step` is the loop's step (same losses as `train`), `save` and `resume` its
    checkpoint I/O; nothing is logged."""
    _, rows, _ = run(tmp_path / "loop", max_steps=4, eval_every=0, ckpt_every=0)
    trainer = Trainer(tiny_lm(), TRAIN, [], config(max_steps=4), NanGuard("skip"), tmp_path / "steps")
    trainer.model.train()
    steps = [trainer.train_step() for _ in range(2)]
    trainer.save()
    steps += [trainer.train_step() for _ in range(2)]
    loop = [r["train/loss"] for r in rows if "train/loss" in r]
    assert [s["train/loss"] for s in steps] == pytest.approx(loop, abs=1e-6) and trainer.step == 4
    trainer.resume()
    assert trainer.step == 2 and trainer.train_step()["train/loss"] == pytest.approx(loop[2], abs=1e-6)
    assert not (tmp_path / "steps" / "metrics.jsonl").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_interrupted_with_a_checkpoint_that_resumes_exactly(tmp_path, signum) -> None:
    """What SLURM does before preemption: a real signal to this process in the middle of a run."""
    _, straight_rows, straight = run(tmp_path / "straight", max_steps=6)
    before = signal.getsignal(signum)

    def signal_at_4(step, model):
        if step == 4:
            os.kill(os.getpid(), signum)

    summary = train(tiny_lm(), TRAIN, EVAL, config(max_steps=6), NanGuard("skip"), tmp_path / "run",
                    on_eval=signal_at_4)
    assert summary["status"] == "interrupted" == read_json(tmp_path / "run/summary.json")["status"]
    assert summary["step"] == 5 and signum.name in summary["message"]
    # step 3 by ckpt_every=3, step 5 (not due) because the run was stopped there
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000003", "step_00000005"]
    assert signal.getsignal(signum) is before, "the previous handler is back"

    resumed_summary, rows, resumed = run(tmp_path / "run", max_steps=6, resume=True)
    assert resumed_summary["status"] == "completed"
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows]
    for (name, a), b in zip(trainable(straight).items(), trainable(resumed).values()):
        assert torch.allclose(a, b, atol=1e-6), name


def _truncate_weights(ckpt) -> None:
    data = (ckpt / "trainable.pt").read_bytes()
    (ckpt / "trainable.pt").write_bytes(data[: len(data) // 2])


def _garble_state(ckpt) -> None:
    (ckpt / "state.json").write_text('{"step": 4, "posit')


def _drop_optimizer(ckpt) -> None:
    (ckpt / "optimizer.pt").unlink()


def _truncate_rng(ckpt) -> None:
    (ckpt / "rng_rank0.pt").write_bytes((ckpt / "rng_rank0.pt").read_bytes()[:64])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    _, rows, model = run(tmp_path_factory.mktemp("straight"), max_steps=6, ckpt_every=2)
    return rows, trainable(model)


@pytest.mark.parametrize("damage", [_truncate_weights, _garble_state, _drop_optimizer, _truncate_rng],
                         ids=lambda f: f.__name__)
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, caplog, straight_run, damage) -> None:
    """The newest checkpoint damaged after it was written: resume warns, names it, and continues exactly from the
    one before."""
    def crash_at_5(step, model):
        if step == 5:
            raise Interrupt("simulated crash")

    with pytest.raises(Interrupt):
        train(tiny_lm(), TRAIN, EVAL, config(max_steps=6, ckpt_every=2, eval_every=1), NanGuard("skip"), tmp_path,
              on_eval=crash_at_5)
    newest = checkpoint_dirs(tmp_path)[-1]
    assert newest.name == "step_00000004"
    damage(newest)
    summary, rows, resumed = run(tmp_path, max_steps=6, ckpt_every=2, resume=True)
    assert summary["status"] == "completed"
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "damaged" in r.getMessage()]
    assert warning and str(newest) in warning[0] and "resuming from the one before" in warning[0]
    straight_rows, straight_weights = straight_run
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows]
    for (name, a), b in zip(straight_weights.items(), trainable(resumed).values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_refuses_when_every_checkpoint_is_damaged(tmp_path) -> None:
    run(tmp_path, max_steps=2, ckpt_every=1, keep_checkpoints=2)
    for ckpt in checkpoint_dirs(tmp_path):
        _drop_optimizer(ckpt)
    with pytest.raises(UserError, match="every checkpoint .* is damaged"):
        run(tmp_path, max_steps=4, resume=True)


def test_a_checkpoint_that_does_not_read_back_is_never_published(tmp_path, monkeypatch) -> None:
    """Verify after write: weights written short (full disk, faulty write) fail the save; no step_ folder."""
    real = checkpoint_module._write_torch

    def short_write(path, obj):
        real(path, obj)
        if path.name == "trainable.pt":
            path.write_bytes(path.read_bytes()[:100])

    monkeypatch.setattr(checkpoint_module, "_write_torch", short_write)
    with pytest.raises(checkpoint_module.DamagedCheckpoint):
        run(tmp_path, max_steps=2, ckpt_every=1)
    assert checkpoint_dirs(tmp_path) == []


def test_run_directory_contract_and_last_k_checkpoints(tmp_path) -> None:
    summary, rows, model = run(tmp_path, max_steps=5, ckpt_every=1, keep_checkpoints=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_00000004", "step_00000005"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    last = checkpoint_dirs(tmp_path)[-1]
    assert {p.name for p in last.iterdir()} == {"trainable.pt", "optimizer.pt", "state.json", "rng_rank0.pt"}
    assert read_json(last / "state.json")["step"] == 5
    required = {"step", "train/loss", "train/text_loss", "train/audio_loss", "train/lr", "train/grad_norm",
                "nan_guard/events", "train/useful_frames_per_sec", "train/useful_fraction"}
    assert all(required <= set(r) for r in rows if r["step"] > 0)
    assert {"eval/loss", "eval/ppl"} <= set(by_step(rows)[4])
    on_disk = read_json(tmp_path / "summary.json")
    assert on_disk["status"] == "completed" == summary["status"]
    assert on_disk["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert on_disk["eval/ppl"] == pytest.approx(math.exp(on_disk["eval/loss"]))
    assert 0 < on_disk["train/useful_fraction"] <= 1


def test_bad_batch_split_fails_with_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="train.batch_size"):
        run(tmp_path, batch_size=3, grad_accum=2)
    assert read_json(tmp_path / "summary.json")["status"] == "failed"


def test_peft_lora_model_trains_only_its_adapters(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_lm()
    frozen_before = {n: p.detach().clone() for n, p in base.named_parameters()}
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=r".*(in_projs|out_projs)\.\d+"))
    summary, _, _ = run(tmp_path, model=lora, max_steps=3, lr=1e-2)
    assert summary["status"] == "completed"
    names = set(torch.load(checkpoint_dirs(tmp_path)[-1] / "trainable.pt"))
    assert names and all("lora_" in n for n in names)
    assert summary["trainable_params"] == sum(p.numel() for p in lora.parameters() if p.requires_grad)
    for name, p in lora.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, frozen_before[original]), name


def test_lr_schedules() -> None:
    cosine = config(max_steps=20, warmup_steps=4, lr=1.0, min_lr_ratio=0.1)
    assert [lr_at(s, cosine) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(19, cosine) == pytest.approx(0.1) and lr_at(10, cosine) < lr_at(5, cosine)
    cycle = config(max_steps=20, warmup_steps=4, lr=1.0, schedule="one_cycle")
    assert lr_at(0, cycle) == pytest.approx(1 / 25) and lr_at(4, cycle) == pytest.approx(1.0)
    assert lr_at(19, cycle) == pytest.approx(1 / 25 / 1e4)
    assert lr_at(15, config(max_steps=20, warmup_steps=4, lr=1.0, schedule="constant")) == 1.0
