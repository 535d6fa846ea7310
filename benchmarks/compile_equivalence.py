"""Is the compiled (and the float8) training step the eager one? bf16 loss curves judged against their spread.

The model, adapter and data are train_throughput.py's: the full moshiko architecture with random bf16 weights,
LoRA r128 on every Linear, the seed's shape packed into 100 s rows, gradient checkpointing. Every curve starts from
the same LoRA weights, sees the same rows and runs the loop's own step (`Trainer.train_step`).

The yardstick is a spread, not one draw: in bf16 a 50-step curve is chaotic, and two computations that differ
only in an irrelevant order end apart by rounding alone. The spread curves are eager steps (train.compile=false,
the dense segment mask) that differ only so:

- `eager`: torch's memory-efficient attention kernel, each step's rows in the stream's order (the reference);
- `eager-reversed`: the same with each step's rows in reverse order (the loss and the adapters' weight gradients
  sum over the rows in another order);
- `eager-math`, `eager-math-reversed`: both again with SDPA's math kernel.

The spread is the largest relative loss difference between any two of them over the curve. Judged against it:

- `compiled`: train.compile=true, the app's default on a GPU (compiled layers that round to bf16 where eager
  rounds, FlexAttention);
- `compiled-fp32-between`: the same with inductor's default rounding (fp32 kept between fused ops);
- `compiled-fp8`: train.compile=true and train.fp8=true (the frozen base layers in float8, train/fp8.py).

A judged curve is within the spread when its largest relative difference from `eager` is at most the spread.
Each curve's median step time and peak memory are timed on the same shape in the same call, so the compiled and
float8 steps' speeds compare directly. Then which bf16 step is nearer exact arithmetic: the first step's
gradients of each curve against those of an fp32 step (the same weights cast up, no autocast, no TF32): relative
error, and the share of coordinates whose sign agrees (AdamW's first update is about lr * sign(gradient)).
Writes compile_equivalence.json and .md.

    python benchmarks/compile_equivalence.py --out benchmarks/results
    python benchmarks/compile_equivalence.py --curves eager,eager-reversed,compiled,compiled-fp8  # a subset

`--smoke` runs the tiny model on CPU for a few steps (no FlexAttention there, float8 emulated) to test this code
path.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # moshi's own small compiles off, as in train_throughput.py

import argparse
import contextlib
import math
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
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
    reversed_rows: bool = False  # each step's rows in reverse order
    eager_rounding: bool = True  # with compile: round to bf16 where eager does (set_layer_compile)
    fp8: bool = False  # train.fp8: the model keeps its float8 layers afterwards, so it runs last


CURVES = (Curve("eager", compile=False), Curve("eager-reversed", compile=False, reversed_rows=True),
          Curve("eager-math", compile=False, math_kernel=True),
          Curve("eager-math-reversed", compile=False, math_kernel=True, reversed_rows=True),
          Curve("compiled", compile=True), Curve("compiled-fp32-between", compile=True, eager_rounding=False),
          Curve("compiled-fp8", compile=True, fp8=True))


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
    """The first step's gradients with every weight in fp32 (exact casts of the bf16 ones) and no autocast; the
    model goes back to its own dtype after (bf16 to fp32 and back is exact)."""
    dtype = next(p.dtype for p in model.parameters() if not p.requires_grad)
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
    model.to(dtype)
    return grads


def run_curve(model: torch.nn.Module, samples: list, curve: Curve, scale: Scale, steps: int,
              initial: dict[str, torch.Tensor], device: torch.device,
              first_grads: dict[str, torch.Tensor]) -> dict[str, Any]:
    load_trainable(model, initial)
    variant = Variant("qa", patched=True, packing=True, batch=BATCH, checkpointing=True, compile=curve.compile)
    cfg = replace(train_config(variant, scale, steps), fp8=curve.fp8)
    losses, norms, seconds = [], [], []
    set_layer_compile(model, False)
    if curve.compile:  # a fresh compile with the curve's rounding; the Trainer keeps layers already compiled
        torch._dynamo.reset()
        set_layer_compile(model, True, curve.eager_rounding)
    with sdpa_kernel(SDPBackend.MATH) if curve.math_kernel else contextlib.nullcontext():
        trainer = Trainer(model, samples, [], cfg, NanGuard("skip"), Path(tempfile.gettempdir()))
        if curve.reversed_rows:
            in_order = trainer.stream.next_rows
            trainer.stream.next_rows = lambda n: in_order(n)[::-1]
        _keep_first_gradients(trainer, first_grads)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
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
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {**vars(curve), "losses": losses, "grad_norms": norms, "first_step_s": seconds[0], "step_s_median": median,
            "peak_gib": peak,
            "graph_breaks_so_far": breaks, "unique_graphs_so_far": counters["stats"]["unique_graphs"]}


def compare(curves: list[dict[str, Any]]) -> dict[str, Any]:
    """Each curve's relative loss difference from `eager` (at step 1 and the largest over the curve), the spread
    (the largest between any two spread curves) and each judged curve's verdict against it."""
    reference = curves[0]["losses"]
    for curve in curves:
        rel = _rel(curve["losses"], reference)
        curve["rel_diff_first"], curve["rel_diff_max"] = rel[0], max(rel)
        curve["rel_diff_max_step"] = rel.index(max(rel)) + 1
    spread = [c for c in curves if not c["compile"]]  # the eager curves: equivalent computations
    pairs = {f"{a['name']} / {b['name']}": max(_rel(a["losses"], b["losses"]))
             for i, a in enumerate(spread) for b in spread[i + 1:]}
    width = max(pairs.values(), default=math.nan)
    for curve in curves:
        if curve["compile"]:
            curve["within_spread"] = curve["rel_diff_max"] <= width
    return {"curves": [c["name"] for c in spread], "pairs": pairs, "max": width}


