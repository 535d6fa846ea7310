"""Every command the README and docs/ show (in bash blocks and inline), the sweep and launcher configs' own
comments and the Makefile's demo is run or checked here, so the docs cannot drift from the code.

An app command is composed as Hydra composes its jobs (a sweep's grid, an Optuna search's choices and interval
ends: every value of every axis in some job) and put through the checks a run makes before its first stage.
The docs' `my_dataset` (a moshi-finetune folder of the user's) is a real one, made from a small run's training
split. `--cfg job` commands, text-only runs (`stages=[story,qa]` offline) and `validate` run for real as
subprocesses or calls. Commands of other programs are listed in OTHER_PROGRAMS with the reason they are not run;
a new command that fits nowhere fails the test.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep

from conftest import REPO, run_app
from moshi_knowledge.preflight import check_config

# Programs the tests do not run, each with why (they need the network, a GPU server, or are the test suite).
OTHER_PROGRAMS = {
    "make": "`make test` is this suite; `make demo`'s app command is read from the Makefile and composed below",
    "wandb": "W&B's own CLI (uploads offline runs)",
    "eval": "installs Hydra's bash completion in the shell; tests/test_cli.py runs the queries it makes",
    "echo": "writes a .env line; tests/test_llm_backends.py reads such lines",
    "huggingface-cli": "downloads weights: needs the network",
    "python -m spacy": "downloads a spaCy model: needs the network",
    "python -m moshi.server": "moshi's own server on trained weights",
    "report": "needs a sweep's runs: tests/test_tracking.py and tests/test_report.py run it on real sweeps",
    "export": "needs a trained run: tests/test_cli.py moves one and runs `moshi-knowledge export` on it",
    "plan": "tests/test_plan.py runs `moshi-knowledge plan sweep=injection experiment=moshiko_h200` and plans on "
            "the tiny default, each in a subprocess",
}
APP = re.compile(r"^(?:\S+=\S+\s+)*(?:torchrun\s.*?-m moshi_knowledge|(?:\.venv/bin/)?python -m moshi_knowledge"
                 r"|moshi-knowledge)(?=\s|$)(?P<args>.*)$")
VALIDATE = re.compile(r"^(?:(?:\.venv/bin/)?python -m moshi_knowledge\.validate|moshi-knowledge validate)"
                      r"\s+(?P<args>.*)$")
DATASET_PLACEHOLDER = "DIR"  # the docs' stand-in for a dataset folder: validated as the small run's dataset
TEXT_ONLY = {"story", "qa"}
MY_DATASET = "my_dataset"  # the README's folder of a moshi-finetune dataset, made by the `my_dataset` fixture


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# an inline command: a code span that starts with the app's name (the rest of a sentence's code spans are settings)
INLINE = re.compile(r"(?<!`)`((?:moshi-knowledge|python -m moshi_knowledge|torchrun)\s[^`]+)`(?!`)")


def _doc_commands() -> list[str]:
    """Each command of the docs' bash blocks (continuation lines joined, comments dropped) and each inline one."""
    commands = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.append(shlex.join(words))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        commands += [shlex.join(shlex.split(m.replace("\n", " "))) for m in INLINE.findall(prose)]
    return commands


def _config_comment_commands() -> list[str]:
    """The `#   moshi-knowledge ...` usage lines at the top of conf/sweep/*.yaml and conf/launcher/*.yaml."""
    commands = []
    for path in sorted([*(REPO / "conf" / "sweep").glob("*.yaml"), *(REPO / "conf" / "launcher").glob("*.yaml")]):
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^#\s+moshi-knowledge\s", line):
                commands.append(shlex.join(shlex.split(line.lstrip("# "), comments=True)))
    return commands


