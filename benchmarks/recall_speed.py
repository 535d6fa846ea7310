"""Where a recall point's time goes at full size: multiple choice, generation, and a profile of generation's steps.

The full-scale rehearsal (full_scale.py) times recall inside the app; this script takes recall apart on the same
model sizes without writing a checkpoint: moshi's 7.69 B LM with random weights made on the GPU, the preset's
LoRA (rank 64 on every Linear), and synthetic questions shaped like the default ones (0.5 s lead, 2-4 s of
question, 0.5 s gap, a 4 s answer window, four candidates of one to three text tokens), each with its two
controls as recall builds them (the same prefix with another question's candidates; silence of the question's
length). It times the app's own functions (`mc.score`, `generate`, `median_f0`) the way recall calls them (through
`generation_lm`, uncompiled; pitch tracking in a thread beside multiple choice), then multiple choice alone, then
profiles one generation batch and writes the busiest kernels and the CPU's share to recall_speed.md. Attention runs on
torch's own choice of kernel (cuDNN's on the H200), which recall leaves out (evaluation/recall.py says why): the
comparison between the two is in benchmarks/README.md.

    python benchmarks/recall_speed.py --out results/        # on a GPU
    python benchmarks/recall_speed.py --smoke --out /tmp/x   # tiny sizes, any machine
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from moshi_knowledge.codes.samples import FRAME_RATE, MOSHI_AUDIO, N_STREAMS, USER_AUDIO, ZERO_TOKEN
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.evaluation.generate import Prompt, generate
from moshi_knowledge.evaluation.mc import Candidate, MCQuestion, score
from moshi_knowledge.evaluation.pitch import compile_pyin, median_f0
from moshi_knowledge.model import uncompiled
from moshi_knowledge.model.lora import generation_lm
from moshi_knowledge.specs.lora import LoraSpec
from train_throughput import FULL, SMOKE, build_model

LORA = LoraSpec(targets="all", rank=64, alpha=128.0)  # experiment=moshiko_h200
N_QUESTIONS, N_CANDIDATES, ANSWER_SEC = 330, 4, 4.0  # the default recall set
MC_BATCH, GEN_BATCH = 256, 352  # the preset's eval.mc_batch_size and eval.gen_batch_size


def questions(spec: StreamSpec, card: int, n: int, rng: random.Random) -> tuple[list[MCQuestion], list[Prompt]]:
    """Multiple-choice rows and generation prompts with the default questions' lengths and random codes, the
    multiple-choice rows followed by their shuffled and silence controls."""
    mc, prompts = [], []
    answer_frames = round(ANSWER_SEC * FRAME_RATE)
    for i in range(n):
        answer_at = round((0.5 + rng.uniform(2.0, 4.0) + 0.5) * FRAME_RATE)
        length = answer_at + answer_frames
        context = torch.full((N_STREAMS, length), spec.pad_id, dtype=torch.long)
        context[MOSHI_AUDIO] = torch.randint(0, card, (8, length))
        context[MOSHI_AUDIO, answer_at:] = ZERO_TOKEN
        context[USER_AUDIO] = torch.randint(0, card, (8, length))
        candidates = []
        for _ in range(N_CANDIDATES):
            n_tokens = rng.randint(1, 3)
            stream = torch.full((answer_at + 2 * n_tokens,), spec.pad_id, dtype=torch.long)
            stream[answer_at::2] = spec.end_pad_id  # end-of-padding before each token, as text_stream lays it out
            stream[answer_at + 1::2] = torch.randint(4, spec.text_card, (n_tokens,))
            candidates.append(Candidate(f"c{len(candidates)}", stream))
        mc.append(MCQuestion(f"q{i}", context, candidates))
        prompts.append(Prompt(context[USER_AUDIO], answer_at, context[MOSHI_AUDIO]))
    shuffled = [MCQuestion(f"{q.qid}-shuffled", q.context, other.candidates)
                for q, other in zip(mc, mc[1:] + mc[:1]) if len(other.candidates[0].tokens) <= q.context.shape[1]]
    silence = []
    for q in mc:
        context = q.context.clone()
        context[USER_AUDIO] = 0  # one code for silence: prefixes of one length are the same
        silence.append(MCQuestion(f"{q.qid}-silence", context, q.candidates))
    return mc + shuffled + silence, prompts


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny model, 8 questions")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scale = SMOKE if args.smoke else FULL
    n = 8 if args.smoke else N_QUESTIONS
    model, _ = build_model(device, scale, LORA)
    model.eval()
    spec = StreamSpec.from_lm(model)
    mc, prompts = questions(spec, spec.card, n, random.Random(0))
    answer_frames = round(ANSWER_SEC * FRAME_RATE)
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "questions": n, "seconds": {}}
    clips = np.random.default_rng(0).standard_normal((16, int(ANSWER_SEC * 24_000))).astype(np.float32) * 0.1
    compile_pyin()
    with torch.no_grad(), uncompiled(), generation_lm(model) as lm, ThreadPoolExecutor(max_workers=1) as pool:
        for point in range(3):  # the first pays the GPU's warm-up, as the app's step-0 recall does
            _, gen_sec = timed(lambda: generate(lm, prompts, answer_frames, GEN_BATCH), device)
            pitch = pool.submit(median_f0, clips, 24_000)
            _, mc_sec = timed(lambda: score(lm, mc, MC_BATCH), device)
            _, wait_sec = timed(pitch.result, device)
            result["seconds"][f"point_{point}"] = {"mc": mc_sec, "gen": gen_sec, "pitch_wait": wait_sec}
            print(f"point {point}: generation {gen_sec:.2f} s, multiple choice {mc_sec:.2f} s, "
                  f"then pitch {wait_sec:.2f} s", flush=True)
        for run in range(3):
            _, mc_sec = timed(lambda: score(lm, mc, MC_BATCH), device)
            result["seconds"][f"mc_alone_{run}"] = {"mc": mc_sec}
            print(f"multiple choice alone: {mc_sec:.2f} s", flush=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            _, profiled_sec = timed(lambda: generate(lm, prompts, answer_frames, GEN_BATCH), device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60)
    steps = answer_frames + max(spec.delays)  # every row is prefilled to its answer start, then streams
    result.update(gen_steps=steps, profiled_gen_sec=profiled_sec,
                  ms_per_gen_step=1000 * result["seconds"]["point_2"]["gen"] / steps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recall_speed.json").write_text(json.dumps(result, indent=1))
    (args.out / "recall_speed.md").write_text(
        f"# Recall's parts at full size ({result['device']}, torch {result['torch']})\n\n"
        + f"{n} questions, {len(mc)} multiple-choice questions with the controls.\n\n"
        + "".join(f"- {k}: " + ", ".join(f"{part} {sec:.2f} s" for part, sec in v.items()) + "\n"
                  for k, v in result["seconds"].items())
        + f"- generation: {steps} streaming steps, {result['ms_per_gen_step']:.1f} ms each\n\n"
        + f"Profile of one generation ({profiled_sec:.2f} s under the profiler):\n\n```\n{table}\n```\n")
    print(table)


if __name__ == "__main__":
    main()
