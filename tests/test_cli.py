"""One `moshi-knowledge` command: its help, its subcommands, a config path free of torch, and `+debug=smoke`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, compose_cfg, run_app
from moshi_knowledge.__main__ import main
from moshi_knowledge.cli import SUBCOMMANDS, group_options
from moshi_knowledge.export import reexport
from moshi_knowledge.model.load import LOCAL_FILE, MIMI_CONFIG_KEY

PRESETS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def _main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["moshi-knowledge", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    return stop.value.code


def test_help_names_every_subcommand_and_no_internal_group(monkeypatch, capsys) -> None:
    assert _main(monkeypatch, "--help") == 0
    out = capsys.readouterr().out
    assert "moshi-knowledge: can finetuning" in out
    for name in SUBCOMMANDS:
        assert f"\n  {name} " in out
    for group, options in group_options().items():
        assert f"  {group} " in out and ", ".join(options) in out
    assert "schema" not in out and "debug       smoke" in out


@pytest.mark.parametrize("name", list(SUBCOMMANDS))
def test_each_subcommand_has_its_own_help(monkeypatch, capsys, name: str) -> None:
    code = _main(monkeypatch, name, "--help")
    assert code in (0, None)
    assert f"moshi-knowledge {name}" in capsys.readouterr().out


def test_a_mistyped_subcommand_is_exit_2_with_the_commands(monkeypatch, capsys) -> None:
    assert _main(monkeypatch, "reprot", "runs/x") == 2
    err = capsys.readouterr().err
    assert "'reprot'" in err and "fix: use one of report, validate, export, plan" in err


def test_the_config_path_imports_neither_torch_nor_scipy_signal() -> None:
    """Shell completion, --help and --cfg compose configs only: the modules they import must stay light."""
    code = ("import sys\n"
            "from moshi_knowledge import app, __main__\n"
            "from conftest import compose_cfg\n"
            "compose_cfg(['experiment=moshiko_h200', '+debug=smoke'])\n"
            "print(sorted(m for m in ('torch', 'scipy.signal', 'moshi', 'peft') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("line", "expected", "schemas"), [
    ("lora=", "lora=attn_mlp", False),  # the group's files: nothing composed, so no schema module is imported
    ("experiment=moshiko_h200 +debug=", "+debug=smoke", False),
    ("train.l", "train.lr=", True),  # a key: Hydra composes the config, which needs the structured schemas
])
def test_a_tab_completes_without_torch_and_imports_the_schemas_only_to_compose(line: str, expected: str,
                                                                               schemas: bool) -> None:
    """Hydra's bash completion, as the shell calls the console script (benchmarks/cli_latency.py times it)."""
    probe = ("import sys, runpy\n"
             "sys.argv = ['moshi-knowledge', '-sc', 'query=bash']\n"
             "try:\n    runpy.run_module('moshi_knowledge', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'numpy', 'moshi_knowledge.config_schema') if m in sys.modules))\n")
    env = {**os.environ, "COMP_LINE": f"moshi-knowledge {line}"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    *answer, imported = done.stdout.strip().splitlines()
    assert expected in " ".join(answer).split(), done.stdout + done.stderr
    assert imported == ("['moshi_knowledge.config_schema', 'numpy']" if schemas else "[]")


def _adapter(run: Path, folders: tuple[str, ...] = ("moshi", "merged")) -> None:
    for name in folders:
        folder = run / "adapter" / name
        folder.mkdir(parents=True)
        (folder / "mimi_config.json").write_text("{}")
        (folder / "config.json").write_text(json.dumps(
            {"dim": 8, MIMI_CONFIG_KEY: LOCAL_FILE + str((folder / "mimi_config.json").resolve())}))


def test_export_points_a_moved_runs_adapter_at_its_new_place(tmp_path, monkeypatch, capsys) -> None:
    _adapter(tmp_path / "old")
    (tmp_path / "old").rename(tmp_path / "new")
    assert _main(monkeypatch, "export", str(tmp_path / "new")) == 0
    out = capsys.readouterr().out
    for name in ("moshi", "merged"):
        folder = tmp_path / "new" / "adapter" / name
        config = json.loads((folder / "config.json").read_text())
        assert config == {"dim": 8, MIMI_CONFIG_KEY: LOCAL_FILE + str((folder / "mimi_config.json").resolve())}
        assert f"re-exported {folder / 'config.json'}" in out
    assert reexport(tmp_path / "new") == []  # in place: nothing to rewrite


def test_export_of_a_folder_without_adapter_is_exit_2(tmp_path, monkeypatch, capsys) -> None:
    assert _main(monkeypatch, "export", str(tmp_path)) == 2
    assert "no adapter/moshi/config.json" in capsys.readouterr().err


@pytest.mark.parametrize("preset", [None, *PRESETS])
def test_smoke_composes_on_every_preset_with_the_tiny_model_and_no_logger(preset: str | None) -> None:
    cfg = compose_cfg([*([f"experiment={preset}"] if preset else []), "+debug=smoke"])
    assert cfg.model._target_.endswith("TinyModel") and cfg.logger._target_.endswith("NullSink")
    assert cfg.train.max_steps == 4 and cfg.eval.recall_every == cfg.train.max_steps and cfg.qa.n_train == 8


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """`+debug=smoke` as a user types it: alone, on the demo and on the moshiko preset (its code path, tiny model)."""
    root = tmp_path_factory.mktemp("smoke")
    runs = {}
    for name, preset in (("demo", ["experiment=demo"]), ("moshiko_h200", ["experiment=moshiko_h200"])):
        run = root / name
        runs[name] = run_app([*preset, "+debug=smoke", f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={run}"],
                             cwd=root), run
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo", "moshiko_h200"])  # the default differs from demo in sizes only
def test_smoke_runs_end_to_end_quietly_with_recall_at_start_and_end(smoke_runs, name: str) -> None:
    done, run = smoke_runs[name]
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    recall_steps = sorted({r["step"] for r in rows if any(k.startswith("recall/train/") for k in r)})
    assert recall_steps == [0, 4]
    assert not (run / "wandb").exists()
    for noise in ("FutureWarning", "gemm_4bit_forward", "Traceback"):
        assert noise not in output
