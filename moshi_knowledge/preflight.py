"""Every setting a run will read, checked before its first stage: a bad value costs a second, not the stages before.

Hydra's structured schemas reject unknown keys and wrong types at composition; this adds what they cannot see:
the root's own settings (pydantic), keys a `+` added that no schema has, groups a `~` removed that the run reads,
unset mandatory values, and the value checks of the objects the run will build
(the Q/A backend, the layout and its narration, TrainConfig, LoraSpec, NanGuard, EvalConfig, a light TTS backend,
the model's device and dtype, the files of an imported dataset), every seed's range, a key reaching a setting
through an interpolation, and a layout an imported dataset would ignore. Each raises a UserError naming the
setting, its value and the fix, which the app reports with exit status 2. `check_weights` adds the model's
weight files (apart, as `plan` checks GPU runs where their weights are not).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from pydantic import ValidationError

from moshi_knowledge.cli import default_groups, group_options
from moshi_knowledge.config_schema import SEED, SEED_RANGE, RootSettings
from moshi_knowledge.dataset.source import DatasetSource
from moshi_knowledge.errors import UserError
from moshi_knowledge.evaluation.metrics import recall_stats
from moshi_knowledge.model.load import HubModel, LocalModel, resolve_device, resolve_dtype
from moshi_knowledge.specs.lora import LoraSpec
from moshi_knowledge.speech.narration_layout import NarrationLayout
from moshi_knowledge.speech.tts_base import TTSBackend
from moshi_knowledge.stages import RUN_STAGE_KEYS, RUN_STAGES, STAGES, with_deps
from moshi_knowledge.tracking.contract import check_objective
from moshi_knowledge.tracking.secrets import refuse_resolved_secrets
from moshi_knowledge.train.fp8 import MIN_CAPABILITY, fp8_capable

ALWAYS_READ = ("paths", "logger")  # read by every run, whatever its stages
# Groups whose objects are cheap to build and check their own values in their constructors.
BUILT_FIRST = ("qa", "layout", "train", "lora", "nan_guard", "eval")


def check_config(cfg: DictConfig) -> None:
    """Raise UserError for the first bad setting among those the run's stages read."""
    refuse_resolved_secrets(cfg)
    _check_root(cfg)
    keys = used_config_keys(list(cfg.stages))
    _check_removed(cfg, keys | set(ALWAYS_READ))
    _check_added(cfg)
    _check_missing(cfg, keys)
    _check_seeds(cfg, keys)
    built = {key: _build(cfg, key) for key in BUILT_FIRST if key in keys}
    if "dataset" in keys:
        dataset = _build(cfg, "dataset")
        _check_layout_is_trained(built["layout"], dataset)
        dataset.check()
    if "model" in keys:
        resolve_dtype(cfg.model.dtype, resolve_device(cfg.model.device))
    if "train" in keys and built["train"].fp8:
        _check_fp8(built["train"], built["lora"], resolve_device(cfg.model.device))
    tts = get_class(cfg.tts._target_) if "tts" in keys else None
    if tts is not None and issubclass(tts, TTSBackend) and tts.built_before_stages:
        _build(cfg, "tts")
    check_objective(cfg.objective.metric, cfg.objective.mode, list(cfg.eval.tiers), recall_stats())


def _check_fp8(train: Any, lora: Any, device: Any) -> None:
    """train.fp8 casts the frozen base layers under LoRA, and gains only on FP8 tensor cores, compiled."""
    off = "or leave train.fp8=false"
    capability = ".".join(map(str, MIN_CAPABILITY))
    if not fp8_capable(device):
        raise UserError(f"train.fp8=true needs FP8 tensor cores (compute capability {capability} or more: H100, "
                        f"H200, L40S); this run's model is on {device}", f"run it on such a GPU, {off}")
    if not isinstance(lora, LoraSpec):
        raise UserError("train.fp8=true computes the frozen base layers under LoRA in float8; lora=full trains "
                        "every weight", f"use a LoRA option (lora=all, lora=attn_mlp, ...), {off}")
    if lora.use_dora:
        raise UserError("train.fp8=true computes the frozen base layers under plain LoRA in float8; "
                        "lora.use_dora=true rescales them", f"set lora.use_dora=false, {off}")
    if train.compile is False:
        raise UserError("train.fp8=true with train.compile=false: only the compiled step fuses the float8 casts "
                        "(eager, they cost more than float8 saves)", f"leave train.compile unset (on on a GPU), {off}")


