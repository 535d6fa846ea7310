"""Keep credentials out of everything we log: the W&B config, run names and tags.

Secrets never belong in the config, but a user can still pull one in (`${oc.env:OPENAI_API_KEY}`, a stray
command-line override). Two rules catch that: a key whose *name* looks secret is dropped, and a string *value*
that contains the value of a secret-looking environment variable is dropped.

Names are split into words (`api_key`, `apiKey`, `HF-TOKEN` -> api/key, api/key, hf/token) and matched word by
word for "key" and "token", so `tokenizer`, `max_tokens` and `keyword` survive; "secret", "password", "passwd",
"credential" and "apikey" are matched anywhere in the name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

_SECRET_WORDS = frozenset({"key", "keys", "token"})
_SECRET_FRAGMENTS = ("secret", "password", "passwd", "credential", "apikey")
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
# A shorter env value ("1", "true") would match innocent config values.
_MIN_SECRET_LEN = 8


def is_secret_name(name: str) -> bool:
    """True when a config key or env var name looks like it holds a credential."""
    lowered = name.lower()
    if any(fragment in lowered for fragment in _SECRET_FRAGMENTS):
        return True
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Values of the environment variables whose names look secret (OPENAI_API_KEY, WANDB_API_KEY, HF_TOKEN...)."""
    env = os.environ if environ is None else environ
    return frozenset(v for k, v in env.items() if is_secret_name(k) and len(v) >= _MIN_SECRET_LEN)


def contains_secret(value: Any, secrets: Iterable[str]) -> bool:
    return isinstance(value, str) and any(s in value for s in secrets)


def scrub(obj: Any, secrets: frozenset[str] | None = None) -> Any:
    """A copy of a plain container (dicts, lists, scalars) without secret-named keys or secret-bearing values."""
    secrets = secret_env_values() if secrets is None else secrets
    if isinstance(obj, Mapping):
        return {
            k: scrub(v, secrets)
            for k, v in obj.items()
            if not is_secret_name(str(k)) and not contains_secret(v, secrets)
        }
    if isinstance(obj, (list, tuple)):
        return [scrub(v, secrets) for v in obj if not contains_secret(v, secrets)]
    return obj


def is_secret_override(override: str, secrets: frozenset[str] | None = None) -> bool:
    """True for a Hydra override (`+llm.api_key=...`) that names or carries a secret."""
    secrets = secret_env_values() if secrets is None else secrets
    key = override.split("=", 1)[0].lstrip("+~")
    return any(is_secret_name(part) for part in key.split(".")) or contains_secret(override, secrets)


def redact(text: str, secrets: frozenset[str] | None = None) -> str:
    """`text` with every secret value replaced by `***` (for error messages that may echo a request)."""
    for secret in secret_env_values() if secrets is None else secrets:
        text = text.replace(secret, "***")
    return text


def loggable_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data, without Hydra's own node and without secrets."""
    from omegaconf import DictConfig, OmegaConf

    if cfg is None:
        return {}
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    plain.pop("hydra", None)
    return scrub(plain)
