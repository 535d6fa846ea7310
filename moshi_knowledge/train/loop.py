"""The training loop: `train(model, train_samples, eval_samples, cfg, nan_guard, run_dir)` -> summary dict.

It works on any moshi LMModel, bare or wrapped (peft LoRA, DDP): it trains exactly the parameters that have
`requires_grad`. One optimizer step = `batch_size` rows of the global stream, split over ranks, then into
`grad_accum` micro-batches. Step numbers count optimizer steps from 1; step 0 is the state before training.

Run directory: metrics.jsonl (train and eval rows keyed by `step`) and summary.json (status completed | diverged |
failed, and the final figures) go through a tracking.Tracker (the caller's, or a files-only one); checkpoints/ is
written here. Only rank 0 writes; every rank returns the same summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
from moshi.modules.transformer import StreamingTransformer
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from moshi_knowledge.codes.samples import FRAME_RATE, ConversationCodes
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.errors import UserError
from moshi_knowledge.tracking.contract import INTERRUPTED
from moshi_knowledge.tracking.identity import RunIdentity
from moshi_knowledge.tracking.progress import eval_line
from moshi_knowledge.tracking.tracker import Tracker
from moshi_knowledge.train.attention import segment_attention
from moshi_knowledge.train.batches import Batch, PackedRow, collate, eval_batches
from moshi_knowledge.train.checkpoint import resume_latest, save_checkpoint
from moshi_knowledge.train.compile import compile_wanted, set_layer_compile
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.distributed import (
    all_finite,
    all_reduce_sum,
    clip_grad_norm,
    dist_info,
    is_sharded,
    no_sync,
    shard,
    wrap_model,
)
from moshi_knowledge.train.exposures import FactIndex, FactMap, resolve_steps, training_stream
from moshi_knowledge.train.loss import LossSettings, LossSums, loss_sums, step_loss, target_weights
from moshi_knowledge.train.nan_guard import NanGuard, Snapshot
from moshi_knowledge.train.optim import build_optimizer, lr_at
from moshi_knowledge.train.seed import seed_everything
from moshi_knowledge.train.stop_signals import StopSignals

OnEval = Callable[[int, nn.Module], Optional[Mapping[str, Any]]]

log = logging.getLogger(__name__)


class RunLog(Protocol):
    """What the loop needs of a tracking.Tracker."""

    def log(self, row: Mapping[str, Any]) -> None: ...

    def keep_until(self, step: int) -> None: ...

    def summary(self, values: Mapping[str, Any]) -> None: ...


class SilentLog:
    """The run log of ranks other than 0 (and of benchmarks): the same figures are computed, nothing is written."""

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def keep_until(self, step: int) -> None:
        pass

    def summary(self, values: Mapping[str, Any]) -> None:
        pass


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """moshi's transformers recompute each layer in backward when `checkpointing` is set (main and depformer)."""
    for module in model.modules():
        if isinstance(module, StreamingTransformer):
            module.checkpointing = enabled


