"""Is the compiled training step the eager one? bf16 loss curves side by side, on one GPU.

The model, adapter and data are train_throughput.py's: the full moshiko architecture with random bf16 weights,
LoRA r128 on every Linear, the seed's shape packed into 100 s rows, gradient checkpointing. Every curve starts from
the same LoRA weights, sees the same rows in the same order and runs the loop's own step (`Trainer.train_step`):

- `eager`: train.compile=false, the dense segment mask (torch picks its memory-efficient kernel);
- `eager-math`: the same step with SDPA's math kernel, an equivalent computation in another order. Two eager
  curves differ by that much in bf16 through rounding alone: this is the yardstick;
- `compiled`: train.compile=true, the app's default on a GPU (compiled layers that round to bf16 where eager
  rounds, FlexAttention);
- `compiled-fp32-between`: the same, with inductor's default rounding: its fused kernels keep fp32 between the
  ops they fuse and round once at the end.

Figures per curve: the largest relative difference of the step loss from `eager` over the curve, and at the
first step (the same weights: forward numerics only). Then which bf16 step is nearer exact arithmetic: the
first step's gradients of each curve against those of an fp32 step (the same weights cast up, no autocast, no
TF32): relative error, and the share of coordinates whose sign agrees (AdamW's first update is about
lr * sign(gradient), so signs decide where it moves). Writes compile_equivalence.json and .md.
    python benchmarks/compile_equivalence.py --out benchmarks/results
`--smoke` runs the tiny model on CPU for a few steps (no FlexAttention there) to test this code path.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi's own small compiles off, as in train_throughput.py

import argparse
import contextlib
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
import torch._dynamo
from torch._dynamo.utils import counters
from torch.nn.attention import SDPBackend, sdpa_kernel

from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text
from moshi_knowledge.model.depformer_patch import patch_depformer
from moshi_knowledge.train.compile import set_layer_compile
from moshi_knowledge.train.loop import Trainer
from moshi_knowledge.train.nan_guard import NanGuard
from train_throughput import (
    FULL,
    SMOKE,
    Scale,
    Variant,
    build_model,
    load_trainable,
    train_config,
    trainable_state,
    workloads,
)

STEPS = {"full": 50, "smoke": 3}
BATCH = 4  # rows per step: 50 eager steps in about a minute


@dataclass(frozen=True)
class Curve:
    name: str
    compile: bool
    math_kernel: bool = False
    eager_rounding: bool = True  # with compile: round to bf16 where eager does (set_layer_compile)


CURVES = (Curve("eager", compile=False), Curve("eager-math", compile=False, math_kernel=True),
          Curve("compiled", compile=True), Curve("compiled-fp32-between", compile=True, eager_rounding=False))


def _keep_first_gradients(trainer: Trainer, into: dict[str, torch.Tensor]) -> None:
    """Copy the gradients (clipped, as the optimizer gets them) to `into` at the first optimizer step."""

    def keep(*_: Any) -> None:
        if not into:
            into.update({n: p.grad.detach().float().cpu() for n, p in trainer.params.items() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(keep)


def gradient_accuracy(grads: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> dict[str, float]:
    """Against the fp32 step's gradients: ||g - exact|| / ||exact||, and the share of exact's nonzero
    coordinates whose sign g matches."""
    diff = norm = agree = nonzero = 0.0
    for name, e in exact.items():
        g = grads[name]
        diff += float((g - e).pow(2).sum())
        norm += float(e.pow(2).sum())
        mask = e != 0
        agree += float((torch.sign(g[mask]) == torch.sign(e[mask])).sum())
        nonzero += float(mask.sum())
    return {"grad_rel_error_vs_fp32": (diff / norm) ** 0.5, "sign_agreement_vs_fp32": agree / max(nonzero, 1.0)}


def fp32_gradients(model: torch.nn.Module, samples: list, scale: Scale,
                   initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first step's gradients with every weight in fp32 (exact casts of the bf16 ones) and no autocast."""
    set_layer_compile(model, False)
    model.float()
    load_trainable(model, initial)
    torch.backends.cuda.matmul.allow_tf32 = False
    variant = Variant("qa", patched=True, packing=True, batch=BATCH, checkpointing=True)
    cfg = replace(train_config(variant, scale, 1), precision="fp32")
    trainer = Trainer(model, samples, [], cfg, NanGuard("skip"), Path(tempfile.gettempdir()))
    grads: dict[str, torch.Tensor] = {}
    _keep_first_gradients(trainer, grads)
    trainer.train_step()
    return grads


