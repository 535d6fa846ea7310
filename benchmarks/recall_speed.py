"""Where a recall point's time goes at full size: multiple choice, generation, and a profile of each.

The full-scale rehearsal (full_scale.py) times recall inside the app; this script takes recall apart on the same
model sizes without writing a checkpoint: moshi's 7.69 B LM with random weights made on the GPU, the preset's
LoRA (rank 64 on every Linear), and synthetic questions shaped like the default ones (0.5 s lead, 2-4 s of
question, 0.5 s gap, a 4 s answer window, four candidates of one to three text tokens), each with its two
controls as recall builds them (the same prefix with another question's candidates; silence of the question's
length). It builds the multiple-choice plan once, as recall's set-up does, then times the app's own functions
(`mc.score`, `generate`, `median_f0`) the way recall calls them (through `generation_lm`, uncompiled, on recall's
attention kernels; pitch tracking in a thread beside multiple choice), then multiple choice alone, then profiles
one multiple-choice pass and one generation: kernel time by kind, the busiest kernels, and the share of the wall
time the GPU was busy (the rest is the CPU holding it up).

    python benchmarks/recall_speed.py --out results/        # on a GPU
    python benchmarks/recall_speed.py --smoke --out /tmp/x   # tiny sizes, any machine
    python benchmarks/recall_speed.py --study --out results/  # 2,000 questions: batch sizes at study size

`--study` asks 2,000 questions (about what `experiment=moshiko_h200` asks a recall point with its power-sized
tiers: 24,000 multiple-choice rows with the controls) and times generation and multiple choice at several batch
sizes each, with their peak memory, to choose the preset's batches (`recall_speed_study.json` / `.md`).
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.attention import sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from moshi_knowledge.codes.samples import FRAME_RATE, MOSHI_AUDIO, N_STREAMS, USER_AUDIO, ZERO_TOKEN
from moshi_knowledge.codes.stream import StreamSpec, find_lm
from moshi_knowledge.evaluation.generate import Prompt, generate
from moshi_knowledge.evaluation.mc import Candidate, MCPlan, MCQuestion, score
from moshi_knowledge.evaluation.pitch import compile_pyin, median_f0
from moshi_knowledge.evaluation.recall import RECALL_ATTENTION
from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text
from moshi_knowledge.model import uncompiled
from moshi_knowledge.model.lora import generation_lm
from moshi_knowledge.specs.lora import LoraSpec
from train_throughput import FULL, SMOKE, build_model, kernel_seconds

LORA = LoraSpec(targets="all", rank=64, alpha=128.0)  # experiment=moshiko_h200
N_QUESTIONS, N_CANDIDATES, ANSWER_SEC = 330, 4, 4.0  # the default recall set
MC_BATCH, GEN_BATCH = 384, 352  # the preset's eval.mc_batch_size and eval.gen_batch_size
MC_BATCH_SWEEP = (128, 256, 384, 512)
STUDY_QUESTIONS = 2000
STUDY_GEN_BATCHES = (352, 704, 1024)
STUDY_MC_BATCHES = (384, 768, 1536)


def questions(spec: StreamSpec, card: int, n: int, rng: random.Random) -> tuple[list[MCQuestion], list[Prompt]]:
    """Multiple-choice rows and generation prompts with the default questions' lengths and random codes, the
    multiple-choice rows followed by their shuffled and silence controls. As in the app, Moshi listens in silence
    (the same codes in every question) and a shuffled question's candidates (another question's) are laid out at
    its own answer start, so it shares its prefix with the real question."""
    contexts, answer_starts, answers, prompts = [], [], [], []
    answer_frames = round(ANSWER_SEC * FRAME_RATE)
    moshi_silence = torch.randint(0, card, (8, round(5.0 * FRAME_RATE) + answer_frames))  # Mimi's codes of silence
    for _ in range(n):
        answer_at = round((0.5 + rng.uniform(2.0, 4.0) + 0.5) * FRAME_RATE)
        length = answer_at + answer_frames
        context = torch.full((N_STREAMS, length), spec.pad_id, dtype=torch.long)
        context[MOSHI_AUDIO] = moshi_silence[:, :length]
        context[MOSHI_AUDIO, answer_at:] = ZERO_TOKEN
        context[USER_AUDIO] = torch.randint(0, card, (8, length))
        contexts.append(context)
        answer_starts.append(answer_at)
        answers.append([torch.randint(4, spec.text_card, (rng.randint(1, 3),)) for _ in range(N_CANDIDATES)])
        prompts.append(Prompt(context[USER_AUDIO], answer_at, context[MOSHI_AUDIO]))

    def question(qid: str, i: int, context: torch.Tensor, tokens: list[torch.Tensor]) -> MCQuestion:
        return MCQuestion(qid, context, [Candidate(f"c{k}", _stream(spec, answer_starts[i], t))
                                         for k, t in enumerate(tokens)])

    real = [question(f"q{i}", i, contexts[i], answers[i]) for i in range(n)]
    shuffled = [question(f"q{i}-shuffled", i, contexts[i], answers[(i + 1) % n]) for i in range(n)]
    silence = []
    for i in range(n):
        context = contexts[i].clone()
        context[USER_AUDIO] = 0  # one code for silence: prefixes of one length are the same
        silence.append(question(f"q{i}-silence", i, context, answers[i]))
    return real + shuffled + silence, prompts


def _stream(spec: StreamSpec, answer_at: int, tokens: torch.Tensor) -> torch.Tensor:
    """Moshi's text stream: padding, then end-of-padding before each token (as text_stream lays it out)."""
    stream = torch.full((answer_at + 2 * len(tokens),), spec.pad_id, dtype=torch.long)
    stream[answer_at::2] = spec.end_pad_id
    stream[answer_at + 1::2] = tokens
    return stream


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def plan_frames(plan: MCPlan) -> dict[str, int]:
    """Frames a multiple-choice pass runs: the shared prefixes (once each), the rest of every row as run (padded to
    its pass's longest) and as needed (each row's own length)."""
    prefix = sum(g.firsts.shape[0] * g.firsts.shape[2] for g in plan.groups)
    rest = sum(g.rest.shape[0] * g.rest.shape[2] for g in plan.groups)
    needed = sum(int((g.targets.shape[1] - g.firsts.shape[2]) * g.rest.shape[0]
                     - (g.rest[:, 0] == ZERO_TOKEN).sum()) for g in plan.groups)
    return {"prefix_frames": prefix, "rest_frames": rest, "rest_frames_needed": needed}


