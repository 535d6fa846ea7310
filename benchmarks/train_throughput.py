"""Training throughput of the full moshiko LM (random weights) with peft LoRA r128 on pre-tokenised synthetic codes.

Issue 4's benchmark and issue 7's DDP figures. Every step is our training loop's own optimizer step
(`train.loop.Trainer.train_step`: batching and packing with the segment mask, our loss, fused AdamW over fp32 LoRA
weights, bf16 autocast, gradient clipping, DDP when launched by torchrun); the benchmark only chooses data, batch
sizes and switches, and times it. No Mimi in the step: codes are random ints in the right ranges, the text stream
padded as Moshi's is (pad while the user asks, sparse words with end-of-padding marks while Moshi answers).

Single GPU (writes train_throughput.json and .md):
    python benchmarks/train_throughput.py --out benchmarks/results
Two GPUs, same workload, after the single run (writes train_throughput_ddp.json and .md):
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --ddp --baseline benchmarks/results/train_throughput.json
Full finetuning with FSDP on two GPUs, sharded save and resume (writes train_fsdp.json and .md):
    torchrun --nproc-per-node 2 benchmarks/train_throughput.py --fsdp --out benchmarks/results
`--smoke` runs a tiny model for a few steps (on CPU if there is no GPU) to test this code path; its files end in
`_smoke`. `--variants NAME,...` times only the named variants, `--lora-rank`/`--lora-alpha` change the adapter
(benchmarks/full_scale.py uses both to time the app's own settings). moshi's compile is off unless the caller sets
NO_TORCH_COMPILE to an empty value, as the full-scale rehearsal does to match the app on a GPU.

Model FLOPs: a frame passes once through every nn.Linear of the LM (each depformer step has its own weights), so
forward costs 2*N and the input-gradient backward another 2*N, N = the base model's Linear weights (7.37 B). The
frozen base gets no weight gradient; LoRA's own matmuls, attention scores and checkpointing's recomputation are not
counted, so MFU = useful frames/s * 4*N / (bf16 GEMM rate measured in the same run) is a conservative figure.
Full finetuning (--fsdp) also computes every weight gradient: 6*N per frame.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # before moshi is imported: compiling moshi's kernels costs minutes

import argparse
import gc
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import moshi
import peft
import torch
import torch.distributed as dist
from moshi.models import loaders
from moshi.models.lm import LMModel
from torch import nn

from moshi_knowledge.codes.samples import FRAME_RATE, ConversationCodes, TurnSpan
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text, read_json
from moshi_knowledge.model.depformer_patch import patch_depformer
from moshi_knowledge.model.lora import apply_lora
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.train.distributed import barrier, dist_info, init_from_env
from moshi_knowledge.train.loop import Trainer  # the loop's step, without its eval and checkpoint writes
from moshi_knowledge.train.nan_guard import NanGuard

SEED = 0
GIB = 2**30
MEMORY_BUDGET_GIB = 40.0
TARGET_USEFUL_FPS = 9000.0  # with compiled layers; the eager step's target was 5,000
ANCHOR_USEFUL_FPS = 164.0  # docs/anchors.md: the published recipe on the seed's shape, one H200
REFERENCE_WORLD = 2  # the 1-GPU loss-curve reference matches a DDP run over this many GPUs
DDP_BATCH_PER_GPU = 8
FSDP_BATCH_PER_GPU = {True: 8, False: 4}  # by "the GPU has > 100 GiB": fp32 weights, grads and AdamW take 62 GiB
LORA = LoraSpec(targets="all", rank=128, alpha=256.0)
QA_SECONDS = (5.0, 10.0)  # the seed's Q/A conversations, and the turns of a long dialogue


@dataclass(frozen=True)
class Scale:
    """Model and workload sizes: the real benchmark, or a tiny smoke test of the same code path."""

    lm_overrides: dict[str, Any]
    seq_sec: float  # one training row (the published recipe's duration_sec)
    qa_count: int
    dialogue_count: int
    warmup_steps: int
    timed_steps: int
    curve_steps: int  # the 1-GPU vs DDP loss-curve comparison
    gemm_size: int
    suffix: str = ""


FULL = Scale({}, 100.0, 100, 32, warmup_steps=2, timed_steps=5, curve_steps=20, gemm_size=8192)
SMOKE = Scale(dict(dim=64, num_heads=4, num_layers=2, context=500, text_card=1000, card=256, depformer_dim=32,
                   depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=64),
              30.0, 12, 4, warmup_steps=1, timed_steps=1, curve_steps=3, gemm_size=256, suffix="_smoke")


@dataclass(frozen=True)
class Variant:
    workload: str  # "qa": the seed's shape; "dialogue": full-row dialogues
    patched: bool  # depformer patch (contiguous per-step inputs)
    packing: bool  # False: one conversation per row, padded, as moshi-finetune
    batch: int  # rows per optimizer step, over all ranks and micro-batches
    checkpointing: bool
    grad_accum: int = 1
    compile: bool = False  # train.compile: compiled layers and FlexAttention (eager: moshi's own small compiles)

    @property
    def name(self) -> str:
        return "-".join([self.workload, "packed" if self.packing else "padded",
                         "patched" if self.patched else "unpatched", f"b{self.batch}",
                         "ckpt" if self.checkpointing else "nockpt"]
                        + ([f"accum{self.grad_accum}"] if self.grad_accum > 1 else [])
                        + (["compiled"] if self.compile else []))


# Unpatched variants come first: the patch is a set of hooks that stays once applied. Batch sizes aim at <= 40 GiB.
VARIANTS = (
    Variant("qa", patched=False, packing=False, batch=4, checkpointing=True),  # the recipe as the anchor ran it
    Variant("qa", patched=False, packing=True, batch=4, checkpointing=True),
    Variant("dialogue", patched=False, packing=True, batch=4, checkpointing=True),
    Variant("qa", patched=True, packing=False, batch=8, checkpointing=True),
    Variant("qa", patched=True, packing=True, batch=4, checkpointing=True),
    Variant("qa", patched=True, packing=True, batch=8, checkpointing=True),
    Variant("qa", patched=True, packing=True, batch=16, checkpointing=True),
    Variant("qa", patched=True, packing=True, batch=2, checkpointing=False),
    Variant("dialogue", patched=True, packing=True, batch=4, checkpointing=True),
    Variant("dialogue", patched=True, packing=True, batch=8, checkpointing=True),
    Variant("dialogue", patched=True, packing=True, batch=2, checkpointing=False),
    Variant("qa", patched=True, packing=True, batch=8, checkpointing=True, compile=True),
    Variant("qa", patched=True, packing=True, batch=16, checkpointing=True, compile=True),
    Variant("dialogue", patched=True, packing=True, batch=8, checkpointing=True, compile=True),
)
DDP_VARIANT = Variant("qa", patched=True, packing=True, batch=DDP_BATCH_PER_GPU * REFERENCE_WORLD, checkpointing=True)
REFERENCE_VARIANT = replace(DDP_VARIANT, grad_accum=REFERENCE_WORLD)  # same micro-batches, one GPU


# ---- synthetic pre-tokenised data ------------------------------------------------------------------------------
def _answer_text(text: torch.Tensor, start: int, end: int, spec: StreamSpec, rng: random.Random) -> None:
    """Words of 1-3 tokens separated by 2-6 pad frames, the last pad before a word an end-of-padding mark."""
    t = start
    while True:
        t += rng.randint(2, 6)
        if t >= end:
            return
        text[t - 1] = spec.end_pad_id
        for _ in range(min(rng.randint(1, 3), end - t)):
            text[t] = rng.randrange(4, spec.text_card)  # ids 0-3 are special
            t += 1


def conversation(cid: str, turn_frames: Sequence[int], spec: StreamSpec, rng: random.Random,
                 gen: torch.Generator) -> ConversationCodes:
    """Turns of a user question (first 40%, Moshi's text all padding) then Moshi's answer; audio random."""
    n = sum(turn_frames)
    codes = torch.randint(0, spec.card, (17, n), generator=gen)
    codes[0] = spec.pad_id
    turns, t = [], 0
    for k, length in enumerate(turn_frames):
        split = t + max(1, int(0.4 * length))
        _answer_text(codes[0], split, t + length, spec, rng)
        turns.append(TurnSpan(f"{cid}-{k}", (t, split), (split, t + length)))
        t += length
    return ConversationCodes(cid, codes, turns)


def _turn_frames(rng: random.Random) -> int:
    return round(rng.uniform(*QA_SECONDS) * FRAME_RATE)


def workloads(spec: StreamSpec, scale: Scale) -> dict[str, list[ConversationCodes]]:
    """qa: one 5-10 s Q/A turn each (the seed). dialogue: rows filled by one dialogue of 5-10 s turns."""
    rng, gen = random.Random(SEED), torch.Generator().manual_seed(SEED)
    qa = [conversation(f"qa{i}", [_turn_frames(rng)], spec, rng, gen) for i in range(scale.qa_count)]
    row = round(scale.seq_sec * FRAME_RATE)
    dialogues = []
    for i in range(scale.dialogue_count):
        turns: list[int] = []
        while sum(turns) < row:
            turns.append(min(_turn_frames(rng), row - sum(turns)))
        dialogues.append(conversation(f"dialogue{i}", turns, spec, rng, gen))
    return {"qa": qa, "dialogue": dialogues}


# ---- model -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelCounts:
    linear_params: int  # N of the FLOP formula
    total_params: int
    trainable_params: int

    @property
    def full(self) -> bool:
        return self.trainable_params == self.total_params

    @property
    def flops_per_frame(self) -> int:
        """4N under LoRA (no base weight gradients), 6N when every weight trains."""
        return (6 if self.full else 4) * self.linear_params


def build_model(device: torch.device, scale: Scale, lora: Optional[LoraSpec] = LORA) -> tuple[nn.Module, ModelCounts]:
    """moshi's default LM kwargs, random weights made on the device (bf16 on GPU), then our peft LoRA (r128 on
    every Linear by default; None: the bare LM, every weight trainable). The same seed gives the same weights in
    every process."""
    torch.manual_seed(SEED)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the loop autocasts on CUDA only
    with torch.device(device):  # some of LMModel's layers ignore its device argument
        lm = LMModel(**(dict(loaders._lm_kwargs) | scale.lm_overrides), device=device, dtype=dtype).to(dtype)
    linear = sum(m.weight.numel() for m in lm.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in lm.parameters())
    if lora is None:
        return lm, ModelCounts(linear, total, total)
    with torch.device(device):
        model = apply_lora(lm, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, ModelCounts(linear, total, trainable)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state:
                p.copy_(state[name])


def checksum(state: dict[str, torch.Tensor]) -> float:
    """Identifies the initial LoRA weights, so the DDP run can show it starts where the 1-GPU run started."""
    return float(sum(t.double().abs().sum() for t in state.values()))


# ---- measuring -------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    if dist_info().world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    return peak.item() / GIB


def gemm_tflops(device: torch.device, n: int, groups: int = 10, per_group: int = 10) -> float:
    """Median bf16 (fp32 on CPU) n^3 matmul rate on random data, over a few input pairs (not cache-resident)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator(device).manual_seed(SEED)  # its own generator: leaves the model's seed alone
    pairs = [(torch.randn(n, n, device=device, dtype=dtype, generator=gen),
              torch.randn(n, n, device=device, dtype=dtype, generator=gen)) for _ in range(3)]
    for a, b in pairs:
        a @ b
    rates = []
    for _ in range(groups):
        _sync(device)
        start = time.perf_counter()
        for i in range(per_group):
            a, b = pairs[i % len(pairs)]
            a @ b
        _sync(device)
        rates.append(2 * n**3 * per_group / (time.perf_counter() - start) / 1e12)
    return statistics.median(rates)


