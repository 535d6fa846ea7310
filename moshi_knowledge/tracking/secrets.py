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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from moshi_knowledge.errors import UserError

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


def refuse_resolved_secrets(cfg: Any) -> None:
    """Raise UserError for a setting whose *resolved* value holds a key: `${oc.env:OPENAI_API_KEY}` passes the
    command-line check (its text holds none), then reaches the stage cache, prompts and the LLM reply cache."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as err:
        raise UserError(f"{err.full_key}: cannot be resolved ({err.msg.splitlines()[0]})",
                        "set the variable or setting it refers to, or give the value itself") from None
    secrets = secret_env_values()
    named = {value: name for name, value in os.environ.items() if value in secrets}
    for setting, value in _leaves(plain):
        leaked = sorted(name for secret, name in named.items() if contains_secret(value, (secret,)))
        if leaked:
            raise UserError(f"{setting}: its resolved value holds ${leaked[0]}, a key or token; a key is never a "
                            "setting, so the run was refused before anything was written",
                            f"remove the reference to {leaked[0]} from {setting}: the code that calls the API reads "
                            "the key from the environment itself")


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted setting, value) for every scalar of a plain container."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), obj


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
