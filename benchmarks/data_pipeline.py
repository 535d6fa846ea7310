"""Times the default data stages (100 train + 20 eval questions, paraphrases) from a cold cache.

Writes benchmarks/results/data_pipeline.json. Target: under 60 s on a 2-core machine.
Run: .venv/bin/python benchmarks/data_pipeline.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from moshi_knowledge.config_schema import register
from moshi_knowledge.io_utils import atomic_write_json
from moshi_knowledge.stages import run_stages

RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"


def main() -> None:
    register()
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"paths.cache_dir={tmp}/cache"])
        start = time.perf_counter()
        entries = run_stages(cfg, Path(tmp) / "run")
        total = time.perf_counter() - start
        stages = json.loads((Path(tmp) / "run" / "stages.json").read_text())
        data = entries["dataset"].path
        audio_sec = sum(json.loads(line)["duration"] for split in ("train", "eval")
                        for line in (data / f"{split}.jsonl").read_text().splitlines())
        questions = json.loads((data / "questions.json").read_text())["questions"]
    result = {
        "what": "default data stages (story, qa, tts, dataset) from a cold cache",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "questions": {t: sum(q["tier"] == t for q in questions) for t in ("train", "eval", "paraphrase")},
        "conversation_audio_sec": round(audio_sec, 1),
        "stage_seconds": {s["stage"]: s["seconds"] for s in stages},
        "total_seconds": round(total, 2),
        "target_seconds": 60,
        "realtime_factor": round(audio_sec / total, 1),
    }
    atomic_write_json(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