def train_config(variant: Variant, scale: Scale, steps: int) -> TrainConfig:
    return TrainConfig(max_steps=steps, batch_size=variant.batch, grad_accum=variant.grad_accum,
                       seq_sec=scale.seq_sec, packing=variant.packing, gradient_checkpointing=variant.checkpointing,
                       eval_at_start=False, eval_every=0, seed=SEED, compile=variant.compile)


@dataclass
class StepTimes:
    seconds: list[float] = field(default_factory=list)
    useful_frames: list[int] = field(default_factory=list)  # conversation frames: the frames that carry loss
    losses: list[float] = field(default_factory=list)
    nonfinite: int = 0


def run_steps(model: nn.Module, samples: Sequence[ConversationCodes], variant: Variant, scale: Scale,
              device: torch.device, steps: int) -> tuple[StepTimes, Optional[float]]:
    """`steps` optimizer steps of the loop on a fresh optimizer; times and peak memory (GiB, max over ranks)."""
    _release(device)
    cfg = train_config(variant, scale, steps)
    trainer = Trainer(model, samples, [], cfg, NanGuard("skip"), Path(tempfile.gettempdir()))
    model.train()
    row_frames = variant.batch * trainer.seq_frames
    out = StepTimes()
    for _ in range(steps):
        _timed_step(trainer, device, out, row_frames)
    peak = _peak_gib(device)
    del trainer
    _release(device)
    return out, peak


