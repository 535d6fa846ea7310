"""What model=tiny sets: the tiny model's sizes and how the model stage builds it, with the schema of the
option registered from here. Free of torch, so a config composes without importing it; model/tiny.py builds.

Not frozen: a structured config made from a frozen dataclass is read-only, and sizes are overridden on the command
line (model.dim=256).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from moshi_knowledge.specs.model import Placement


@dataclass
class TinySizes:
    """Widths of the tiny LM (~5 M params at card 1024) and tiny Mimi (encodes ~200x real time on one CPU core)."""

    dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    context: int = 500
    depformer_dim: int = 64
    depformer_num_heads: int = 4
    depformer_num_layers: int = 2
    depformer_dim_feedforward: int = 264
    card: int = 1024  # Mimi bins = LM audio vocabulary
    vocab_size: int = 1000  # a soft limit: a short text gives fewer pieces, and text_card follows the tokenizer
    mimi_dim: int = 64
    mimi_filters: int = 8
    mimi_layers: int = 1
    mimi_codebook_dim: int = 32


@dataclass
class TinySpec(TinySizes, Placement):
    """model=tiny: the sizes, plus the build's seed, the seconds of speech the Mimi codebooks are fitted to, and
    where the model loads."""

    seed: int = 0
    fit_seconds: float = 300.0

    def sizes(self) -> TinySizes:
        return TinySizes(**{f.name: getattr(self, f.name) for f in fields(TinySizes)})


@dataclass
class TinyModelSchema(TinySpec):
    _target_: str = "moshi_knowledge.model.tiny.TinyModel"


SCHEMAS = {("model", "tiny_schema"): TinyModelSchema}
