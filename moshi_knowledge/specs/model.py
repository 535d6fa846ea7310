"""What model=local|moshiko|moshika sets: where the checkpoint is and where it loads, with the schemas of those
options registered from here. Free of torch, so a config composes without importing it; model/load.py loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)  # keyword-only, so a source's required fields may follow these defaults
class Placement:
    """Where any model= source loads."""

    device: str = "auto"  # cuda if available, else cpu
    dtype: str = "auto"  # bf16 on GPU, fp32 on CPU


@dataclass
class HubSpec(Placement):
    """A Hub repo such as kyutai/moshiko-pytorch-bf16, fetched (or taken from the HF cache) by moshi's loader."""

    hf_repo: str


@dataclass
class LocalSpec(Placement):
    """A checkpoint on disk: `dir`, a folder laid out as the Hub repo (a copy of kyutai/moshiko-pytorch-bf16), and/or
    each file's path, which overrides the folder's. Without a config.json (neither `config_path` nor one in `dir`)
    moshi's built-in Moshi 7B config applies, as for the Hub repos that have none."""

    dir: str | None = None
    moshi_weights: str | None = None
    mimi_weights: str | None = None
    tokenizer: str | None = None
    config_path: str | None = None
    mimi_config_path: str | None = None
    lora_weights: str | None = None


@dataclass
class HubModelSchema(HubSpec):
    _target_: str = "moshi_knowledge.model.load.HubModel"


@dataclass
class LocalModelSchema(LocalSpec):
    _target_: str = "moshi_knowledge.model.load.LocalModel"


SCHEMAS = {("model", "hub_schema"): HubModelSchema, ("model", "local_schema"): LocalModelSchema}