def summarise(variant: Variant, times: StepTimes, peak: Optional[float], warmup: int, scale: Scale,
              counts: ModelCounts, gemm: float, world: int = 1) -> dict[str, Any]:
    """Figures per GPU over the timed steps (warmup excluded): medians of per-step rates."""
    seconds, useful = times.seconds[warmup:], times.useful_frames[warmup:]
    row_frames = variant.batch * round(scale.seq_sec * FRAME_RATE)
    useful_fps = statistics.median(u / s for u, s in zip(useful, seconds)) / world
    return {
        "name": variant.name, **asdict(variant), "gpus": world,
        "step_s_median": statistics.median(seconds),
        "useful_frames_per_step": statistics.mean(useful),
        "useful_fraction": statistics.mean(useful) / row_frames,
        "useful_frames_per_s": useful_fps,
        "frames_per_s": row_frames / statistics.median(seconds) / world,
        "peak_gib": peak,
        "within_memory_budget": peak is None or peak <= MEMORY_BUDGET_GIB,
        "mfu_useful": useful_fps * counts.flops_per_frame / (gemm * 1e12),
        "nonfinite_steps": times.nonfinite,
        "step_s": seconds, "warmup_step_s": times.seconds[:warmup], "losses": times.losses,
    }


def measure(model: nn.Module, data: dict[str, list[ConversationCodes]], variant: Variant, scale: Scale,
            device: torch.device, counts: ModelCounts, gemm: float, steps: int) -> dict[str, Any]:
    """One variant; an out-of-memory step is recorded as such instead of ending the benchmark."""
    try:
        times, peak = run_steps(model, data[variant.workload], variant, scale, device, steps)
    except torch.cuda.OutOfMemoryError as err:
        message = str(err).splitlines()[0]
        _release(device)
        return {"name": variant.name, **asdict(variant), "error": f"out of memory: {message}"}
    return summarise(variant, times, peak, scale.warmup_steps, scale, counts, gemm)


