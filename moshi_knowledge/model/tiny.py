"""A tiny random Moshi that keeps every architectural feature (17 streams, delays, depformer with weights per
step), written to disk as a real checkpoint folder and loaded back through the same path as model=local.

Folder layout (the names are also in config.json, as in a Hub repo, so the folder could be uploaded as one):
    model.safetensors   LM weights (fp32)
    mimi.safetensors    tiny Mimi with fitted codebooks (mimi_fit.py)
    mimi_config.json    its constructor config; moshi's `from_hf_repo(mimi_config_path=...)` reads it
    tokenizer.model     sentencepiece trained on the run's text (unk 0, bos 1, eos 2, pad 3, byte fallback, "\\n")
    config.json         LM kwargs for `LMModel(**...)`, plus moshi's file-name keys
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sentencepiece as spm
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from safetensors.torch import save as safetensors_bytes

from moshi_knowledge.errors import UserError
from moshi_knowledge.io_utils import atomic_write_bytes, atomic_write_json
from moshi_knowledge.model.load import LocalModel
from moshi_knowledge.model.mimi_fit import fit_mimi_codebooks, tiny_mimi_config
from moshi_knowledge.specs.tiny import TinySizes, TinySpec

MIMI_CONFIG_NAME = "mimi_config.json"
NAMES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "mimi.safetensors",
    "tokenizer_name": "tokenizer.model",
    "mimi_config_name": MIMI_CONFIG_NAME,
}
N_AUDIO_CODEBOOKS = 8  # per speaker; with text that makes moshi's 17 streams


def train_tokenizer(text: str, vocab_size: int) -> bytes:
    """A sentencepiece model with Moshi's special ids; "\\n" is a user symbol, or encoding it gives nothing."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError("model=tiny: the text to train the tokenizer on is empty", "run the story stage first")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        hard_vocab_limit=False,
        num_threads=1,  # deterministic output, so the built folder is reproducible
        minloglevel=2,
    )
    return model.getvalue()


def tiny_lm_config(sizes: TinySizes, text_card: int) -> dict[str, Any]:
    """moshi's 7B kwargs with small widths: n_q, dep_q, delays, gating, norms and depformer layout unchanged."""
    overrides = {k: getattr(sizes, k) for k in ("dim", "num_heads", "num_layers", "context", "card")}
    overrides |= {k: getattr(sizes, k) for k in asdict(sizes) if k.startswith("depformer_")}
    return dict(loaders._lm_kwargs, text_card=text_card, **overrides)


def tiny_lm(config: dict[str, Any], seed: int) -> LMModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LMModel(**config, dtype=torch.float32)


def tiny_mimi(sizes: TinySizes, seed: int) -> tuple[MimiModel, dict[str, Any]]:
    config = tiny_mimi_config(
        sizes.mimi_dim, sizes.mimi_filters, sizes.mimi_layers, sizes.mimi_codebook_dim, sizes.card, N_AUDIO_CODEBOOKS
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return loaders.get_mimi(None, config, num_codebooks=N_AUDIO_CODEBOOKS), config


def build_tiny_checkpoint(
    out_dir: Path, text: str, audio: Sequence[np.ndarray], seed: int = 0, **sizes: int
) -> Path:
    """Write a tiny checkpoint folder (see module doc) and return it.

    `text` trains the tokenizer; `audio` (mono float clips at 24 kHz, ideally speech) fits the Mimi codebooks.
    `sizes` override `TinySizes` fields. The same inputs and seed give byte-identical files.
    """
    spec = TinySizes(**sizes)
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(text, spec.vocab_size)
    text_card = spm.SentencePieceProcessor(model_proto=tokenizer).vocab_size()
    lm_config = tiny_lm_config(spec, text_card)
    lm = tiny_lm(lm_config, seed)
    mimi, mimi_config = tiny_mimi(spec, seed)
    fit_mimi_codebooks(mimi, audio, seed)
    atomic_write_bytes(out_dir / NAMES["tokenizer_name"], tokenizer)
    atomic_write_bytes(out_dir / NAMES["moshi_name"], safetensors_bytes(lm.state_dict()))
    atomic_write_bytes(out_dir / NAMES["mimi_name"], safetensors_bytes(mimi.state_dict()))
    atomic_write_json(out_dir / MIMI_CONFIG_NAME, mimi_config)
    atomic_write_json(out_dir / "config.json", {**lm_config, **NAMES, "model_id": {"tiny_seed": seed}})
    return out_dir


def _first_seconds(audio: Sequence[np.ndarray], seconds: float) -> list[np.ndarray]:
    budget = int(seconds * loaders.SAMPLE_RATE)
    clips = []
    for clip in audio:
        if budget <= 0:
            break
        clips.append(np.asarray(clip, dtype=np.float32)[:budget])
        budget -= len(clips[-1])
    return clips


class TinyModel:
    """model=tiny: the model stage calls `build` into its cache folder; `load_model(self, folder)` loads it back."""

    needs_build: ClassVar[bool] = True

    def __init__(self, **settings: Any) -> None:
        """`settings`: TinySpec's fields (the sizes, seed, fit_seconds, device, dtype), each defaulting to its own."""
        spec = TinySpec(**settings)
        self.seed, self.device, self.dtype = spec.seed, spec.device, spec.dtype
        self.fit_seconds = spec.fit_seconds  # more speech than this adds little to the fit and costs encode time
        self.sizes = spec.sizes()

    def build(self, out_dir: Path, text: str, audio: Sequence[np.ndarray]) -> Path:
        clips = _first_seconds(audio, self.fit_seconds)
        return build_tiny_checkpoint(out_dir, text, clips, seed=self.seed, **asdict(self.sizes))

    def checkpoint_info(self, checkpoint_dir: Path | None) -> loaders.CheckpointInfo:
        if checkpoint_dir is None:
            raise UserError(
                "model=tiny has no checkpoint folder to load", "run the model stage first; it builds the folder"
            )
        return LocalModel.from_folder(checkpoint_dir).checkpoint_info()
