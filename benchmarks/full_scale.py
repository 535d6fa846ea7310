"""Full-scale rehearsal: the run a researcher with moshiko's weights launches, end to end, on one GPU.

No weights can be downloaded here, so the checkpoint is a random one of the real size, written to disk as a folder
that `model=local` loads through moshi's own `CheckpointInfo`, exactly as a user's copy of the Hub repo:
- the LM with moshiko's sizes (moshi's own `loaders._lm_kwargs`: 7.69 B parameters, bf16), seeded, made on the GPU;
- the real Mimi architecture (moshi's built-in config), its codebooks fitted to the run's own speech so that
  different audio gives different codes (a fresh Mimi maps every frame to one code);
- a sentencepiece tokenizer of 32,000 pieces: one trained on the run's text, filled up with unused pieces.

Then `python -m moshi_knowledge experiment=moshiko_h200 model=local ...` runs as a subprocess, as a user would run
it, for `--steps` steps with recall at the start, half-way and the end. Last, the training benchmark times its own
step on the app's settings (LoRA rank and alpha, batch, rows, checkpointing, moshi's compile) in the same call, so
the app's speed is compared with the benchmark's on one machine at one time.

Writes `full_scale.json` and `full_scale.md` (in `--out`): the wall time of every stage and of each recall point
(multiple choice, generation, pitch), the peak GPU memory of training and of recall (PyTorch's allocator) and of
the whole process (nvidia-smi), the in-app useful frames/s and useful fraction against the benchmark's, the exit
status and the run's status.

    python benchmarks/full_scale.py --out benchmarks/results            # one H100/H200, about 7 minutes
    python benchmarks/full_scale.py --smoke --out /tmp/fs               # a tiny checkpoint on the CPU, same path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
SEED = 0
TEXT_CARD = 32_000  # moshiko's tokenizer
# the benchmark's step on the preset's batch, rows and checkpointing, compiled as the app compiles on a GPU
BENCH_VARIANT = "qa-packed-patched-b16-ckpt-compiled"
SMOKE_BENCH_VARIANT = "qa-packed-patched-b4-ckpt"  # on the CPU the app trains eagerly (train.compile=null)
WARMUP_STEPS = 3  # in-app steps left out of the steady state (allocator growth, the compile warm-up)
TARGETS = {"recall_peak_over_train_gib": 12.0, "run_peak_gib": 70.0, "recall_point_sec": 8.0,
           "useful_fraction": 0.90, "app_vs_benchmark": 0.95}


@dataclass(frozen=True)
class Scale:
    """The rehearsal's sizes: the real one, or a tiny smoke test of the same code path on the CPU."""

    lm_overrides: dict[str, Any]
    mimi_sizes: Optional[tuple[int, int, int, int]]  # tiny Mimi (dim, filters, layers, codebook dim); None: real
    app_overrides: list[str] = field(default_factory=list)
    steps: int = 20
    suffix: str = ""


FULL = Scale({}, None)
SMOKE = Scale(
    dict(dim=64, num_heads=4, num_layers=2, context=500, text_card=1000, card=256, depformer_dim=32,
         depformer_num_heads=2, depformer_num_layers=1, depformer_dim_feedforward=64),
    (32, 4, 1, 16),
    ["qa.n_train=6", "qa.n_eval=2", "qa.n_unseen=2", "qa.n_per_cause=2", "qa.paraphrases=1", "story=procedural",
     "train.batch_size=2", "train.seq_sec=24",
     "eval.max_answer_sec=1.0", "eval.voice_max_clips=2", "eval.mc_batch_size=16", "eval.gen_batch_size=16"],
    steps=4, suffix="_smoke")