# ---- reporting -------------------------------------------------------------------------------------------------
def environment(device: torch.device, counts: ModelCounts, gemm: float, scale: Scale,
                lora: Optional[LoraSpec] = LORA) -> dict[str, Any]:
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "moshi": moshi.__version__,
        "peft": peft.__version__, "python": platform.python_version(),
        "torch_compile": not os.environ.get("NO_TORCH_COMPILE"),
        "gemm_bf16_tflops": gemm, "gemm_size": scale.gemm_size, "gpus": dist_info().world,
        "model": {**asdict(counts), "flops_per_frame": counts.flops_per_frame,
                  "flops_formula": ("6 * N per useful frame: forward 2N + input- and weight-gradient backward 4N"
                                    if counts.full else "4 * N per useful frame: forward 2N + input-gradient "
                                    "backward 2N") + ", N = base nn.Linear weights; LoRA matmuls, attention and "
                                                     "recomputation not counted"},
        "lora": lora and asdict(lora), "memory_budget_gib": MEMORY_BUDGET_GIB,
    }


def _fmt(value: Any, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def variants_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| variant | GPUs | step s | useful frames/s per GPU | useful % | peak GiB | MFU (useful) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r.get('gpus', 1)} | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['gpus']} | {r['step_s_median']:.3f} | {_fmt(r['useful_frames_per_s'])} | "
                     f"{100 * r['useful_fraction']:.1f} | {_fmt(r['peak_gib'], 1)} | {100 * r['mfu_useful']:.1f}% |")
    return "\n".join(lines)