def _rel(losses: list[float], reference: list[float]) -> list[float]:
    return [abs(a - b) / abs(b) for a, b in zip(losses, reference)]


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    spread = result["spread"]
    lines = [f"# Compiled and float8 vs eager training step, bf16 ({env['device']}, driver {env['driver']}, "
             f"torch {env['torch']}, torchao {env['torchao']})", "",
             f"{result['steps']} steps of the loop's step, {BATCH} packed {result['seq_sec']:g} s rows each, from "
             "the same LoRA weights on the same rows. Relative difference of the step loss from `eager`; the "
             f"spread is the largest between any two of {', '.join(spread['curves'])}.", "",
             "| curve | first step s | step s | vs bf16 compiled | peak GiB | loss at 1 / last | rel. diff at step 1 "
             "| largest rel. diff (step) | within the spread | step-1 gradient: rel. error vs fp32 "
             "| sign agreement vs fp32 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    compiled = next((c["step_s_median"] for c in result["curves"] if c["name"] == "compiled"), math.nan)
    for c in result["curves"]:
        verdict = ("yes" if c["within_spread"] else "no") if "within_spread" in c else "(spread)"
        peak = f"{c['peak_gib']:.1f}" if c.get("peak_gib") is not None else "n/a"
        lines.append(f"| {c['name']} | {c['first_step_s']:.1f} | {c['step_s_median']:.2f} | "
                     f"{compiled / c['step_s_median']:.2f}x | {peak} | "
                     f"{c['losses'][0]:.4f} / {c['losses'][-1]:.4f} | {c['rel_diff_first']:.2e} | "
                     f"{c['rel_diff_max']:.2e} ({c['rel_diff_max_step']}) | {verdict} | "
                     f"{c.get('grad_rel_error_vs_fp32', math.nan):.2e} | "
                     f"{100 * c.get('sign_agreement_vs_fp32', math.nan):.2f}% |")
    lines += ["", f"The spread: {spread['max']:.2e} (" + "; ".join(f"{k} {v:.2e}" for k, v in spread["pairs"].items())
              + ").", ""]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps (CPU is fine)")
    parser.add_argument("--curves", help=f"comma-separated, from {', '.join(c.name for c in CURVES)} (default: all; "
                                         "eager comes first whatever is asked)")
    args = parser.parse_args(argv)
    names = ["eager", *(n for n in args.curves.split(",") if n != "eager")] if args.curves else [c.name for c in CURVES]
    unknown = set(names) - {c.name for c in CURVES}
    if unknown:
        parser.error(f"unknown curves {sorted(unknown)}")
    curves = [c for c in CURVES if c.name in names]  # in CURVES' order: the float8 curve last
    scale, steps = (SMOKE, STEPS["smoke"]) if args.smoke else (FULL, STEPS["full"])
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    model, _ = build_model(device, scale)
    patch_depformer(model)
    initial = trainable_state(model)
    samples = workloads(StreamSpec.from_lm(model), scale)["qa"]
    result: dict[str, Any] = {"environment": environment(device), "steps": steps, "batch": BATCH,
                              "seq_sec": scale.seq_sec, "curves": []}
    args.out.mkdir(parents=True, exist_ok=True)
    exact = fp32_gradients(model, samples, scale, initial)  # first: the float8 curve changes the model's layers
    for curve in curves:
        grads: dict[str, torch.Tensor] = {}
        result["curves"].append(run_curve(model, samples, curve, scale, steps, initial, device, grads))
        result["curves"][-1].update(gradient_accuracy(grads, exact))
        result["spread"] = compare(result["curves"])
        atomic_write_json(args.out / f"compile_equivalence{scale.suffix}.json", result)  # a cut-short run keeps
    atomic_write_text(args.out / f"compile_equivalence{scale.suffix}.md", markdown(result))
    print(markdown(result), flush=True)


def environment(device: torch.device) -> dict[str, str]:
    """The card, its driver and the torch and torchao versions: what a figure here holds for."""
    driver = "n/a"
    if device.type == "cuda":
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "driver": driver,
            "torch": torch.__version__, "torchao": version("torchao")}


if __name__ == "__main__":
    main()