def profiled(fn: Any, device: torch.device) -> dict[str, Any]:
    """One call of `fn` under torch.profiler: its wall time, the GPU's kernel time by kind (the share of the wall
    time the GPU was busy tells how much the CPU held it up) and the busiest kernels."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _, wall = timed(fn, device)
    kinds, busiest = kernel_seconds(prof, top=10)
    busy = sum(kinds.values())
    return {"wall_sec": wall, "kernel_sec": busy, "gpu_busy": busy / wall,
            "kernel_sec_by_kind": dict(kinds.most_common()), "top_kernels": busiest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 questions")
    parser.add_argument("--study", action="store_true", help=f"{STUDY_QUESTIONS} questions, batch-size sweeps")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scale = SMOKE if args.smoke else FULL
    model, _ = build_model(device, scale, LORA)
    model.eval()
    spec = StreamSpec.from_lm(model)
    if args.study:
        study_size(model, spec, device, args.out, 24 if args.smoke else STUDY_QUESTIONS)
        return
    n = 8 if args.smoke else N_QUESTIONS
    mc, prompts = questions(spec, spec.card, n, random.Random(0))
    answer_frames = round(ANSWER_SEC * FRAME_RATE)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "questions": n, "mc_batch": MC_BATCH, "seconds": {},
                              "mc_batch_sweep": []}
    clips = np.random.default_rng(0).standard_normal((16, int(ANSWER_SEC * 24_000))).astype(np.float32) * 0.1
    compile_pyin()
    plan, result["mc_plan_sec"] = timed(lambda: MCPlan(find_lm(model), mc, MC_BATCH), torch.device("cpu"))
    result["mc_frames"] = plan_frames(plan)
    print(f"multiple-choice plan (recall's set-up): {result['mc_plan_sec']:.2f} s", flush=True)
    with torch.no_grad(), uncompiled(), sdpa_kernel(RECALL_ATTENTION), generation_lm(model) as lm, \
            ThreadPoolExecutor(max_workers=1) as pool:
        for point in range(3):  # the first pays the GPU's warm-up, as the app's step-0 recall does
            _, gen_sec = timed(lambda: generate(lm, prompts, answer_frames, GEN_BATCH), device)
            pitch = pool.submit(median_f0, clips, 24_000)
            _, mc_sec = timed(lambda: score(lm, plan), device)
            _, wait_sec = timed(pitch.result, device)
            result["seconds"][f"point_{point}"] = {"mc": mc_sec, "gen": gen_sec, "pitch_wait": wait_sec}
            print(f"point {point}: generation {gen_sec:.2f} s, multiple choice {mc_sec:.2f} s, "
                  f"then pitch {wait_sec:.2f} s", flush=True)
        for run in range(3):
            _, mc_sec = timed(lambda: score(lm, plan), device)
            result["seconds"][f"mc_alone_{run}"] = {"mc": mc_sec}
            print(f"multiple choice alone: {mc_sec:.2f} s", flush=True)
        for run in range(2):  # the plan built inside the pass, as recall did at every point before
            _, mc_sec = timed(lambda: score(lm, MCPlan(find_lm(model), mc, MC_BATCH)), device)
            result["seconds"][f"mc_plan_in_pass_{run}"] = {"mc": mc_sec}
            print(f"multiple choice with the plan built in the pass: {mc_sec:.2f} s", flush=True)
        for batch in MC_BATCH_SWEEP:  # fewer, larger passes against the KV cache's memory
            other = MCPlan(find_lm(model), mc, batch)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times = [timed(partial(score, lm, other), device)[1] for _ in range(2)]
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            result["mc_batch_sweep"].append({"batch": batch, "passes": len(other.groups), "mc_sec": times,
                                             "peak_gib": peak, **plan_frames(other)})
            print(f"multiple choice at {batch} rows per pass: {times[0]:.2f}, {times[1]:.2f} s", flush=True)
        result["profile"] = {"mc": profiled(lambda: score(lm, plan), device),
                             "gen": profiled(lambda: generate(lm, prompts, answer_frames, GEN_BATCH), device)}
    steps = answer_frames + max(spec.delays)  # every row is prefilled to its answer start, then streams
    result.update(gen_steps=steps, ms_per_gen_step=1000 * result["seconds"]["point_2"]["gen"] / steps)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "recall_speed.json", result)
    atomic_write_text(args.out / "recall_speed.md", report(result, len(mc)))
    print(report(result, len(mc)))


def study_size(model: torch.nn.Module, spec: StreamSpec, device: torch.device, out: Path, n: int) -> None:
    """Recall at study size: one warm-up point at the preset's batches, then generation and multiple choice alone
    at each batch size of the sweeps, with the allocator's peak of each."""
    mc, prompts = questions(spec, spec.card, n, random.Random(0))
    answer_frames = round(ANSWER_SEC * FRAME_RATE)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "questions": n, "mc_rows": sum(len(q.candidates) for q in mc),
                              "gen": [], "mc": []}

    def peak(fn: Any) -> tuple[float, float | None]:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        _, sec = timed(fn, device)
        return sec, (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None)

    with torch.no_grad(), uncompiled(), sdpa_kernel(RECALL_ATTENTION), generation_lm(model) as lm:
        plan = MCPlan(find_lm(model), mc, MC_BATCH)
        result["warmup_sec"] = {"gen": timed(lambda: generate(lm, prompts, answer_frames, GEN_BATCH), device)[1],
                                "mc": timed(lambda: score(lm, plan), device)[1]}
        print(f"warm-up point: {result['warmup_sec']}", flush=True)
        for batch in STUDY_GEN_BATCHES:
            sec, gib = peak(partial(generate, lm, prompts, answer_frames, batch))
            result["gen"].append({"batch": batch, "sec": sec, "peak_gib": gib})
            print(f"generation, {batch} prompts a batch: {sec:.2f} s, peak {gib} GiB", flush=True)
        for batch in STUDY_MC_BATCHES:
            other, build = timed(partial(MCPlan, find_lm(model), mc, batch), torch.device("cpu"))
            runs = [peak(partial(score, lm, other)) for _ in range(2)]
            result["mc"].append({"batch": batch, "passes": len(other.groups), "plan_sec": build,
                                 "sec": [r[0] for r in runs], "peak_gib": max((r[1] or 0) for r in runs),
                                 **plan_frames(other)})
            print(f"multiple choice, {batch} rows a pass: {runs[0][0]:.2f}, {runs[1][0]:.2f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "recall_speed_study.json", result)
    lines = [f"# Recall at study size ({result['device']}, torch {result['torch']})", "",
             f"{n} questions, {result['mc_rows']:,} multiple-choice rows with the controls. Warm-up point at the "
             f"preset's batches ({GEN_BATCH} prompts, {MC_BATCH} rows): generation "
             f"{result['warmup_sec']['gen']:.1f} s, multiple choice {result['warmup_sec']['mc']:.1f} s.", "",
             "| generation: prompts a batch | seconds | peak GiB |", "|---|---|---|"]
    lines += [f"| {r['batch']} | {r['sec']:.2f} | {r['peak_gib'] or 0:.1f} |" for r in result["gen"]]
    lines += ["", "| multiple choice: rows a pass | passes | seconds (two runs) | peak GiB "
              "| rest frames run / needed |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['passes']} | {r['sec'][0]:.2f}, {r['sec'][1]:.2f} | {r['peak_gib']:.1f} | "
              f"{r['rest_frames']:,} / {r['rest_frames_needed']:,} |" for r in result["mc"]]
    atomic_write_text(out / "recall_speed_study.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def report(result: dict[str, Any], n_mc: int) -> str:
    lines = [f"# Recall's parts at full size ({result['device']}, torch {result['torch']})", "",
             f"{result['questions']} questions, {n_mc} multiple-choice questions with the controls, "
             f"{result['mc_batch']} rows per multiple-choice pass; recall's attention kernels (evaluation/recall.py). "
             "Building the multiple-choice plan (once, at recall's set-up) took "
             f"{result['mc_plan_sec']:.2f} s. Frames per pass of all questions: "
             + ", ".join(f"{k} {v:,}" for k, v in result["mc_frames"].items()) + ".", ""]
    lines += [f"- {k}: " + ", ".join(f"{part} {sec:.2f} s" for part, sec in v.items())
              for k, v in result["seconds"].items()]
    lines += [f"- generation: {result['gen_steps']} streaming steps, {result['ms_per_gen_step']:.1f} ms each", ""]
    lines += ["| rows per multiple-choice pass | passes | seconds (two runs) | peak GiB | rest frames run / needed |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['passes']} | {r['mc_sec'][0]:.2f}, {r['mc_sec'][1]:.2f} | "
              + (f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a")
              + f" | {r['rest_frames']:,} / {r['rest_frames_needed']:,} |" for r in result["mc_batch_sweep"]]
    lines.append("")
    for part, name in (("mc", "one multiple-choice pass"), ("gen", "one generation")):
        p = result["profile"][part]
        lines += [f"## Profile of {name}: {p['wall_sec']:.2f} s under the profiler, GPU busy "
                  f"{100 * p['gpu_busy']:.0f}% ({p['kernel_sec']:.2f} s of kernels)", "",
                  "| kind of kernel | seconds |", "|---|---|"]
        lines += [f"| {kind} | {sec:.3f} |" for kind, sec in p["kernel_sec_by_kind"].items()]
        lines += ["", "| busiest kernels | seconds |", "|---|---|"]
        lines += [f"| `{k}` | {sec:.3f} |" for k, sec in p["top_kernels"]]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