def target_check(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The seed's shape, packed and patched, within the memory budget: the best variant against the target."""
    fits = [r for r in rows if "error" not in r and r["workload"] == "qa" and r["packing"] and r["patched"]
            and r["grad_accum"] == 1 and r["within_memory_budget"]]
    anchor = next((r for r in rows if r["name"] == VARIANTS[0].name and "error" not in r), None)
    best = max(fits, key=lambda r: r["useful_frames_per_s"], default=None)
    return {
        "target_useful_frames_per_s": TARGET_USEFUL_FPS, "memory_budget_gib": MEMORY_BUDGET_GIB,
        "best_variant": best and best["name"], "best_useful_frames_per_s": best and best["useful_frames_per_s"],
        "best_mfu_useful": best and best["mfu_useful"],
        "met": bool(best and best["useful_frames_per_s"] >= TARGET_USEFUL_FPS),
        "recipe_anchor_measured_useful_frames_per_s": anchor and anchor["useful_frames_per_s"],
        "recipe_anchor_notes_useful_frames_per_s": ANCHOR_USEFUL_FPS,
        "speedup_vs_measured_anchor": best and anchor and best["useful_frames_per_s"] / anchor["useful_frames_per_s"],
    }


def write_single(out: Path, result: dict[str, Any], scale: Scale) -> None:
    env, target = result["environment"], result.get("target", {})
    rows = result["variants"] + ([result["ddp_reference"]] if "ddp_reference" in result else [])
    text = "\n".join([
        f"# Training throughput, one GPU ({env['device']}, torch {env['torch']})", "",
        f"Full moshiko LM, random weights, peft LoRA r{env['lora']['rank']} (alpha {env['lora']['alpha']:g}) on "
        "every Linear, "
        f"{scale.seq_sec:g} s rows, pre-tokenised codes. bf16 GEMM peak measured in the run: "
        f"{env['gemm_bf16_tflops']:.0f} TFLOP/s; MFU counts {env['model']['flops_per_frame'] / 1e9:.1f} GFLOP per "
        f"useful frame ({env['model']['flops_formula']}).", "",
        variants_table(rows), "",
        f"Target on the seed's shape: >= {TARGET_USEFUL_FPS:,.0f} useful frames/s at <= {MEMORY_BUDGET_GIB:g} GiB: "
        f"{'met' if target.get('met') else 'not met'} by {target.get('best_variant')} "
        f"({_fmt(target.get('best_useful_frames_per_s'))}/s); the recipe's layout measured "
        f"{_fmt(target.get('recipe_anchor_measured_useful_frames_per_s'))}/s here (anchor in docs/anchors.md: "
        f"{ANCHOR_USEFUL_FPS:g}).", ""])
    atomic_write_json(out / f"train_throughput{scale.suffix}.json", result)
    atomic_write_text(out / f"train_throughput{scale.suffix}.md", text)


# ---- where a step's GPU time goes -------------------------------------------------------------------------------
KERNEL_KINDS = (  # by kernel name, first match wins; inductor names its kernels triton_{tem,poi,red,per}_...
    ("attention", ("flex_attention", "triton_tem", "fmha", "attention", "flash")),
    ("GEMM", ("gemm", "nvjet", "cutlass", "xmma", "sm90", "sm80")),
    ("optimizer", ("multi_tensor", "adam")),
    ("fused elementwise and reductions (inductor)", ("triton_",)),
    ("other elementwise and copies (eager)", ("elementwise", "copy", "reduce", "fill", "index", "cat")),
)


def _kind(kernel: str) -> str:
    name = kernel.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in name for m in marks)), "other")


def kernel_seconds(prof: Any, top: int) -> tuple[Counter[str], list[tuple[str, float]]]:
    """The profile's GPU kernel time in seconds by kind, and its `top` busiest kernels (names cut to 90 characters).

    Not the ranges dynamo marks on the GPU's timeline ("## Call CompiledFxGraph ... ##"): they span kernels already
    counted, and counting them too doubled the total."""
    kernels = [e for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA and not e.key.startswith("## ")]
    kinds: Counter[str] = Counter()
    for event in kernels:
        kinds[_kind(event.key)] += event.self_device_time_total / 1e6
    busiest = sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]
    return kinds, [(e.key[:90], e.self_device_time_total / 1e6) for e in busiest]


def profile_step(model: nn.Module, samples: Sequence[ConversationCodes], variant: Variant, scale: Scale,
                 device: torch.device, lora_rank: int, steps: int = 2) -> dict[str, Any]:
    """GPU time of `steps` loop steps (after two warm-up steps) by kernel kind, and the share of matrix products
    that are LoRA's (an operand with a dimension equal to the rank: no base weight of moshiko has 128 rows)."""
    from torch.profiler import ProfilerActivity, profile

    _release(device)
    trainer = Trainer(model, samples, [], train_config(variant, scale, steps + 2), NanGuard("skip"),
                      Path(tempfile.gettempdir()))
    for _ in range(2):
        trainer.train_step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for _ in range(steps):
            trainer.train_step()
        _sync(device)
    kinds, busiest = kernel_seconds(prof, top=15)
    lora = gemm = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm"):
            gemm += event.device_time_total
            if any(lora_rank in shape for shape in event.input_shapes if shape):
                lora += event.device_time_total
    total = sum(kinds.values())  # 0 on a CPU smoke run: no CUDA kernels
    del trainer
    _release(device)
    return {"variant": variant.name, "steps": steps, "gpu_ms_per_step": total * 1e3 / steps,
            "share": {k: v / total for k, v in kinds.most_common()},
            "lora_share_of_gemm_time": lora / gemm if gemm else None,
            "top_kernels": [(name, sec * 1e3 / steps) for name, sec in busiest]}


def write_profile(out: Path, result: dict[str, Any], scale: Scale) -> None:
    lines = [f"# Where a training step's GPU time goes: {result['variant']}", "",
             f"{result['gpu_ms_per_step']:,.0f} ms of kernel time per step (torch.profiler, {result['steps']} steps "
             "after two warm-up steps).", "", "| kind of kernel | share |", "|---|---|"]
    lines += [f"| {kind} | {100 * share:.1f}% |" for kind, share in result["share"].items()]
    if result["lora_share_of_gemm_time"] is not None:
        lines += ["", f"LoRA's matrix products: {100 * result['lora_share_of_gemm_time']:.1f}% of the time in "
                      "aten matrix products."]
    lines += ["", "| busiest kernels | ms per step |", "|---|---|"]
    lines += [f"| `{name}` | {ms:.1f} |" for name, ms in result["top_kernels"]]
    atomic_write_json(out / f"train_profile{scale.suffix}.json", result)
    atomic_write_text(out / f"train_profile{scale.suffix}.md", "\n".join(lines) + "\n")


