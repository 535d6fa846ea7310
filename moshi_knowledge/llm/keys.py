"""API keys, read at call time from the environment or from `./.env`, never from a config.

Keeping keys out of configs means they cannot leak into Hydra's saved `.hydra/config.yaml`, the stage
cache or W&B. A `.env` file in the current working directory (where the command is launched; Hydra does
not change it) is read as plain `KEY=VALUE` lines; a variable already in the environment wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from moshi_knowledge.errors import UserError

# Variables tried in order for each provider.
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
}
DOTENV = ".env"


def _dotenv(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (optionally `export KEY=VALUE`, optionally quoted); comments and blanks skipped."""
    if not path.is_file():
        return {}
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        name, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def api_key(provider: str, label: str) -> str:
    """The key for `provider`; a UserError naming the variable(s) when none is set. `label` names the option."""
    names = KEY_VARIABLES[provider]
    from_file = _dotenv(Path.cwd() / DOTENV)
    for name in names:
        value = os.environ.get(name) or from_file.get(name)
        if value:
            return value
    wanted = " or ".join(names)
    raise UserError(
        f"{label}: no API key: {wanted} is not set in the environment or in {Path.cwd() / DOTENV}",
        f"export {names[0]}=... (or add a line {names[0]}=... to ./{DOTENV}); keys never go in a config",
    )