# ---- the checkpoint ------------------------------------------------------------------------------------------
def padded_tokenizer(proto: bytes, size: int) -> bytes:
    """The sentencepiece model with unused pieces appended up to `size`: the same encoding, moshiko's vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.ParseFromString(proto)
    if len(model.pieces) > size:
        raise ValueError(f"the tokenizer has {len(model.pieces)} pieces, more than {size}")
    for i in range(len(model.pieces), size):
        model.pieces.add(piece=f"<unused{i}>", score=0.0, type=pb.ModelProto.SentencePiece.UNUSED)
    return model.SerializeToString()


def write_checkpoint(folder: Path, text: str, speech: Sequence[Any], scale: Scale, device: Any) -> dict[str, str]:
    """The random checkpoint folder (module doc); returns the `model.*` overrides that load it."""
    import torch
    from moshi.models import loaders
    from moshi.models.lm import LMModel
    from safetensors.torch import save_file

    from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json
    from moshi_knowledge.model.mimi_fit import fit_mimi_codebooks, tiny_mimi_config
    from moshi_knowledge.model.tiny import train_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    lm_config = dict(loaders._lm_kwargs) | scale.lm_overrides
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(SEED)
    with torch.device(device):  # some of LMModel's layers ignore its device argument
        lm = LMModel(**lm_config, device=device, dtype=dtype).to(dtype)
    save_file({k: v.contiguous().cpu() for k, v in lm.state_dict().items()}, str(folder / "model.safetensors"))
    del lm
    mimi_config = None if scale.mimi_sizes is None else tiny_mimi_config(*scale.mimi_sizes, lm_config["card"], 8)
    mimi = loaders.get_mimi(None, mimi_config, num_codebooks=8, device=device)
    fit_mimi_codebooks(mimi, speech, SEED)
    save_file({k: v.contiguous().cpu() for k, v in mimi.state_dict().items()}, str(folder / "mimi.safetensors"))
    tokenizer = padded_tokenizer(train_tokenizer(text, 1000), lm_config["text_card"])
    atomic_write_bytes(folder / "tokenizer.model", tokenizer)
    names = {"moshi_name": "model.safetensors", "mimi_name": "mimi.safetensors", "tokenizer_name": "tokenizer.model"}
    overrides = {"moshi_weights": folder / "model.safetensors", "mimi_weights": folder / "mimi.safetensors",
                 "tokenizer": folder / "tokenizer.model", "config_path": folder / "config.json"}
    if mimi_config is not None:  # the real Mimi's config is moshi's built-in one: nothing to name
        names["mimi_config_name"] = "mimi_config.json"
        overrides["mimi_config_path"] = atomic_write_json(folder / "mimi_config.json", mimi_config)
    atomic_write_json(folder / "config.json", {**lm_config, **names})
    return {k: str(v) for k, v in overrides.items()}


# ---- running things --------------------------------------------------------------------------------------------
class GpuMemory:
    """The largest memory.used that nvidia-smi reports while the block runs (every process on the GPU), in GiB."""

    def __init__(self) -> None:
        self.peak_gib: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> "GpuMemory":
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                used = int(out.stdout.split()[0]) / 1024
                self.peak_gib = max(self.peak_gib or 0.0, used)


def run_logged(args: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> tuple[int, float]:
    """Run a command with its output teed to `log_path` and our stdout; returns (exit code, seconds)."""
    start = time.perf_counter()
    with log_path.open("w") as log, subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            sys.stdout.write(line)
    return proc.returncode, time.perf_counter() - start


def app_args(overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "moshi_knowledge", "experiment=moshiko_h200", "logger=none", *overrides]


# ---- figures ---------------------------------------------------------------------------------------------------
def _max(rows: Sequence[dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return max(values) if values else None


def _stage_seconds(*run_dirs: Path) -> dict[str, float]:
    """Each stage's time in the run that built it (stages.json of each run directory, in order)."""
    out: dict[str, float] = {}
    for run_dir in run_dirs:
        path = run_dir / "stages.json"
        for stage in json.loads(path.read_text()) if path.exists() else []:
            if stage["computed"] or stage["stage"] not in out:
                out[stage["stage"]] = stage["seconds"]
    return out


