"""`python -m moshi_knowledge [overrides]` and the `moshi-knowledge` console script: the `report` and `plan`
subcommands, the checks before Hydra sees the command line, and the exit codes. The Hydra app itself is
moshi_knowledge/app.py."""

from __future__ import annotations

import sys

from hydra.errors import ConfigCompositionException, OverrideParseException, SearchPathException

from moshi_knowledge.app import app
from moshi_knowledge.llm.keys import load_env_file
from moshi_knowledge.tracking.secrets import is_secret_override

# Hydra's errors for a command line it cannot compose (MissingConfigException is a ConfigCompositionException)
REFUSED = (ConfigCompositionException, OverrideParseException, SearchPathException)


def _refuse_secret_overrides(args: list[str]) -> None:
    """An API key on the command line would be saved by Hydra in the run's .hydra/ files before any code of ours
    runs: refuse it first, without echoing it."""
    for arg in args:
        if "=" in arg and not arg.startswith("-") and is_secret_override(arg):
            setting = arg.split("=", 1)[0].lstrip("+~")
            print(f"error: {setting}: a key or token is never a setting; the command line was refused before "
                  "anything was written", file=sys.stderr)
            print("  fix: export it (OPENAI_API_KEY, GEMINI_API_KEY, ...) or put it in ./.env", file=sys.stderr)
            sys.exit(2)


def main() -> None:
    """`moshi-knowledge report SWEEP_DIR` renders a sweep report, `moshi-knowledge plan [overrides]` prints the runs
    and GPU-hours a command line would take (moshi_knowledge/plan.py); anything else is the Hydra app.

    Exit 2 is the user's mistake: a job's UserError (the app exits 2 itself), or a command line Hydra cannot compose
    (an unknown key, a bad override or value, a missing option), also a sweep value that fails for one job. Hydra
    prints any error and exits 1 while handling it, so its exit carries the error as `__context__`: a launcher or
    job that crashes keeps exit 1."""
    if sys.argv[1:2] == ["report"]:
        from moshi_knowledge.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    load_env_file()  # before the check: a .env key pasted into an override is then recognised as a secret
    _refuse_secret_overrides(sys.argv[1:])
    if sys.argv[1:2] == ["plan"]:
        from moshi_knowledge.plan import main as plan_main

        sys.exit(plan_main(sys.argv[2:]))
    try:
        app()
    except SystemExit as stop:
        if stop.code == 1 and isinstance(stop.__context__, REFUSED):
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