def _float8_base(model: nn.Module, device: torch.device) -> None:
    """train.fp8: the frozen base layers in float8 (train/fp8.py, whose torchao import is paid only here)."""
    from moshi_knowledge.train.fp8 import fp8_capable, to_fp8_training

    emulated = not fp8_capable(device)
    swapped = to_fp8_training(model, emulate=emulated)
    log.info("train.fp8: %d frozen base layers compute in float8%s", swapped,
             " (emulated: this device has no FP8 tensor cores)" if emulated else "")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def forward_sums(net: nn.Module, batch: Batch, spec: StreamSpec, settings: LossSettings,
                 precision: str = "bf16") -> LossSums:
    """Loss sums of one on-device batch, inside the caller's `segment_attention(model, batch.segments)`.

    `net` is what runs forward (maybe DDP-wrapped); the caller keeps the segment mask active through backward.
    """
    with _autocast(batch.codes.device, precision):
        output = net(batch.codes)
    return loss_sums(output, batch, spec, settings)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Sequence[Batch], spec: StreamSpec, settings: LossSettings,
             precision: str = "bf16", flex: bool = False) -> dict[str, float]:
    """Loss over a whole fixed eval set, weighted by target (not a mean of batch means); {} for an empty set.

    `flex`: attention through FlexAttention, as training runs it when it compiles the layers.

    Under torchrun each rank takes every world-th batch and the sums are all-reduced, so a set smaller than the
    number of ranks still works. ppl = exp(loss), and text_ppl = exp(text_loss), the text stream's perplexity.
    """
    if not batches:
        return {}
    info, device = dist_info(), next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    mine = list(batches[info.rank::info.world])
    # an FSDP forward is collective: a rank with fewer batches runs a discarded one to keep in step
    rounds = -(-len(batches) // info.world) if is_sharded(model) else len(mine)
    for i in range(rounds):
        batch = (mine[i] if i < len(mine) else batches[0]).to(device)
        with segment_attention(model, batch.segments, flex, batch.codes.shape[-1]):
            part = forward_sums(model, batch, spec, settings, precision).as_vector()
        if i < len(mine):
            sums += part
    model.train(was_training)
    figures = LossSums.means(all_reduce_sum(sums), settings.text_weight)
    out = {f"eval/{k}": v for k, v in figures.items()}
    out["eval/ppl"] = _exp(figures["loss"])
    out["eval/text_ppl"] = _exp(figures["text_loss"])
    return out


class Trainer:
    """One training run, step by step: `run()` is the whole loop; `train_step`, `save` and `resume` are its parts,
    public so benchmarks time the loop's own step and checkpoint I/O."""

    def __init__(self, model: nn.Module, train_samples: Sequence[ConversationCodes],
                 eval_samples: Sequence[ConversationCodes], cfg: TrainConfig, guard: NanGuard, run_dir: Path,
                 run_log: Optional[RunLog] = None, on_eval: Optional[OnEval] = None,
                 inject_nonfinite_at: Sequence[int] = (), facts: Optional[FactMap] = None) -> None:
        """`run_log` None writes nothing (SilentLog). `facts`: the facts each training conversation states, by
        conversation id (dataset/facts.py): the exposures are measured, and `cfg.exposures_per_fact` sets the
        steps."""
        self.info = dist_info()
        self.cfg, self.guard, self.run_dir, self.on_eval = cfg, guard, run_dir, on_eval
        self.run_log = run_log if run_log is not None else SilentLog()
        self.inject = set(int(s) for s in inject_nonfinite_at)
        per_step = self.info.world * cfg.grad_accum
        if cfg.batch_size % per_step:
            raise UserError(f"train.batch_size={cfg.batch_size} does not split into {self.info.world} rank(s) x "
                            f"train.grad_accum={cfg.grad_accum} micro-batches",
                            f"make train.batch_size a multiple of {per_step}")
        self.model = model
        self.device = next(model.parameters()).device
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise UserError("the model has no trainable parameters", "apply LoRA (lora=...) or choose lora=full")
        for p in trainable:
            p.data = p.data.float()  # fp32 master weights; autocast computes in bf16 on GPU
        set_gradient_checkpointing(model, cfg.gradient_checkpointing)
        if cfg.fp8:  # before DDP wraps the model; preflight refused it on a device without FP8 (tests emulate it)
            _float8_base(model, self.device)
        bf16 = self.device.type == "cuda" and cfg.precision == "bf16"
        self.net = wrap_model(model, self.info, cfg.distributed, torch.bfloat16 if bf16 else None)
        self.compiled = compile_wanted(cfg.compile, self.device, is_sharded(model))
        self.compiled_layers = set_layer_compile(model, self.compiled)
        self.flex = self.compiled and self.device.type == "cuda"  # inductor's CPU FlexAttention has no backward
        self.steps_run = 0  # in this process: with compiled layers the first step is the compile warm-up
        # after wrapping: FSDP replaces the parameters by this rank's DTensor shards
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.optimizer = build_optimizer(list(self.params.values()), cfg)
        self.spec = StreamSpec.from_lm(model)
        self.settings = LossSettings(cfg.text_weight, cfg.text_padding_weight, cfg.first_codebook_weight_multiplier)
        self.seq_frames = round(cfg.seq_sec * FRAME_RATE)
        self.stream = training_stream(train_samples, self.spec, cfg)
        self.facts = FactIndex.build(train_samples, facts)
        self.cfg = cfg = resolve_steps(cfg, self.stream, self.facts)
        # what was trained on, in the summary: with an imported dataset, its size says the import was complete
        self.data = {"data/train_conversations": len(train_samples),
                     "data/train_frames": sum(s.n_frames for s in train_samples)}
        self.eval_set = (eval_batches(eval_samples, self.spec, self.seq_frames, cfg.eval_batch_size or cfg.batch_size,
                                      cfg.packing) if eval_samples else [])
        self.snapshot = Snapshot()
        self.step = 0
        self.eval_pending = False  # a stop signal came before this step's evaluation: resume measures it first
        self.lr_scale = 1.0
        self.status, self.message = "running", ""
        self.last: dict[str, Any] = {}  # latest figures of each key, for the summary
        self.peak_gib = 0.0  # training's peak GPU memory; recall resets the statistics around itself
        self.started = time.time()

    # ---- one optimizer step -------------------------------------------------------------------------------
    def _micro_batches(self, rows: Sequence[PackedRow]) -> list[Batch]:
        mine = shard(rows, self.info)
        per_micro = len(mine) // self.cfg.grad_accum
        return [collate(mine[i:i + per_micro], self.spec, self.seq_frames).to(self.device)
                for i in range(0, len(mine), per_micro)]

    def _backward(self, micro: Sequence[Batch], inject: bool) -> dict[str, float]:
        """Accumulate the gradient of the step loss (normalised by the whole step's weights); return its figures."""
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in micro:
            text_w, audio_w = target_weights(batch, self.spec, self.settings)
            totals += torch.stack([text_w.sum(), audio_w.sum()]).double()
        text_total, audio_total = all_reduce_sum(totals).float()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro):
            with no_sync(self.net, sync=i == len(micro) - 1), \
                    segment_attention(self.model, batch.segments, self.flex, batch.codes.shape[-1]):
                part = forward_sums(self.net, batch, self.spec, self.settings, self.cfg.precision)
                loss = step_loss(part, text_total, audio_total, self.cfg.text_weight)
                if inject:
                    loss = loss * math.nan
                (loss * self.info.world).backward()  # DDP averages gradients over ranks; we want their sum
            sums += part.as_vector()
        figures = LossSums.means(all_reduce_sum(sums), self.cfg.text_weight)
        return {k: math.nan for k in figures} if inject else figures

    def _update(self, finite: bool) -> str:
        """Apply, skip or undo this step as the NaN guard says; returns the action taken."""
        action = "step" if finite else self.guard.on_nonfinite(self.step)
        if action == "step":
            self.optimizer.step()
        elif action == "rollback":
            self.snapshot.restore(self.params, self.optimizer)
            self.lr_scale *= self.guard.lr_factor
        elif action == "halt":
            self.status, self.message = "diverged", self.guard.message
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            self.guard.on_good_step()
            if self.guard.policy == "rollback" and self.step % self.guard.snapshot_every == 0:
                self.snapshot.take(self.params, self.optimizer)
        return action

    def train_step(self, inject: bool = False) -> dict[str, Any]:
        """One optimizer step (`inject`: make its loss NaN); its train/, memory/ and nan_guard/ figures."""
        start = time.time()
        rows = self.stream.next_rows(self.cfg.batch_size)
        lr = lr_at(self.step, self.cfg) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        figures = self._backward(self._micro_batches(rows), inject)
        clip = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        grad_norm = clip_grad_norm(list(self.params.values()), clip)
        self.step += 1
        action = self._update(math.isfinite(figures["loss"]) and math.isfinite(grad_norm))
        useful = sum(conv.shape[1] for row in rows for conv, _ in row)
        seconds = time.time() - start
        self.steps_run += 1
        warmup = {"compile/warmup_sec": seconds} if self.compiled and self.steps_run == 1 else {}
        return {f"train/{k}": v for k, v in figures.items()} | self._memory() | warmup | self._dose() | {
            "train/lr": lr, "train/grad_norm": grad_norm, "nan_guard/events": self.guard.events,
            "nan_guard/action": action, "train/useful_fraction": useful / (len(rows) * self.seq_frames),
            "train/useful_frames_per_sec": useful / max(seconds, 1e-9), "train/step_sec": seconds,
        }

    def _dose(self) -> dict[str, float | int]:
        """data/exposures_per_fact so far (and data/trained_facts), measured in the rows drawn; {} if facts unknown."""
        return {} if self.facts is None else self.facts.figures(self.stream.drawn)

    def _memory(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        self.peak_gib = max(self.peak_gib, torch.cuda.max_memory_allocated(self.device) / 2**30)
        return {"memory/train_peak_gib": self.peak_gib}

    # ---- evaluation ---------------------------------------------------------------------------------------
    def _eval_row(self) -> dict[str, Any]:
        """Eval loss and the hook's figures (recall), logged in one line; log lines (recall's parts too) print above
        the training bar rather than into it."""
        with logging_redirect_tqdm():
            row = evaluate(self.model, self.eval_set, self.spec, self.settings, self.cfg.precision, self.flex)
            if self.on_eval is not None:
                self.model.eval()
                row.update(self.on_eval(self.step, self.model) or {})
                self.model.train()
            if self.info.is_main:
                log.info("%s", eval_line(self.step, self.cfg.max_steps, row))
        return row

    # ---- checkpoints --------------------------------------------------------------------------------------
    def _state(self, eval_pending: bool) -> dict[str, Any]:
        return {"position": list(self.stream.position), "lr_scale": self.lr_scale,
                "nan_guard": self.guard.state_dict(), "last": self.last, "drawn": list(self.stream.drawn),
                "eval_pending": eval_pending}

    def save(self, eval_pending: bool = False) -> None:
        """A checkpoint of this step (every rank takes part); `eval_pending`: the step's evaluation is still due."""
        save_checkpoint(self.run_dir, self.step, self.params, self.optimizer, self._state(eval_pending),
                        self.cfg.keep_checkpoints, self.info, model=self.net)

    def resume(self) -> None:
        """Continue from the latest intact checkpoint under the run directory, if any. Without one the run starts
        at step 0, and rows an earlier attempt logged (killed before its first checkpoint) are dropped."""
        state = resume_latest(self.run_dir, self.params, self.optimizer, self.info, model=self.net)
        if state is None:
            self.run_log.keep_until(-1)
            return
        self.step, self.lr_scale = int(state["step"]), float(state["lr_scale"])
        self.stream.position = (int(state["position"][0]), int(state["position"][1]))
        drawn = state.get("drawn")  # a checkpoint of older code has none: the rows before it are replayed
        self.stream.drawn = ([int(n) for n in drawn] if drawn is not None and len(drawn) == len(self.stream.samples)
                             else self.stream.replay_drawn())
        self.guard.load_state_dict(state["nan_guard"])
        self.last = dict(state["last"])
        self.eval_pending = bool(state.get("eval_pending"))
        self.run_log.keep_until(self.step)
        if self.info.is_main:
            log.info("resumed from step %d of %d (checkpoint in %s)", self.step, self.cfg.max_steps,
                     Path(self.run_dir) / "checkpoints")

    # ---- the run ------------------------------------------------------------------------------------------
    def _log(self, row: dict[str, Any]) -> None:
        self.last.update({k: v for k, v in row.items() if k != "nan_guard/action"})
        self.run_log.log({"step": self.step, **row})

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        seed_everything(cfg.seed, self.info.rank)
        self.model.train()
        if cfg.resume:
            self.resume()
        else:
            self.run_log.keep_until(-1)  # a fresh start: rows of an earlier attempt in this directory are void
        if self.guard.policy == "rollback":
            self.snapshot.take(self.params, self.optimizer)
        if self.step == 0 and cfg.eval_at_start:
            self._log(self._eval_row())
        elif self.eval_pending:  # the evaluation a stop signal skipped at this step
            self._log(self._eval_row())
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", mininterval=2.0,
                   disable=not self.info.is_main)
        with StopSignals() as stop:
            while self.step < cfg.max_steps and self.status == "running":
                row = self.train_step(inject=self.step + 1 in self.inject)
                if "compile/warmup_sec" in row:
                    bar.write(f"train.compile: {self.compiled_layers} transformer layers compiled; the first step "
                              f"took {row['compile/warmup_sec']:.0f} s with the compile warm-up")
                if self.status != "running":
                    self._log(row)
                    break
                last = self.step == cfg.max_steps
                due = last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0)
                if stop.requested(self.device):
                    self._log(row)
                    self.save(eval_pending=due)
                    self.status = INTERRUPTED
                    by = stop.received.name if stop.received else "a signal to another rank"
                    self.message = (f"stopped by {by} after step {self.step}; its checkpoint is saved and "
                                    "train.resume=true continues the run")
                    break
                if due:
                    row.update(self._eval_row())
                if last or self.step % cfg.log_every == 0 or any(k.startswith("eval/") for k in row):
                    self._log(row)
                if last or (cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0):
                    self.save()
                bar.update(1)
                bar.set_postfix(loss=f"{self.last.get('train/loss', math.nan):.3f}", refresh=False)
        bar.close()
        if self.status == "running":
            finite = all_finite(self.params.values())
            self.status = "completed" if finite else "diverged"
            if not finite:
                self.message = (f"trainable weights are non-finite after step {self.step} "
                                f"(nan_guard={self.guard.policy})")
        summary = self.summary()
        self.run_log.summary(summary)
        return summary

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status, "message": self.message, "step": self.step, "max_steps": self.cfg.max_steps,
            "trainable_params": sum(p.numel() for p in self.params.values()),
            "world_size": self.info.world, "wall_sec": time.time() - self.started, **self.data,
            **self._dose(),
            "nan_guard/policy": self.guard.policy, "nan_guard/events": self.guard.events,
            **{k: v for k, v in self.last.items() if k != "nan_guard/events"},
        }