# ---- the two modes ---------------------------------------------------------------------------------------------
def single(out: Path, scale: Scale, variants: Sequence[Variant] = VARIANTS, lora: LoraSpec = LORA,
           profiled: Optional[Variant] = None) -> None:
    """Every variant in turn on one GPU; with all of them, the DDP run's 1-GPU loss-curve reference too.
    `profiled`: afterwards, where that variant's GPU time goes (train_profile.json and .md)."""
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    started = time.perf_counter()
    model, counts = build_model(device, scale, lora)
    initial = trainable_state(model)
    gemm = gemm_tflops(device, scale.gemm_size)
    print(f"model built and GEMM measured ({gemm:.0f} TFLOP/s) in {time.perf_counter() - started:.0f} s", flush=True)
    env = environment(device, counts, gemm, scale, lora)
    data = workloads(StreamSpec.from_lm(model), scale)
    result: dict[str, Any] = {"environment": env, "init_checksum": checksum(initial), "variants": []}
    steps = scale.warmup_steps + scale.timed_steps
    for variant in variants:
        if variant.patched:
            patch_depformer(model)  # idempotent; every later variant runs patched
        result["variants"].append(measure(model, data, variant, scale, device, counts, gemm, steps))
        result["target"] = target_check(result["variants"])
        write_single(out, result, scale)  # after each variant: a run cut short still leaves its figures
        print(variants_table(result["variants"][-1:]).splitlines()[-1],
              f"at {time.perf_counter() - started:.0f} s", flush=True)
    if profiled is not None:
        write_profile(out, profile_step(model, data[profiled.workload], profiled, scale, device, lora.rank), scale)
    if tuple(variants) != VARIANTS:
        return
    load_trainable(model, initial)  # the loss-curve reference starts from the initial LoRA weights
    result["ddp_reference"] = measure(model, data, REFERENCE_VARIANT, scale, device, counts, gemm, scale.curve_steps)
    write_single(out, result, scale)
    print(variants_table(result["variants"] + [result["ddp_reference"]]), flush=True)


def ddp(out: Path, baseline_path: Path, scale: Scale) -> None:
    info, device = init_from_env()
    if info.world != REFERENCE_WORLD:
        raise SystemExit(f"--ddp compares with a {REFERENCE_WORLD}-GPU reference; launched on {info.world}")
    baseline = read_json(baseline_path)
    model, counts = build_model(device, scale)
    patch_depformer(model)
    start_sum = checksum(trainable_state(model))
    gemm = gemm_tflops(device, scale.gemm_size)
    data = workloads(StreamSpec.from_lm(model), scale)
    times, peak = run_steps(model, data["qa"], DDP_VARIANT, scale, device, scale.curve_steps)
    if info.is_main:
        row = summarise(DDP_VARIANT, times, peak, scale.warmup_steps, scale, counts, gemm, info.world)
        reference = baseline["ddp_reference"]
        diffs = [abs(a - b) / abs(b) for a, b in zip(row["losses"], reference["losses"])]
        result = {
            "environment": environment(device, counts, gemm, scale),
            "ddp": row, "reference_1gpu": reference,
            "scaling_efficiency": row["useful_frames_per_s"] / reference["useful_frames_per_s"],
            "same_initial_weights": abs(start_sum - baseline["init_checksum"]) <= 1e-9 * baseline["init_checksum"],
            "loss_curve": {"steps": len(diffs), "max_rel_diff": max(diffs), "tolerance": 1e-2,
                           "match": max(diffs) <= 1e-2},
        }
        write_ddp(out, result, scale)
        print(variants_table([reference, row]), flush=True)
    dist.destroy_process_group()