def app_figures(run_dir: Path, data_dir: Path, steps: int) -> dict[str, Any]:
    """Stage times, recall points, memory and steady-state speed, from the run directories' own files."""
    from moshi_knowledge.tracking.files import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if "train/useful_frames_per_sec" in r and r["step"] > WARMUP_STEPS]
    recall = [{"step": r["step"], **{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("recall_time/")},
               "peak_gib": r.get("memory/recall_peak_gib")} for r in rows if "recall_time/total_sec" in r]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    train_peak, recall_peak = _max(rows, "memory/train_peak_gib"), _max(rows, "memory/recall_peak_gib")
    return {
        "status": summary.get("status"), "message": summary.get("message"),
        "finish_errors": summary.get("finish_errors"), "steps": steps,
        "stages_sec": _stage_seconds(data_dir, run_dir),
        "train_sec": summary.get("wall_sec"), "recall_points": recall,
        "train_peak_gib": train_peak, "recall_peak_gib": recall_peak,
        "useful_frames_per_s": statistics.median(r["train/useful_frames_per_sec"] for r in train) if train else None,
        "useful_fraction": statistics.mean(r["train/useful_fraction"] for r in train) if train else None,
        "step_sec": statistics.median(r["train/step_sec"] for r in train) if train else None,
        "per_step": [{"step": r["step"], "useful_frames_per_s": r["train/useful_frames_per_sec"],
                      "step_sec": r["train/step_sec"]} for r in rows if "train/step_sec" in r],
        "recall": {k: v for k, v in summary.items() if k.startswith("recall/")},
        "compile_warmup_sec": _max(rows, "compile/warmup_sec"),  # the first step, with train.compile's warm-up
    }


def checks(result: dict[str, Any]) -> dict[str, Any]:
    """Each target of the full-scale issue against what was measured (None where the run gave no figure)."""
    app, bench = result["app"], result.get("benchmark") or {}
    points = [p["total_sec"] for p in app["recall_points"]]

    def ok(value: Optional[float], limit: float, below: bool = True) -> Optional[bool]:
        return None if value is None else (value <= limit if below else value >= limit)

    over = None if None in (app["recall_peak_gib"], app["train_peak_gib"]) else (
        app["recall_peak_gib"] - app["train_peak_gib"])
    allocated = [v for v in (app["train_peak_gib"], app["recall_peak_gib"]) if v is not None]
    run_peak = result["process_peak_gib"] or (max(allocated) if allocated else None)
    ratio = None if not (app["useful_frames_per_s"] and bench.get("useful_frames_per_s")) else (
        app["useful_frames_per_s"] / bench["useful_frames_per_s"])
    return {
        "exit_0_and_completed": result["exit_code"] == 0 and app["status"] == "completed",
        "recall_peak_over_train_gib": {"value": over, "ok": ok(over, TARGETS["recall_peak_over_train_gib"])},
        "run_peak_gib": {"value": run_peak, "ok": ok(run_peak, TARGETS["run_peak_gib"])},
        "recall_point_sec_max": {"value": max(points) if points else None,
                                 "ok": ok(max(points) if points else None, TARGETS["recall_point_sec"])},
        "useful_fraction": {"value": app["useful_fraction"],
                            "ok": ok(app["useful_fraction"], TARGETS["useful_fraction"], below=False)},
        "app_vs_benchmark": {"value": ratio, "ok": ok(ratio, TARGETS["app_vs_benchmark"], below=False)},
        "recompile_limit_hit": result["recompile_limit_hit"],
    }