def train(model: nn.Module, train_samples: Sequence[ConversationCodes], eval_samples: Sequence[ConversationCodes],
          cfg: TrainConfig, nan_guard: NanGuard, run_dir: str | Path, *, tracker: Optional[RunLog] = None,
          on_eval: Optional[OnEval] = None, inject_nonfinite_at: Sequence[int] = (),
          facts: Optional[FactMap] = None) -> dict[str, Any]:
    """Train `model` in place; returns the summary, which also goes to the tracker's summary.json.

    `tracker`: the app's tracking.Tracker (entered), used on rank 0 only; None makes a files-only Tracker in
    `run_dir`, which records status "failed" if training raises. `on_eval(step, model)` runs after every
    evaluation on every rank, model in eval mode; a mapping it returns is logged in the same metrics row.
    `inject_nonfinite_at` lists optimizer steps (from 1) whose loss is made NaN, to test the NaN guard. A diverged
    run returns normally with status "diverged". `facts` (conversation id -> facts stated) adds the measured
    data/exposures_per_fact and data/trained_facts to the summary and lets `cfg.exposures_per_fact` set the steps.
    """
    run_dir = Path(run_dir)

    def run(run_log: RunLog) -> dict[str, Any]:
        return Trainer(model, train_samples, eval_samples, cfg, nan_guard, run_dir, run_log, on_eval,
                       inject_nonfinite_at, facts).run()

    if not dist_info().is_main:
        return run(SilentLog())
    if tracker is not None:
        return run(tracker)
    with Tracker(None, run_dir, identity=RunIdentity.standalone(run_dir.name)) as own:
        return run(own)
