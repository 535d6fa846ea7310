"""Every setting a run will read, checked before its first stage: a bad value costs a second, not the stages before.

Hydra's structured schemas reject unknown keys and wrong types at composition; this adds what they cannot see:
the root's own settings (pydantic), unset mandatory values, and the value checks of the objects the run will build
(the Q/A backend, the layout and its narration, TrainConfig, LoraSpec, NanGuard, EvalConfig, a light TTS backend,
the model's device and dtype, the files of an imported dataset). Each raises a UserError naming the setting, its
value and the fix, which the app reports with exit status 2.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from moshi_knowledge.config_schema import RootSettings
from moshi_knowledge.errors import UserError
from moshi_knowledge.model.load import resolve_device, resolve_dtype
from moshi_knowledge.speech.tts_base import TTSBackend
from moshi_knowledge.stages import RUN_STAGE_KEYS, RUN_STAGES, STAGES, with_deps
from moshi_knowledge.tracking import check_objective

# Groups whose objects are cheap to build and check their own values in their constructors.
BUILT_FIRST = ("qa", "layout", "train", "lora", "nan_guard", "eval")


def check_config(cfg: DictConfig) -> None:
    """Raise UserError for the first bad setting among those the run's stages read."""
    _check_root(cfg)
    keys = used_config_keys(list(cfg.stages))
    _check_missing(cfg, keys)
    for key in BUILT_FIRST:
        if key in keys:
            _build(cfg, key)
    if "dataset" in keys:
        _build(cfg, "dataset").check()
    if "model" in keys:
        resolve_dtype(cfg.model.dtype, resolve_device(cfg.model.device))
    tts = get_class(cfg.tts._target_) if "tts" in keys else None
    if tts is not None and issubclass(tts, TTSBackend) and tts.built_before_stages:
        _build(cfg, "tts")
    check_objective(cfg.objective.metric, cfg.objective.mode, list(cfg.eval.tiers))


def used_config_keys(stages: list[str]) -> set[str]:
    """The config nodes read by `stages` and the cached stages they need."""
    keys = {k for name in with_deps(stages) for k in STAGES[name].config_keys}
    return keys | {k for name in stages if name in RUN_STAGES for k in RUN_STAGE_KEYS[name]}


def _check_root(cfg: DictConfig) -> None:
    root = {k: _plain(cfg.get(k)) for k in RootSettings.model_fields}
    try:
        RootSettings.model_validate(root)
    except ValidationError as err:
        first = err.errors()[0]
        setting = ".".join(str(p) for p in first["loc"])
        top = RootSettings.model_fields[str(first["loc"][0])]
        if first["type"] == "extra_forbidden":
            known = ", ".join(top.annotation.model_fields)
            raise UserError(f"{setting}={first['input']!r}: {first['loc'][0]} has no such setting",
                            f"remove it; {first['loc'][0]} takes {known}") from None
        raise UserError(f"{setting}={first['input']!r} is invalid: {first['msg']}",
                        f"set {setting} to {top.description or 'a value of the default type'}") from None


def _plain(value: object) -> object:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_missing(cfg: DictConfig, keys: set[str]) -> None:
    missing = sorted(name for key in keys for name in OmegaConf.missing_keys(cfg[key]))
    if missing:
        raise UserError(f"{', '.join(missing)}: no value (the chosen option needs one)",
                        "give it on the command line: " + " ".join(f"{k}=..." for k in missing))


def _build(cfg: DictConfig, key: str) -> Any:
    """Instantiate `cfg[key]` for its constructor's checks, raising the UserError itself rather than Hydra's
    wrapper around it."""
    try:
        return instantiate(cfg[key])
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