def check_weights(cfg: DictConfig) -> None:
    """Raise UserError for model=local|moshiko|moshika weights that are missing or unreadable, so that the run stops
    before its data stages. Apart from check_config: `plan` checks a GPU run's config where its weights are not."""
    if "model" in used_config_keys(list(cfg.stages)) and \
            issubclass(get_class(cfg.model._target_), (HubModel, LocalModel)):
        _build(cfg, "model").check_files()


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


def _check_removed(cfg: DictConfig, keys: set[str]) -> None:
    """`~logger` composes (Hydra drops the group) but the run reads it: refuse it here, not in a stage."""
    for key in sorted(keys):
        if key not in cfg:
            options = "|".join(group_options().get(key, [])) or "..."
            raise UserError(f"~{key}: this run reads {key}, so it cannot be removed",
                            f"choose one of its options instead: {key}={options}")


def _check_added(cfg: DictConfig, node: DictConfig | None = None, path: str = "") -> None:
    """`+train.foo=1` composes (a + may add any key) but no code reads it: a key its schema lacks is a typo."""
    node = cfg if node is None else node
    schema = OmegaConf.get_type(node)
    known = ({f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema)
             else set(RootSettings.model_fields) | default_groups() if node is cfg else None)
    for key in node:
        setting = f"{path}{key}"
        if known is not None and key not in known:
            raise UserError(f"+{setting}={_plain(node[key])!r}: {path.rstrip('.') or 'the config'} has no such "
                            "setting", f"remove it; {path.rstrip('.') or 'the config'} takes "
                                       f"{', '.join(sorted(k for k in known if not k.startswith('_')))}")
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_added(cfg, child, f"{setting}.")


def _plain(value: object) -> object:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _check_missing(cfg: DictConfig, keys: set[str]) -> None:
    missing = sorted(name for key in keys for name in OmegaConf.missing_keys(cfg[key]))
    if missing:
        raise UserError(f"{', '.join(missing)}: no value (the chosen option needs one)",
                        "give it on the command line: " + " ".join(f"{k}=..." for k in missing))


def _check_seeds(cfg: DictConfig, keys: set[str]) -> None:
    """Every seed the run reads gets the root seed's range check: a group's own (`train.seed=-1` replaces its
    `${seed}`) and a nested one (the narration's, in layout.narration)."""
    nodes = [(key, _plain(cfg[key])) for key in sorted(keys)]
    while nodes:
        path, node = nodes.pop(0)
        if not isinstance(node, dict):
            continue
        if "seed" in node:
            try:
                SEED.validate_python(node["seed"])
            except ValidationError as err:
                raise UserError(f"{path}.seed={node['seed']!r} is invalid: {err.errors()[0]['msg']}",
                                f"set {path}.seed to {SEED_RANGE}") from None
        nodes += [(f"{path}.{name}", child) for name, child in node.items()]


def _check_layout_is_trained(layout: Any, dataset: DatasetSource) -> None:
    """An imported dataset replaces the layout's training conversations, and a narration layout lays out its eval
    split as layout=dialogue does: its narration would be spoken for nothing."""
    if isinstance(layout, NarrationLayout) and not dataset.trains_on_layout:
        raise UserError(f"layout={layout.name} does nothing with this dataset: its training split is imported, not "
                        "laid out, so the narration would be spoken and never trained on",
                        "drop layout=... (layout=dialogue lays out the eval split the same way), or train on the "
                        "narration with dataset=built")


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