def run_curve(model: torch.nn.Module, samples: list, curve: Curve, scale: Scale, steps: int,
              initial: dict[str, torch.Tensor], device: torch.device,
              first_grads: dict[str, torch.Tensor]) -> dict[str, Any]:
    load_trainable(model, initial)
    variant = Variant("qa", patched=True, packing=True, batch=BATCH, checkpointing=True, compile=curve.compile)
    cfg = train_config(variant, scale, steps)
    losses, norms, seconds = [], [], []
    set_layer_compile(model, False)
    if curve.compile:  # a fresh compile with the curve's rounding; the Trainer keeps layers already compiled
        torch._dynamo.reset()
        set_layer_compile(model, True, curve.eager_rounding)
    with sdpa_kernel(SDPBackend.MATH) if curve.math_kernel else contextlib.nullcontext():
        trainer = Trainer(model, samples, [], cfg, NanGuard("skip"), Path(tempfile.gettempdir()))
        _keep_first_gradients(trainer, first_grads)
        for _ in range(steps):
            start = time.perf_counter()
            row = trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            losses.append(row["train/loss"])
            norms.append(row["train/grad_norm"])
    median = statistics.median(seconds[1:] or seconds)
    print(f"{curve.name}: first step {seconds[0]:.1f} s, then {median:.2f} s; loss {losses[0]:.4f} -> "
          f"{losses[-1]:.4f}", flush=True)
    breaks = {reason.splitlines()[0][:160]: n for reason, n in counters["graph_break"].items()}
    return {**vars(curve), "losses": losses, "grad_norms": norms, "first_step_s": seconds[0], "step_s_median": median,
            "graph_breaks_so_far": breaks, "unique_graphs_so_far": counters["stats"]["unique_graphs"]}


def compare(curves: list[dict[str, Any]]) -> None:
    """Each curve's relative loss difference from `eager`: at step 1 and the largest over the curve."""
    reference = curves[0]["losses"]
    for curve in curves:
        rel = [abs(a - b) / abs(b) for a, b in zip(curve["losses"], reference)]
        curve["rel_diff_first"], curve["rel_diff_max"] = rel[0], max(rel)
        curve["rel_diff_max_step"] = rel.index(max(rel)) + 1


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# Compiled vs eager training step, bf16 ({env['device']}, torch {env['torch']})", "",
             f"{result['steps']} steps of the loop's step, {BATCH} packed {result['seq_sec']:g} s rows each, from "
             "the same LoRA weights on the same rows. Relative difference of the step loss from `eager`.", "",
             "| curve | first step s | step s | loss at 1 / last | rel. diff at step 1 | largest rel. diff (step) "
             "| step-1 gradient: rel. error vs fp32 | sign agreement vs fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["curves"]:
        lines.append(f"| {c['name']} | {c['first_step_s']:.1f} | {c['step_s_median']:.2f} | "
                     f"{c['losses'][0]:.4f} / {c['losses'][-1]:.4f} | {c['rel_diff_first']:.2e} | "
                     f"{c['rel_diff_max']:.2e} ({c['rel_diff_max_step']}) | "
                     f"{c.get('grad_rel_error_vs_fp32', math.nan):.2e} | "
                     f"{100 * c.get('sign_agreement_vs_fp32', math.nan):.2f}% |")
    yard = next(c for c in result["curves"] if c["name"] == "eager-math")["rel_diff_max"]
    comp = next(c for c in result["curves"] if c["name"] == "compiled")["rel_diff_max"]
    lines += ["", f"compiled vs eager: {comp:.2e}; eager-math vs eager (the yardstick): {yard:.2e}; "
              f"within the yardstick: {comp <= yard}.", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps (CPU is fine)")
    args = parser.parse_args(argv)
    scale, steps = (SMOKE, STEPS["smoke"]) if args.smoke else (FULL, STEPS["full"])
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model, _ = build_model(device, scale)
    patch_depformer(model)
    initial = trainable_state(model)
    samples = workloads(StreamSpec.from_lm(model), scale)["qa"]
    result: dict[str, Any] = {
        "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "torch": torch.__version__},
        "steps": steps, "batch": BATCH, "seq_sec": scale.seq_sec, "curves": []}
    args.out.mkdir(parents=True, exist_ok=True)
    first_grads: list[dict[str, torch.Tensor]] = []
    for curve in CURVES:
        first_grads.append({})
        result["curves"].append(run_curve(model, samples, curve, scale, steps, initial, device, first_grads[-1]))
        compare(result["curves"])
        atomic_write_json(args.out / f"compile_equivalence{scale.suffix}.json", result)  # a cut-short run keeps
    exact = fp32_gradients(model, samples, scale, initial)
    for curve, grads in zip(result["curves"], first_grads):
        curve.update(gradient_accuracy(grads, exact))
    atomic_write_json(args.out / f"compile_equivalence{scale.suffix}.json", result)
    atomic_write_text(args.out / f"compile_equivalence{scale.suffix}.md", markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
