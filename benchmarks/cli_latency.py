"""Times what a user waits for at the prompt: a Tab completion and `--help`, as fresh processes.

A Tab after `group=` lists the group's files (target under 0.5 s on a quiet 2-core machine); a Tab on a key
(`train.l<Tab>`) composes the whole config in Hydra, so its floor is Hydra's own composition. Each case runs
`--repeats` times after one warm-up (the OS file cache); the median is the figure.

Writes benchmarks/results/cli_latency.json. Run: .venv/bin/python benchmarks/cli_latency.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from moshi_knowledge.io_utils import atomic_write_json

RESULTS = Path(__file__).parent / "results" / "cli_latency.json"
TARGET_S = 0.5
APP = [sys.executable, "-m", "moshi_knowledge"]


def _completion(line: str) -> tuple[list[str], dict[str, str]]:
    return [*APP, "-sc", "query=bash"], {"COMP_LINE": f"moshi-knowledge {line}", "COMP_POINT": str(16 + len(line))}


CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "tab after a group (lora=<Tab>)": _completion("lora="),
    "tab after a group with a preset (experiment=moshiko_h200 +debug=<Tab>)":
        _completion("experiment=moshiko_h200 +debug="),
    "tab on a key (train.l<Tab>)": _completion("train.l"),
    "--help": ([*APP, "--help"], {}),
    "python -c pass (the interpreter's own start)": ([sys.executable, "-c", "pass"], {}),
}


def _seconds(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    medians = {}
    for name, (argv, env) in CASES.items():
        _seconds(argv, env)
        times = [_seconds(argv, env) for _ in range(args.repeats)]
        medians[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                         "max_s": round(max(times), 3)}
        print(f"{name}: {medians[name]['median_s']:.3f} s", flush=True)
    result = {
        "what": "wall time of fresh processes at the prompt, median of repeats after a warm-up",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "hydra-core": version("hydra-core"),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "repeats": args.repeats,
        "target_s": {"tab after a group (lora=<Tab>)": TARGET_S},
        "cases": medians,
    }
    atomic_write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