def write_ddp(out: Path, result: dict[str, Any], scale: Scale) -> None:
    env, curve = result["environment"], result["loss_curve"]
    losses = zip(result["reference_1gpu"]["losses"], result["ddp"]["losses"])
    text = "\n".join([
        f"# LoRA with DDP, {env['gpus']} GPUs ({env['device']}, torch {env['torch']})", "",
        "Same global batch: one GPU with grad_accum 2 against two GPUs with one micro-batch each, from the same "
        "initial weights.", "",
        variants_table([result["reference_1gpu"], result["ddp"]]), "",
        f"Scaling efficiency (useful frames/s per GPU against one GPU): {100 * result['scaling_efficiency']:.1f}%. "
        f"Loss curve over {curve['steps']} steps: max relative difference {curve['max_rel_diff']:.2e} "
        f"(tolerance {curve['tolerance']:g}): {'match' if curve['match'] else 'MISMATCH'}; same initial weights: "
        f"{result['same_initial_weights']}.", "",
        "| step | loss, 1 GPU | loss, DDP |", "|---|---|---|",
        *(f"| {i} | {a:.5f} | {b:.5f} |" for i, (a, b) in enumerate(losses, start=1)), ""])
    atomic_write_json(out / f"train_throughput_ddp{scale.suffix}.json", result)
    atomic_write_text(out / f"train_throughput_ddp{scale.suffix}.md", text)


# ---- full finetuning with FSDP -------------------------------------------------------------------------------
def _checkpoint_root(bytes_needed: int) -> Optional[Path]:
    """A local folder with room for the sharded checkpoint (all ranks write there), or None."""
    for folder in (Path("/dev/shm"), Path(tempfile.gettempdir())):
        if folder.is_dir() and shutil.disk_usage(folder).free > 1.05 * bytes_needed:
            return folder
    return None


def _timed_step(trainer: Trainer, device: torch.device, times: StepTimes, row_frames: int) -> None:
    _sync(device)
    start = time.perf_counter()
    row = trainer.train_step()
    _sync(device)
    times.seconds.append(time.perf_counter() - start)
    times.useful_frames.append(round(row["train/useful_fraction"] * row_frames))
    times.losses.append(row["train/loss"])
    times.nonfinite += row["nan_guard/action"] != "step"


def _timed(fn: Any, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def fsdp(out: Path, scale: Scale) -> None:
    """`lora=full` on the bare LM under the loop's FSDP: step figures, then a sharded save at the half-way step and a
    resume from it in the same processes, whose losses must repeat the uninterrupted run's."""
    info, device = init_from_env()
    model, counts = build_model(device, scale, lora=None)
    patch_depformer(model)
    gemm = gemm_tflops(device, scale.gemm_size)
    data = workloads(StreamSpec.from_lm(model), scale)
    big = device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory > 100 * GIB
    variant = replace(DDP_VARIANT, batch=FSDP_BATCH_PER_GPU[big] * info.world)
    steps = scale.warmup_steps + scale.timed_steps + 1
    half = steps // 2
    state_bytes = 12 * counts.total_params  # fp32 weights + two AdamW moments, over all ranks
    root = _checkpoint_root(state_bytes)
    print(f"checkpoint needs {state_bytes / GIB:.0f} GiB; writing it under {root}", flush=True)
    run_dir = (root or Path(tempfile.gettempdir())) / "train_fsdp_run"
    if info.is_main:
        shutil.rmtree(run_dir, ignore_errors=True)
    cfg = replace(train_config(variant, scale, steps), distributed="fsdp", keep_checkpoints=1)
    trainer = Trainer(model, data["qa"], [], cfg, NanGuard("skip"), run_dir)
    model.train()
    _release(device)  # the peak below is training's, not building's (the fp32 copy before sharding)
    row_frames = variant.batch * trainer.seq_frames
    times, extra = StepTimes(), {}
    for _ in range(steps):
        _timed_step(trainer, device, times, row_frames)
        if trainer.step == half and root is not None:
            extra["save_s"] = _timed(trainer.save, device)
    peak = _peak_gib(device)
    reserved = torch.cuda.max_memory_reserved(device) / GIB if device.type == "cuda" else None
    resumed = StepTimes()
    if root is not None:
        extra["checkpoint_gib"] = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file()) / GIB
        extra["load_s"] = _timed(trainer.resume, device)
        extra["resumed_from_step"] = trainer.step
        while trainer.step < steps:
            _timed_step(trainer, device, resumed, row_frames)
    if info.is_main:
        row = summarise(variant, times, peak, scale.warmup_steps, scale, counts, gemm, info.world)
        row["peak_reserved_gib_rank0"] = reserved
        straight = times.losses[half:]
        diffs = [abs(a - b) / abs(b) for a, b in zip(resumed.losses, straight)]
        result = {
            "environment": environment(device, counts, gemm, scale), "fsdp": row,
            "checkpoint": {"dir": str(run_dir), **extra, "saved_at_step": half if root else None,
                           "straight_losses": straight, "resumed_losses": resumed.losses,
                           "max_rel_diff": max(diffs) if diffs else None, "tolerance": 1e-3,
                           "first_step_equal": bool(diffs) and diffs[0] == 0.0,
                           "match": bool(diffs) and max(diffs) <= 1e-3},
        }
        write_fsdp(out, result, scale)
        print(variants_table([row]), "\n", {k: v for k, v in result["checkpoint"].items()}, flush=True)
    barrier()
    if info.is_main:
        shutil.rmtree(run_dir, ignore_errors=True)
    dist.destroy_process_group()


