"""LoRA (peft) and full finetuning of a moshi LMModel, and export in peft's and moshi's formats.

The spec and its target presets live in specs/lora.py, which the config schema can import without torch.

Exports (`export_adapter`):
- LoRA: `peft/` (PeftModel.save_pretrained) and `moshi/lora.safetensors` + `moshi/config.json`, served with
  `python -m moshi.server --hf-repo <base repo> --lora-weight moshi/lora.safetensors --config-path moshi/config.json`.
  moshi's loader wraps *every* nn.Linear in its own LoRALinear and fails on any it gets no weights for, so the
  export holds peft's A/B under moshi's key names and zero A/B for every Linear peft did not target.
- DoRA and full finetuning have no exact rank-r moshi form: `moshi/model.safetensors` holds merged weights, served
  with `--moshi-weight moshi/model.safetensors --config-path moshi/config.json` (DoRA also writes `peft/`).
- `lora.export_merged=true` also writes a LoRA run's merged weights in that form, in `merged/`, for consumers
  that load only full checkpoints (moshi_mlx, other runtimes).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from moshi.models.lm import LMModel
from moshi.modules.gating import ActivationGating
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.nn import functional as F

from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json, temp_path_beside
from moshi_knowledge.model.depformer_patch import is_patched, patch_depformer
from moshi_knowledge.model.load import MIMI_CONFIG_FILE, MIMI_CONFIG_KEY, local_file_name
from moshi_knowledge.specs.lora import TARGETS, FullFinetune, LoraSpec

ADAPTER = "default"  # peft's adapter name; we only ever train one
_LORA_KEYS = ("lora", "lora_rank", "lora_scaling")


def embedding_names(lm: LMModel) -> list[str]:
    return [name for name, module in lm.named_modules() if isinstance(module, nn.Embedding)]


def lora_config(lm: LMModel, spec: LoraSpec) -> LoraConfig:
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=TARGETS[spec.targets],
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        modules_to_save=embedding_names(lm) if spec.train_embeddings else None,
        bias="none",
    )


def apply_lora(lm: LMModel, spec: LoraSpec | FullFinetune) -> nn.Module:
    """Make `lm` trainable per `spec`. LoRA injects into `lm` in place and returns the PeftModel around it
    (use `base_lm()` for LMModel methods such as forward_text); full finetuning returns `lm` itself."""
    if isinstance(spec, FullFinetune):
        return lm.requires_grad_(True)
    model = get_peft_model(lm, lora_config(lm, spec))
    if is_patched(lm):  # peft replaced per-step modules that carried the patch; cover the new ones too
        patch_depformer(model)
    return model


def base_lm(model: nn.Module) -> LMModel:
    """The LMModel inside a PeftModel (with its LoRA layers), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


@dataclass(frozen=True)
class ParamCount:
    trainable: int
    total: int


