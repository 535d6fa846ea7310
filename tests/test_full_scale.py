"""The full-scale rehearsal (benchmarks/full_scale.py): its tokenizer padding, and its path on a tiny checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from conftest import REPO
from moshi_knowledge.model.tiny import train_tokenizer

sys.path.insert(0, str(REPO / "benchmarks"))
from full_scale import padded_tokenizer  # noqa: E402

TEXT = "\n".join(f"line {i} of a story about the river Vel and king Oran" for i in range(200))


def test_a_padded_tokenizer_has_moshikos_size_and_encodes_as_before() -> None:
    small = train_tokenizer(TEXT, 300)
    before = spm.SentencePieceProcessor(model_proto=small)
    after = spm.SentencePieceProcessor(model_proto=padded_tokenizer(small, 32_000))
    assert before.vocab_size() < 1000 and after.vocab_size() == 32_000
    for text in ("the river Vel", "king Oran built 904 bridges", "Ωμέγα\nline"):
        assert after.encode(text) == before.encode(text)
        assert max(after.encode(text)) < before.vocab_size()
    with pytest.raises(ValueError, match="more than"):
        padded_tokenizer(small, 10)


@pytest.mark.slow
def test_the_rehearsal_runs_the_app_end_to_end_on_a_checkpoint_it_writes(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "full_scale.py"), "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "full_scale_smoke.json").read_text())
    app = result["app"]
    assert result["exit_code"] == 0 and app["status"] == "completed" and result["checks"]["exit_0_and_completed"]
    assert set(app["stages_sec"]) == {"story", "qa", "tts", "dataset", "model", "tokenize"}
    assert [p["step"] for p in app["recall_points"]] == [0, 2, 4]
    assert all(p["mc_sec"] > 0 and p["gen_sec"] > 0 and p["voice_sec"] > 0 for p in app["recall_points"])
    assert "setup_sec" in app["recall_points"][0]
    assert [s["step"] for s in app["per_step"]] == [1, 2, 3, 4]
    assert 0 < app["useful_fraction"] <= 1 and app["useful_frames_per_s"] > 0
    assert result["benchmark"]["useful_frames_per_s"] > 0 and result["checks"]["app_vs_benchmark"]["value"] > 0
    config = json.loads((tmp_path / "work" / "checkpoint" / "config.json").read_text())
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "work" / "checkpoint" / "tokenizer.model")
                                      ).vocab_size() == config["text_card"]
    assert "| recall at step |" in (out / "full_scale_smoke.md").read_text()
