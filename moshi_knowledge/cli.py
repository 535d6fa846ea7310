"""The `moshi-knowledge` command's subcommands and its `--help`, with no heavy import.

`--help` is the Hydra run's help, hydra.help.template in conf/config.yaml; it fills in the subcommands and the
config groups through the `moshi_help` resolver registered here, so that neither list is written twice and the
internal `schema/*` groups stay out of it. `run_help` renders it without Hydra, whose own `--help` lists every
group's options the slow way (seconds) even when the template shows none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files

import yaml
from omegaconf import OmegaConf

CONF_PACKAGE = "moshi_knowledge.conf"
HIDDEN_GROUPS = ("schema", "hydra")  # the structured schemas (config_schema.py) and Hydra's own groups


@dataclass(frozen=True)
class Subcommand:
    module: str  # imported only when the subcommand runs: its main(argv) -> exit status
    summary: str
    takes_overrides: bool = False  # its arguments are Hydra overrides (checked for secrets like the run's)

    def main(self) -> Callable[[list[str]], int]:
        return importlib.import_module(self.module).main


SUBCOMMANDS = {
    "report": Subcommand("moshi_knowledge.sweep_report", "the report of a sweep: moshi-knowledge report SWEEP_DIR"),
    "validate": Subcommand("moshi_knowledge.validate",
                           "check a dataset folder before training on it: moshi-knowledge validate DATASET_DIR"),
    "export": Subcommand("moshi_knowledge.export",
                         "re-export a run's adapter after moving its directory: moshi-knowledge export RUN_DIR"),
    "plan": Subcommand("moshi_knowledge.plan", "the runs and GPU-hours a command line would take, without running "
                                               "it: moshi-knowledge plan [OVERRIDE ...]", takes_overrides=True),
}


def group_options() -> dict[str, list[str]]:
    """Every user-facing config group and its options, read off the conf/ folder."""
    found: dict[str, list[str]] = {}

    def walk(folder, prefix: str) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith(("_", ".")) and entry.name not in HIDDEN_GROUPS:
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.endswith(".yaml") and prefix:
                found.setdefault(prefix.rstrip("/"), []).append(entry.name.removesuffix(".yaml"))

    walk(files(CONF_PACKAGE), "")
    return found


def completes_group_options(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether this process answers a Tab after `group=` (`lora=<Tab>`, `+debug=<Tab>`): Hydra then lists the
    group's files and composes nothing, so the structured schemas, whose modules take most of a second to import,
    need not be registered. Hydra's bash, zsh and fish completions all pass the line in COMP_LINE and complete its
    last word."""
    line = environ.get("COMP_LINE", "")
    if not ({"-sc", "--shell-completion"} & set(argv)) or not line or line.endswith(" "):
        return False
    word = line.split()[-1].lstrip("+~")
    return "=" in word and word.split("=", 1)[0] in group_options()


def _primary_config() -> dict:
    return yaml.safe_load(files(CONF_PACKAGE).joinpath("config.yaml").read_text(encoding="utf-8"))


def default_groups() -> set[str]:
    """The groups conf/config.yaml always lists in its defaults (some with a null option, e.g. debug: null)."""
    return {next(iter(entry)) for entry in _primary_config()["defaults"] if isinstance(entry, dict)}


def run_help() -> str:
    """`moshi-knowledge --help`: conf/config.yaml's hydra.help.template, filled in."""
    register_help_resolver()
    return str(OmegaConf.create(_primary_config()).hydra.help.template)


def _help_section(name: str) -> str:
    if name == "commands":
        width = max(map(len, SUBCOMMANDS))
        return "\n".join(f"  {cmd:<{width}}  {sub.summary}" for cmd, sub in SUBCOMMANDS.items())
    if name == "groups":
        groups = group_options()
        width = max(map(len, groups))
        return "\n".join(f"  {group:<{width}}  {', '.join(opts)}" for group, opts in groups.items())
    raise ValueError(f"moshi_help: unknown section {name!r} (commands, groups)")


def register_help_resolver() -> None:
    """`${moshi_help:commands}` and `${moshi_help:groups}` in hydra.help.template."""
    if not OmegaConf.has_resolver("moshi_help"):
        OmegaConf.register_new_resolver("moshi_help", _help_section)