def write_fsdp(out: Path, result: dict[str, Any], scale: Scale) -> None:
    env, row, ckpt = result["environment"], result["fsdp"], result["checkpoint"]
    model = env["model"]
    lines = [
        f"# Full finetuning with FSDP, {env['gpus']} GPUs ({env['device']}, torch {env['torch']})", "",
        f"Full moshiko LM, random weights, every parameter trained ({model['trainable_params'] / 1e9:.2f} B) by the "
        "loop's own step under FSDP2 (`train.distributed=fsdp`: one shard unit per transformer layer, bf16 compute, "
        "fp32 sharded master weights, gradients and AdamW state), gradient checkpointing, the seed's shape packed "
        f"and patched, {scale.seq_sec:g} s rows, global batch {row['batch']}. MFU counts "
        f"{model['flops_per_frame'] / 1e9:.1f} GFLOP per useful frame (6N) against the bf16 GEMM rate rank 0 "
        f"measured while both GPUs ran it ({env['gemm_bf16_tflops']:.0f} TFLOP/s).", "",
        variants_table([row]), "",
        f"Peak allocated per GPU (max over ranks): {_fmt(row['peak_gib'], 1)} GiB; reserved on rank 0: "
        f"{_fmt(row['peak_reserved_gib_rank0'], 1)} GiB.", ""]
    if ckpt.get("saved_at_step"):
        lines += [
            f"Sharded checkpoint (DCP, one shard file per rank) at step {ckpt['saved_at_step']}: "
            f"{ckpt['checkpoint_gib']:.1f} GiB, saved in {ckpt['save_s']:.1f} s, "
            f"loaded back in {ckpt['load_s']:.1f} s. "
            f"Resumed from step {ckpt['resumed_from_step']}: first step's loss equal to the uninterrupted run's: "
            f"{ckpt['first_step_equal']}; max relative difference {_fmt(ckpt['max_rel_diff'], 8)} (tolerance "
            f"{ckpt['tolerance']:g}): {'match' if ckpt['match'] else 'MISMATCH'}.", "",
            "| step | loss, uninterrupted | loss, resumed |", "|---|---|---|",
            *(f"| {ckpt['saved_at_step'] + i} | {a:.6f} | {b:.6f} |"
              for i, (a, b) in enumerate(zip(ckpt["straight_losses"], ckpt["resumed_losses"]), start=1)), ""]
    else:
        lines += ["No checkpoint written: no local folder had room for it.", ""]
    atomic_write_json(out / f"train_fsdp{scale.suffix}.json", result)
    atomic_write_text(out / f"train_fsdp{scale.suffix}.md", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny model, two steps per variant (CPU is fine)")
    parser.add_argument("--ddp", action="store_true", help="under torchrun: DDP figures against --baseline")
    parser.add_argument("--baseline", type=Path, help="the single-GPU run's JSON (for --ddp)")
    parser.add_argument("--fsdp", action="store_true", help="under torchrun: full finetuning with FSDP, sharded "
                                                            "save and resume")
    parser.add_argument("--variants", help="comma-separated variant names to time (default: all of them)")
    parser.add_argument("--profile", help="a variant name: profile its step after the timed variants")
    parser.add_argument("--tag", help="appended to the result files' names (a partial set of variants)")
    parser.add_argument("--lora-rank", type=int, default=LORA.rank)
    parser.add_argument("--lora-alpha", type=float, default=LORA.alpha)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    scale = SMOKE if args.smoke else FULL
    if args.tag:
        scale = replace(scale, suffix=f"{scale.suffix}_{args.tag}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ddp:
        if args.baseline is None:
            parser.error("--ddp needs --baseline (the single-GPU run's JSON)")
        ddp(args.out, args.baseline, scale)
    elif args.fsdp:
        fsdp(args.out, scale)
    else:
        by_name = {v.name: v for v in VARIANTS}
        names = args.variants.split(",") if args.variants else list(by_name)
        unknown = [n for n in names + ([args.profile] if args.profile else []) if n not in by_name]
        if unknown:
            parser.error(f"unknown variant(s) {unknown}; choose from {list(by_name)}")
        single(args.out, scale, [by_name[n] for n in names], replace(LORA, rank=args.lora_rank, alpha=args.lora_alpha),
               by_name[args.profile] if args.profile else None)


if __name__ == "__main__":
    main()
