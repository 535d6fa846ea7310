"""API keys, read at call time from the environment or from `./.env`, never from a config.

Keeping keys out of configs means they cannot leak into Hydra's saved `.hydra/config.yaml`, the stage
cache or W&B. A `.env` file in the current working directory (where the command is launched; Hydra does
not change it) is read with python-dotenv (quotes, `export` and `#` comments as a shell has them); a variable
already in the environment wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

from moshi_knowledge.errors import UserError

# Variables tried in order for each provider.
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
DOTENV = ".env"


def api_key(provider: str, label: str) -> str:
    """The key for `provider`; a UserError naming the variable(s) when none is set. `label` names the option."""
    names = KEY_VARIABLES[provider]
    from_file = dotenv_values(Path.cwd() / DOTENV)  # read only: the file never changes os.environ
    for name in names:
        value = os.environ.get(name) or from_file.get(name)
        if value:
            return value
    wanted = " or ".join(names)
    raise UserError(
        f"{label}: no API key: {wanted} is not set in the environment or in {Path.cwd() / DOTENV}",
        f"export {names[0]}=... (or add a line {names[0]}=... to ./{DOTENV}); keys never go in a config",
    )