def _f(value: Any, spec: str = ".1f") -> str:
    return "n/a" if not isinstance(value, (int, float)) or isinstance(value, bool) else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    app, env, check = result["app"], result["environment"], result["checks"]
    bench = result.get("benchmark") or {}
    lines = [
        f"# Full-scale rehearsal ({env['device']}, torch {env['torch']})", "",
        f"`experiment=moshiko_h200 model=local` on a random checkpoint ({env['lm_params'] / 1e9:.2f} B "
        f"LM parameters, {env['mimi']} Mimi, {env['text_card']:,}-piece tokenizer), {app['steps']} steps, recall "
        f"at the start, half-way and the end; moshi's own compile "
        f"{'on' if env['moshi_compile'] else 'off (NO_TORCH_COMPILE=1)'} in the app and the benchmark. "
        f"Exit code {result['exit_code']}, status `{app['status']}`"
        + (f", finishing errors: {app['finish_errors']}" if app.get("finish_errors") else "") + ".", "",
        "| stage | seconds |", "|---|---|",
        f"| write the checkpoint | {_f(result['checkpoint_sec'])} |",
        *(f"| {name} | {_f(sec)} |" for name, sec in app["stages_sec"].items()),
        f"| train (with recall and evaluation) | {_f(app['train_sec'])} |",
        f"| of which the first step, with the layers' compile warm-up | {_f(app.get('compile_warmup_sec'))} |",
        f"| whole app | {_f(result['app_sec'])} |", "",
        "| recall at step | setup s | generation s | multiple choice with its controls s | pitch s (after multiple "
        "choice, beside which it runs) | total s | peak GiB |",
        "|---|---|---|---|---|---|---|",
        *(f"| {p['step']} | {_f(p.get('setup_sec'))} | {_f(p.get('gen_sec'))} | {_f(p.get('mc_sec'))} | "
          f"{_f(p.get('voice_sec'))} | {_f(p.get('total_sec'))} | {_f(p.get('peak_gib'))} |"
          for p in app["recall_points"]), "",
        "| figure | measured | target | met |", "|---|---|---|---|",
        f"| training peak (allocated) | {_f(app['train_peak_gib'])} GiB | | |",
        f"| recall peak (allocated) | {_f(app['recall_peak_gib'])} GiB | | |",
        f"| recall peak − training peak | {_f(check['recall_peak_over_train_gib']['value'])} GiB | ≤ "
        f"{TARGETS['recall_peak_over_train_gib']:g} GiB | {check['recall_peak_over_train_gib']['ok']} |",
        f"| whole run (nvidia-smi, all allocations and caches) | {_f(check['run_peak_gib']['value'])} GiB | ≤ "
        f"{TARGETS['run_peak_gib']:g} GiB | {check['run_peak_gib']['ok']} |",
        f"| slowest recall point | {_f(check['recall_point_sec_max']['value'])} s | "
        f"≤ {TARGETS['recall_point_sec']:g} s | {check['recall_point_sec_max']['ok']} |",
        f"| useful fraction of training rows | {_f(app['useful_fraction'], '.3f')} | "
        f"≥ {TARGETS['useful_fraction']:g} | {check['useful_fraction']['ok']} |",
        f"| in-app useful frames/s (median, steps > {WARMUP_STEPS}) | {_f(app['useful_frames_per_s'], ',.0f')} | | |",
        f"| benchmark's step, same settings ({BENCH_VARIANT}, same call) | "
        f"{_f(bench.get('useful_frames_per_s'), ',.0f')} | | |",
        f"| app / benchmark | {_f(check['app_vs_benchmark']['value'], '.3f')} | ≥ {TARGETS['app_vs_benchmark']:g} | "
        f"{check['app_vs_benchmark']['ok']} |",
        f"| dynamo recompile limit hit | {check['recompile_limit_hit']} | no | |", "",
        "Steps after the first (in-app, useful frames/s): "
        + ", ".join(f"{s['step']}: {s['useful_frames_per_s']:,.0f}" for s in app.get("per_step", [])[1:]) + ".", ""]
    return "\n".join(lines)


