"""Every user error exits 2 naming the setting, its value and the fix, before any stage runs, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_app
from moshi_knowledge.__main__ import main

CASES = [
    (["story=file"], "story.path"),
    (["train.lr=-1"], "train.lr=-1"),
    (["lora.rank=0"], "lora.rank=0"),
    (["model.device=bogus"], "model.device='bogus'"),
    (["tts.moshi_voice.name=bogus"], "tts.moshi_voice.name = 'bogus'"),
    (["objective.tier=bogus"], "objective.tier"),
    (["+objective.tier=bogus"], "objective.tier='bogus'"),
    (["eval.tiers=[train,paraphrse]"], "paraphrse"),
    (["objective.metric=recall/paraphrse/mc_acc"], "objective.metric"),
    (["stages=[]"], "stages=[]"),
    (["stages=[story,trian]"], "trian"),
    (["debug=default"], "debug/default"),
    (["+train.foo=1"], "+train.foo=1: train has no such setting"),
    (["+tts.moshi_voice.pich=3"], "+tts.moshi_voice.pich=3"),
    (["+seeds=3"], "+seeds=3: the config has no such setting"),
    (["~logger"], "~logger: this run reads logger"),
    (["model=local"], "model.moshi_weights: no value, and no model.dir"),
    (["model=local", "model.dir=no_such_folder"], "model.dir=no_such_folder: no such folder"),
    (["debug.inject_nonfinite_at=[x]"], "debug.inject_nonfinite_at"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["nan_guard.lr_factor=2"], "nan_guard"),
    (["nan_guard.policy=bogus"], "nan_guard.policy='bogus'"),
    (["nan_guard.polcy=x"], "nan_guard.polcy"),
    (["tts.moshi_voice.rat=3"], "tts.moshi_voice.rat"),
    (["logger.projct=x"], "logger.projct"),
    (["layout=narration", "narration.restatements=9"], "narration.restatements=9"),
    (["layout=mixed", "layout.max_sentences=0"], "layout.max_sentences = 0"),
    (["qa.heldout_share=1.5"], "qa.heldout_share=1.5"),
]


def _run_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str]) -> int:
    argv = ["moshi-knowledge", *args, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code


@pytest.mark.parametrize(("args", "named"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_user_error_exits_2_before_any_stage(monkeypatch, tmp_path, capsys, caplog, args, named):
    code = _run_main(monkeypatch, tmp_path, args)
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert code == 2, output
    assert named in output
    assert "fix" in output.lower() or "use +" in output.lower()  # Hydra's own fix for a key not in the schema
    assert "Traceback" not in output
    assert not (tmp_path / "cache").exists()  # no stage ran
    run_dir = tmp_path / "run"
    assert not run_dir.exists() or {p.name for p in run_dir.iterdir()} <= {".hydra", "moshi_knowledge.log"}


def test_cli_user_error_is_a_message_and_exit_2(tmp_path):
    """The console path: a subprocess sees exit 2, the setting and the fix, and no traceback."""
    proc = run_app(["story=file", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "story.path" in output and "fix: give it on the command line: story.path=..." in output
    assert "Traceback" not in output and "MissingMandatoryValue" not in output
    assert not (tmp_path / "cache").exists()


def test_api_key_override_is_refused_before_hydra_writes(tmp_path):
    key = "sk-test-0123456789abcdef"
    run_dir = tmp_path / "run"
    for override in (f"story.api_key={key}", f"+story.api_key={key}", f"+qa.token={key}"):
        proc = run_app(["story=openai", override, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=120)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert key not in output and "never a setting" in output
    # a key from ./.env pasted under an innocent name is recognised by its value
    (tmp_path / ".env").write_text(f'OPENAI_API_KEY="{key}"  # my key\n')
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.run([sys.executable, "-m", "moshi_knowledge", "story=openai", f"story.premise=tell {key}",
                           "logger=none", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "story.premise" in proc.stderr and key not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".env"
               and key in p.read_text(errors="replace")]
    assert written == []
    assert not run_dir.exists()
