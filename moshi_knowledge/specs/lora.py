"""What lora=... sets: the target presets, LoraSpec and FullFinetune, each with the config schema of its
option registered from here. Free of torch, so a config composes (and the shell completes) without importing
it; model/lora.py applies the spec.

Target presets are regexes over module names (peft full-matches a string `target_modules`), because a suffix
list like ["in_projs.0"] would catch only step 0 of the depformer's 8 per-codebook linears.
"""

from __future__ import annotations

from dataclasses import dataclass

from moshi_knowledge.errors import UserError

_LAYER = r"(transformer|depformer)\.layers\.\d+\."
_ATTN = r"self_attn\.(in|out)_projs\.\d+"
_MLP = r"gating(\.\d+)?\.linear_(in|out)"
TARGETS = {
    "attn": rf"transformer\.layers\.\d+\.{_ATTN}",
    "mlp": rf"transformer\.layers\.\d+\.{_MLP}",
    "attn_mlp": rf"transformer\.layers\.\d+\.({_ATTN}|{_MLP})",
    # every nn.Linear, the same set moshi's own LoRA (and moshi-finetune) wraps: both transformers, all 8 depformer
    # steps, the depformer input projections and the text and audio output heads
    "all": rf"{_LAYER}({_ATTN}|{_MLP})|depformer_in\.\d+|linears\.\d+|text_linear",
}


@dataclass
class LoraSpec:
    """lora=attn|mlp|attn_mlp|all. `train_embeddings` also trains every token embedding in full;
    `export_merged` also exports the base with the adapter merged in (see export_adapter)."""

    targets: str = "attn_mlp"  # a preset of TARGETS
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    use_rslora: bool = False  # scale by alpha/sqrt(rank) instead of alpha/rank
    use_dora: bool = False  # DoRA; the moshi-format export is then merged full weights
    train_embeddings: bool = False  # also train every token embedding in full (peft modules_to_save)
    export_merged: bool = False

    def __post_init__(self) -> None:
        checks = [
            ("targets", self.targets in TARGETS, f"one of {', '.join(TARGETS)}"),
            ("rank", self.rank >= 1, "a positive rank, e.g. 16"),
            ("alpha", self.alpha > 0, "a positive scale, e.g. 32"),
            ("dropout", 0.0 <= self.dropout < 1.0, "a fraction in [0, 1)"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UserError(f"lora.{name}={getattr(self, name)!r} is invalid", f"set lora.{name} to {want}")


@dataclass
class FullFinetune:
    """lora=full: every parameter is trained."""


@dataclass
class LoraSchema(LoraSpec):
    """The schema of lora=attn|mlp|attn_mlp|all: LoraSpec's own fields and defaults."""

    _target_: str = "moshi_knowledge.specs.lora.LoraSpec"


@dataclass
class FullFinetuneSchema:
    _target_: str = "moshi_knowledge.specs.lora.FullFinetune"


SCHEMAS = {("lora", "lora_schema"): LoraSchema, ("lora", "full_schema"): FullFinetuneSchema}