# ---- the rehearsal ---------------------------------------------------------------------------------------------
def rehearse(out: Path, scale: Scale, work: Path) -> dict[str, Any]:
    """The steps of the module doc; logs go to `out` as they are written (full_scale*_{data,app,bench}.log)."""
    import torch

    from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text, read_json
    from moshi_knowledge.speech.synthesize import load_utterance

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    cache, run_dir, ckpt = work / "cache", work / "run", work / "checkpoint"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    logs = {name: out / f"full_scale{scale.suffix}_{name}.log" for name in ("data", "app", "bench")}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = [f"paths.cache_dir={cache}", *scale.app_overrides]
    # 1. the data stages, so that the checkpoint's tokenizer and Mimi are fitted to the run's own text and speech
    # the app runs from the scratch folder, as from any folder: it must not depend on the repository's layout
    code, _ = run_logged(app_args([*common, "stages=[story,qa,tts,dataset]", f"hydra.run.dir={work / 'data'}"]),
                         logs["data"], env, work)
    if code != 0:
        raise SystemExit(f"the data stages failed (exit {code}); see {logs['data']}")
    tts, story = work / "data" / "tts", work / "data" / "story"
    text = "\n".join([(story / "story.txt").read_text(), *(line["text"] for line in read_json(tts / "index.json"))])
    speech = [load_utterance(tts, line["id"]).samples for line in read_json(tts / "index.json")[:200]]
    # 2. the checkpoint
    start = time.perf_counter()
    model = write_checkpoint(ckpt, text, speech, scale, device)
    checkpoint_sec = time.perf_counter() - start
    lm_params = _parameter_count(ckpt / "model.safetensors")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # 3. the app, end to end
    half = max(scale.steps // 2, 1)
    overrides = [*common, "model=local", *(f"model.{k}={v}" for k, v in model.items()), f"hydra.run.dir={run_dir}",
                 f"train.max_steps={scale.steps}", f"train.eval_every={half}", f"eval.recall_every={half}",
                 f"train.ckpt_every={scale.steps}", "train.log_every=1"]
    with GpuMemory() as gpu:
        code, app_sec = run_logged(app_args(overrides), logs["app"], env, work)
    log_text = logs["app"].read_text()
    result: dict[str, Any] = {
        "environment": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "torch": torch.__version__, "lm_params": lm_params, "text_card": scale.lm_overrides.get(
                            "text_card", TEXT_CARD), "mimi": "tiny" if scale.mimi_sizes else "real-architecture",
                        "moshi_compile": not os.environ.get("NO_TORCH_COMPILE")},
        "exit_code": code, "checkpoint_sec": checkpoint_sec, "app_sec": app_sec,
        "process_peak_gib": gpu.peak_gib, "app": app_figures(run_dir, work / "data", scale.steps),
        "recompile_limit_hit": bool(re.search(r"recompile_limit|cache_size_limit", log_text)),
    }
    # 4. the benchmark's own step on the preset's settings, in the same call
    preset = _preset_lora()
    bench_out = work / "bench"
    bench_args = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--out", str(bench_out),
                  "--variants", BENCH_VARIANT if scale is FULL else SMOKE_BENCH_VARIANT,
                  "--lora-rank", str(preset["rank"]), "--lora-alpha", str(preset["alpha"]),
                  *(["--smoke"] if scale is not FULL else [])]
    bench_env = {**env, "NO_TORCH_COMPILE": os.environ.get("NO_TORCH_COMPILE", "")}  # as the app: compile on GPU
    code_b, _ = run_logged(bench_args, logs["bench"], bench_env, work)
    bench_file = bench_out / f"train_throughput{scale.suffix}.json"
    if code_b == 0 and bench_file.exists():
        row = read_json(bench_file)["variants"][0]
        result["benchmark"] = {k: row.get(k) for k in ("name", "useful_frames_per_s", "useful_fraction", "peak_gib",
                                                       "step_s_median", "error")}
    result["checks"] = checks(result)
    atomic_write_json(out / f"full_scale{scale.suffix}.json", result)
    atomic_write_text(out / f"full_scale{scale.suffix}.md", markdown(result))
    return result


def _parameter_count(path: Path) -> int:
    import math

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _preset_lora() -> dict[str, Any]:
    """The LoRA rank and alpha that experiment=moshiko_h200 composes to."""
    from hydra import compose, initialize_config_module

    from moshi_knowledge.config_schema import register

    register()
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=moshiko_h200"])
    return {"rank": int(cfg.lora.rank), "alpha": float(cfg.lora.alpha)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--smoke", action="store_true", help="a tiny checkpoint on the CPU: tests this code path")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed at the end)")
    args = parser.parse_args()
    scale = SMOKE if args.smoke else FULL
    work = args.work or Path(tempfile.mkdtemp(prefix="full_scale_"))
    try:
        result = rehearse(args.out, scale, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(result), flush=True)
    sys.exit(0 if result["checks"]["exit_0_and_completed"] else 1)


if __name__ == "__main__":
    main()