def count_parameters(model: nn.Module) -> ParamCount:
    params = list(model.parameters())
    return ParamCount(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def merged_copy(model: nn.Module) -> LMModel:
    """A plain LMModel with the adapter merged into its weights, in eval mode and frozen, for `LMGen` (which refuses
    peft's Linear) and for moshi-format export. The trained model is left untouched."""
    source_patched = is_patched(model)
    merged = copy.deepcopy(model)
    if isinstance(merged, PeftModel):
        merged = merged.merge_and_unload()
    if source_patched:
        patch_depformer(merged)
    return merged.eval().requires_grad_(False)


class _LoraView(nn.Module):
    """Computes what a peft LoRA layer computes, on the layer's own tensors (nothing is copied).

    The base output plus B(A(x)) * scaling, in the input's dtype: what training computes under bf16 autocast.
    (peft's eval mode would run the adapter in its fp32 master weights: on the H200 those small fp32 matrix
    products took 16% of generation's GPU time, benchmarks/results/recall_speed.md.) `weight` is the frozen base
    weight, for moshi code that asks a layer for its device.
    """

    def __init__(self, layer: LoraLinear) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__ in the subclass: it would allocate a weight of its own
        base = layer.get_base_layer()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.lora_A, self.lora_B = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        self.scaling = float(layer.scaling[ADAPTER])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = F.linear(x, self.lora_A.weight.to(x.dtype))
        return F.linear(x, self.weight, self.bias) + F.linear(down, self.lora_B.weight.to(x.dtype)) * self.scaling


class _LoraViewLinear(_LoraView, nn.Linear):
    """The same view typed as `nn.Linear`: moshi's streaming attention accepts only that (or its own LoRA type)
    as a projection. Not for the gating FFN, which reads an `nn.Linear`'s weight directly and skips its forward."""


def _view(layer: LoraLinear, parent: nn.Module) -> nn.Module:
    return _LoraView(layer) if isinstance(parent, ActivationGating) else _LoraViewLinear(layer)


def _viewable(model: nn.Module) -> bool:
    """Plain LoRA layers only: DoRA rescales the merged weight, which this view does not reproduce."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return all(isinstance(m, LoraLinear) and not m.use_dora.get(ADAPTER, False)
               and list(m.active_adapters) == [ADAPTER] and not m.merged for m in layers)


@contextlib.contextmanager
def generation_lm(model: nn.Module) -> Iterator[LMModel]:
    """The trained model as a plain LMModel for `LMGen`, for the duration of the block.

    A plain LoRA model lends its own LMModel with every peft layer swapped for a `_LoraView` (no weight is copied:
    a 7B model would need another 15 GB), and gets its peft layers back on exit. DoRA models generate from
    a merged copy, which is dropped on exit. A model without adapters is used as it is.
    """
    layers = [(name, m) for name, m in base_lm(model).named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        yield base_lm(model)
        return
    if not _viewable(model):
        merged = merged_copy(model)
        try:
            yield merged
        finally:
            del merged
        return
    lm = base_lm(model)
    swapped = []
    try:
        for name, layer in layers:
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name)
            setattr(parent, child, _view(layer, parent))
            swapped.append((parent, child, layer))
        yield lm
    finally:
        for parent, child, layer in swapped:
            setattr(parent, child, layer)


def _moshi_lora_tensors(lm: LMModel, rank: int) -> dict[str, torch.Tensor]:
    """peft's adapter under moshi's key names, zero A/B for uncovered Linears, trained embeddings in full."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, LoraLayer):
                tensors[f"{path}.lora_A.weight"] = child.lora_A[ADAPTER].weight
                tensors[f"{path}.lora_B.weight"] = child.lora_B[ADAPTER].weight
            elif isinstance(child, ModulesToSaveWrapper):
                for key, value in child.modules_to_save[ADAPTER].state_dict().items():
                    tensors[f"{path}.{key}"] = value
            elif isinstance(child, nn.Linear):
                w = child.weight
                tensors[f"{path}.lora_A.weight"] = w.new_zeros(rank, child.in_features)
                tensors[f"{path}.lora_B.weight"] = w.new_zeros(child.out_features, rank)
            else:
                walk(child, f"{path}.")

    walk(lm, "")
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _lora_scaling(lm: LMModel) -> float:
    scalings = {m.scaling[ADAPTER] for m in lm.modules() if isinstance(m, LoraLayer)}
    if len(scalings) != 1:  # moshi has a single lora_scaling for every layer
        raise ValueError(f"expected one LoRA scaling for all layers, found {sorted(scalings)}")
    return float(scalings.pop())


def _save_peft(model: PeftModel, target: Path) -> None:
    """save_pretrained into a temp dir, then rename: a killed export never leaves a partial peft/ folder."""
    tmp = temp_path_beside(target)
    tmp.mkdir()  # mkdir's mode (0o777 less the umask), not mkdtemp's private 0o700
    try:
        model.save_pretrained(str(tmp))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass(frozen=True)
class AdapterExport:
    kind: str  # "lora": moshi_weights is lora.safetensors; "merged": moshi_weights is a full model.safetensors
    moshi_weights: Path
    moshi_config: Path
    peft_dir: Path | None
    merged_weights: Path | None = None  # merged/model.safetensors of a LoRA export with also_merged


def export_adapter(model: nn.Module, out_dir: Path, base_config: dict[str, Any],
                   mimi_config: dict[str, Any] | None = None, also_merged: bool = False) -> AdapterExport:
    """Write the trained adapter (see module doc). `base_config` is the base checkpoint's LM config
    (`LoadedModel.base_config`); moshi's config.json must repeat it because `--config-path` replaces it.
    `also_merged`: a LoRA export also gets `merged/` (merged weights and their config).

    A base whose Mimi is not moshi's default names its Mimi config (`mimi_config_name`), which moshi.server would
    fetch from the Hub (it takes no path for it). The export writes `mimi_config` (the base's, parsed) beside
    each config.json and names it by absolute `file://` path, the one form moshi resolves locally: the server
    then starts offline, on local files only (move the run directory and re-export to keep it so).
    """
    out_dir = Path(out_dir)
    config = {k: v for k, v in base_config.items() if k not in _LORA_KEYS and k != MIMI_CONFIG_KEY}
    peft_dir = None
    if isinstance(model, PeftModel):
        peft_dir = out_dir / "peft"
        peft_dir.parent.mkdir(parents=True, exist_ok=True)
        _save_peft(model, peft_dir)
    lora_cfg = model.peft_config[ADAPTER] if isinstance(model, PeftModel) else None
    merged = None
    if lora_cfg is not None and not lora_cfg.use_dora:
        lm = base_lm(model)
        tensors = _moshi_lora_tensors(lm, lora_cfg.r)
        config |= {"lora": True, "lora_rank": lora_cfg.r, "lora_scaling": _lora_scaling(lm)}
        weights, config_path = _write_moshi(out_dir / "moshi", "lora.safetensors", tensors, config, mimi_config)
        kind = "lora"
        if also_merged:
            merged, _ = _write_moshi(out_dir / "merged", "model.safetensors", _merged_state(model),
                                     {k: v for k, v in config.items() if k not in _LORA_KEYS}, mimi_config)
    else:
        weights, config_path = _write_moshi(out_dir / "moshi", "model.safetensors", _merged_state(model), config,
                                            mimi_config)
        kind = "merged"
    return AdapterExport(kind=kind, moshi_weights=weights, moshi_config=config_path, peft_dir=peft_dir,
                         merged_weights=merged)


def _merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.contiguous().cpu() for k, v in merged_copy(model).state_dict().items()}


def _write_moshi(folder: Path, weights_name: str, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                 mimi_config: dict[str, Any] | None) -> tuple[Path, Path]:
    """One moshi-format folder: weights, config.json and (for a non-default Mimi) the Mimi config it names."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = atomic_write_bytes(folder / weights_name, safetensors_bytes(tensors))
    if mimi_config is not None:
        mimi_path = atomic_write_json(folder / MIMI_CONFIG_FILE, mimi_config)
        config = config | {MIMI_CONFIG_KEY: local_file_name(mimi_path)}
    return weights, atomic_write_json(folder / "config.json", config)
