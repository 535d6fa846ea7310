"""`python -m moshi_knowledge [overrides]` and the `moshi-knowledge` console script: the subcommands
(moshi_knowledge/cli.py), the checks before Hydra sees the command line, and the exit codes. The Hydra app itself
is moshi_knowledge/app.py, imported only for a run: a subcommand never loads the config machinery."""

from __future__ import annotations

import sys

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException, SearchPathException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from moshi_knowledge.cli import SUBCOMMANDS, default_groups, group_options, run_help
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
    """`moshi-knowledge COMMAND ...` runs a subcommand (cli.SUBCOMMANDS); anything else is the Hydra app.

    Exit 2 is the user's mistake: a job's UserError (the app exits 2 itself), or a command line Hydra cannot compose
    (an unknown key, a bad override or value, a missing option), also a sweep value that fails for one job. Hydra
    prints any error and exits 1 while handling it, so its exit carries the error as `__context__`: a launcher or
    job that crashes keeps exit 1."""
    args = sys.argv[1:]
    command = SUBCOMMANDS.get(args[0]) if args else None
    if command is not None and not command.takes_overrides:
        sys.exit(command.main()(args[1:]))
    load_env_file()  # before the check: a .env key pasted into an override is then recognised as a secret
    _refuse_secret_overrides(args)
    if command is not None:
        sys.exit(command.main()(args[1:]))
    _refuse_unknown_command(args)
    if "--help" in args or "-h" in args:
        print(run_help())
        sys.exit(0)
    sys.argv[1:] = _with_plus_on_unlisted_groups(args)
    from moshi_knowledge.app import app

    try:
        app()
    except SystemExit as stop:
        if stop.code == 1 and isinstance(stop.__context__, REFUSED):
            print(f"  fix: {_composition_fix(stop.__context__)}", file=sys.stderr)
            sys.exit(2)
        raise


def _refuse_unknown_command(args: list[str]) -> None:
    """A bare word first is a mistyped subcommand (an override always has `=` or starts with +, ~ or -)."""
    if args and args[0][:1] not in ("-", "+", "~") and "=" not in args[0]:
        print(f"error: {args[0]!r} is neither a subcommand nor an override", file=sys.stderr)
        print(f"  fix: use one of {', '.join(SUBCOMMANDS)} (moshi-knowledge --help), or key=value to override a "
              "setting", file=sys.stderr)
        sys.exit(2)


def _with_plus_on_unlisted_groups(args: list[str]) -> list[str]:
    """`debug=smoke` means `+debug=smoke`: a group the defaults list leaves out (debug, appended after the
    experiment) takes a +, which Hydra would otherwise ask for. Both forms work, as they do for the other groups."""
    unlisted = set(group_options()) - default_groups()
    return [f"+{arg}" if "=" in arg and arg.split("=", 1)[0] in unlisted else arg for arg in args]


def _composition_fix(err: BaseException) -> str:
    """The `fix:` line under Hydra's own message for a command line it could not compose."""
    if isinstance(err, MissingConfigException):
        return "pick one of the options listed above (moshi-knowledge --help lists every group and its options)"
    if isinstance(err, OverrideParseException):
        return ("write each override as key=value, group=option, +key=value or ~key; subcommands: "
                + ", ".join(SUBCOMMANDS))
    if isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
        return ("check the key's spelling: `moshi-knowledge --cfg job` prints every setting, "
                "`moshi-knowledge GROUP=OPTION --cfg job` those of one option")
    return "moshi-knowledge --help lists the groups and their options; --cfg job prints every setting"


if __name__ == "__main__":
    main()