def _makefile_commands() -> list[str]:
    """The Makefile recipes that run the app (`make demo`), with $(PY) as the venv's python."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return [line.strip().replace("$(PY)", ".venv/bin/python") for line in text.splitlines()
            if line.startswith("\t$(PY) -m moshi_knowledge")]


DOC_COMMANDS = _doc_commands()
COMMANDS = sorted(set(DOC_COMMANDS + _config_comment_commands() + _makefile_commands()))


def _app_args(command: str) -> list[str] | None:
    match = APP.match(command)
    if match is None or VALIDATE.match(command):
        return None
    args = shlex.split(match["args"])
    # the docs' placeholders: a bare `...` (more overrides), `[overrides]` / `[OVERRIDE ...]` / `[DIR ...]` (any
    # number of them, none here) and an optional `[key=...]`
    args = [a for a in args if a != "..." and not re.fullmatch(r"\[(overrides|OVERRIDE|DIR)\]?|\[(OVERRIDE|DIR)", a)]
    return [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in args]


def _other_program(command: str) -> str | None:
    args = _app_args(command)
    if args is not None and args[:1] in (["report"], ["export"], ["plan"]):
        return args[0]
    return next((p for p in OTHER_PROGRAMS if command == p or command.startswith(p + " ")), None)


def _jobs(args: list[str]) -> list[list[str]]:
    """Override lists of the jobs the command starts that, together, give each swept axis each of its values."""
    overrides = [a for a in args if not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        base = compose(config_name="config", overrides=plain, return_hydra_config=True)
    axes: dict[str, str] = {k: str(v) for k, v in (base.hydra.sweeper.get("params") or {}).items()}
    axes.update({o.key_or_group: o.input_line.split("=", 1)[1] for o in parsed if o.is_sweep_override()})
    values = []
    for key, spec in axes.items():
        (override,) = parser.parse_overrides([f"{key}={spec}"])
        if not override.is_sweep_override():
            values.append([f"{key}={spec}"])
        elif isinstance(override.value(), IntervalSweep):  # Optuna's interval: its two ends
            values.append([f"{key}={override.value().start}", f"{key}={override.value().end}"])
        else:
            values.append([f"{key}={v}" for v in override.sweep_string_iterator()])
    # every value of every axis in some job (the grid's full product composes the same values, only more often)
    width = max((len(v) for v in values), default=1)
    return [[*plain, *(axis[i % len(axis)] for axis in values)] for i in range(width)]


def _runs_for_real(args: list[str]) -> bool:
    if "--cfg" in args:
        return True
    stages = next((a.split("=", 1)[1] for a in args if a.startswith("stages=")), None)
    backends = [a for a in args if re.match(r"^(story|qa)=(openai|gemini)$", a)]
    return stages is not None and set(stages.strip("[]").split(",")) <= TEXT_ONLY and not backends


def test_every_command_is_covered() -> None:
    assert len(DOC_COMMANDS) >= 30  # the parser found the docs' blocks
    uncovered = [c for c in COMMANDS if _app_args(c) is None and _other_program(c) is None
                 and not VALIDATE.match(c)]
    assert uncovered == [], "commands neither run by this test nor listed in OTHER_PROGRAMS"


def test_every_sweep_and_launcher_config_is_shown_in_the_docs() -> None:
    shown = " ".join(DOC_COMMANDS)
    for group in ("sweep", "launcher"):
        for path in (REPO / "conf" / group).glob("*.yaml"):
            if group == "launcher" and path.stem == "basic":
                continue  # the default
            assert f"{group}={path.stem}" in shown, f"the docs show no command with {group}={path.stem}"


APP_COMMANDS = [c for c in COMMANDS if _app_args(c) is not None and _other_program(c) is None]


@pytest.fixture(scope="module")
def my_dataset(small_data_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's `my_dataset`: a moshi-finetune folder of one manifest (the small run's training split)."""
    _, run_dir, _ = small_data_run
    folder = tmp_path_factory.mktemp("docs") / MY_DATASET
    folder.mkdir()
    shutil.copyfile(run_dir / "dataset" / "train.jsonl", folder / "train.jsonl")
    (folder / "conv").symlink_to((run_dir / "dataset" / "conv").resolve(), target_is_directory=True)
    return folder


def _with_my_dataset(args: list[str], request: pytest.FixtureRequest) -> list[str]:
    """The README's placeholder folder replaced by a real one, where a command names it."""
    if not any(a == f"dataset.path={MY_DATASET}" or a == MY_DATASET for a in args):
        return args
    folder = str(request.getfixturevalue("my_dataset"))
    return [a.replace(MY_DATASET, folder) if a in (f"dataset.path={MY_DATASET}", MY_DATASET) else a for a in args]


@pytest.mark.parametrize("command", [c for c in APP_COMMANDS if not _runs_for_real(_app_args(c))])
def test_app_command_composes_and_passes_the_checks_for_every_job(command: str, request: pytest.FixtureRequest) -> None:
    args = _with_my_dataset(_app_args(command), request)
    assert not [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")], command
    jobs = _jobs(args)
    assert jobs
    with initialize_config_module(config_module="moshi_knowledge.conf", version_base="1.3"):
        for overrides in jobs:
            check_config(compose(config_name="config", overrides=overrides))


@pytest.mark.parametrize("command", [c for c in APP_COMMANDS if _runs_for_real(_app_args(c))])
def test_short_commands_run_for_real(command: str, tmp_path: Path) -> None:
    args = _app_args(command)
    proc = run_app([*args, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if "--cfg" not in args:
        assert (tmp_path / "run" / "qa" / "qa.json").exists()


@pytest.mark.parametrize("command", [c for c in COMMANDS if VALIDATE.match(c)])
def test_validate_commands_run_on_a_real_dataset(command: str, small_data_run, capsys,
                                                 request: pytest.FixtureRequest) -> None:
    from moshi_knowledge.validate import main

    _, run_dir, _ = small_data_run
    args = shlex.split(VALIDATE.match(command)["args"])
    assert args[0] in ("runs/demo/dataset", MY_DATASET, DATASET_PLACEHOLDER)
    folder = _with_my_dataset(args[:1], request)[0] if args[0] == MY_DATASET else run_dir / "dataset"
    assert main([str(folder), *args[1:]]) == 0
    assert capsys.readouterr().out.startswith("OK: ")
