"""API keys, read at call time from the environment, never from a config.

Keeping keys out of configs means they cannot leak into Hydra's saved `.hydra/config.yaml`, the stage
cache or W&B. A `.env` file in the current working directory (where the command is launched; Hydra does
not change it) is loaded into the environment by python-dotenv (quotes, `export` and `#` comments as a shell
has them; a variable already set wins), so its keys are environment variables like the others and the secret
scrubber (tracking/secrets.py) knows their values too.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

from dotenv import load_dotenv

from moshi_knowledge.errors import UserError

# Variables tried in order for each provider.
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
DOTENV = ".env"
_UNDECODED = "\ufffd"  # what load_env_file reads a byte that is not UTF-8 as

log = logging.getLogger(__name__)


def load_env_file() -> None:
    """Add ./.env's variables to the environment; one already set keeps its value.

    A byte that is not UTF-8 (a latin-1 accent in a comment) is read as U+FFFD with a warning naming the file and
    line, not an error: a run that needs no key must not stop for it, and `api_key` refuses a key that holds one."""
    path = Path.cwd() / DOTENV
    if not path.is_file():
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        lines = [str(n) for n, line in enumerate(text.split("\n"), start=1) if _UNDECODED in line]
        log.warning("%s line %s: a byte that is not UTF-8, read as U+FFFD; a key on that line cannot be used "
                    "(save the file as UTF-8)", path, ", ".join(lines))
    load_dotenv(stream=io.StringIO(text), override=False)


def api_key(provider: str, label: str) -> str:
    """The key for `provider`; a UserError naming the variable(s) when none is set. `label` names the option."""
    names = KEY_VARIABLES[provider]
    load_env_file()
    for name in names:
        value = os.environ.get(name)
        if value and _UNDECODED in value:
            raise UserError(f"{label}: {name} holds a byte that is not UTF-8 (read as U+FFFD from "
                            f"{Path.cwd() / DOTENV}), so it cannot be the key",
                            f"type {name} again in ./{DOTENV} and save the file as UTF-8")
        if value:
            return value
    wanted = " or ".join(names)
    raise UserError(
        f"{label}: no API key: {wanted} is not set in the environment or in {Path.cwd() / DOTENV}",
        f"export {names[0]}=... (or add a line {names[0]}=... to ./{DOTENV}); keys never go in a config",
    )
