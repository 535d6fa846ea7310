"""API keys, read at call time from the environment, never from a config.

Keeping keys out of configs means they cannot leak into Hydra's saved `.hydra/config.yaml`, the stage
cache or W&B. A `.env` file in the current working directory (where the command is launched; Hydra does
not change it) is loaded into the environment by python-dotenv (quotes, `export` and `#` comments as a shell
has them; a variable already set wins), so its keys are environment variables like the others and the secret
scrubber (tracking/secrets.py) knows their values too.
"""

from __future__ import annotations

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


def load_env_file() -> None:
    """Add ./.env's variables to the environment; one already set keeps its value."""
    load_dotenv(Path.cwd() / DOTENV, override=False)


def api_key(provider: str, label: str) -> str:
    """The key for `provider`; a UserError naming the variable(s) when none is set. `label` names the option."""
    names = KEY_VARIABLES[provider]
    load_env_file()
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    wanted = " or ".join(names)
    raise UserError(
        f"{label}: no API key: {wanted} is not set in the environment or in {Path.cwd() / DOTENV}",
        f"export {names[0]}=... (or add a line {names[0]}=... to ./{DOTENV}); keys never go in a config",
    )
