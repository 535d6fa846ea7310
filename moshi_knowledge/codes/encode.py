"""The tokenize stage: Mimi-encode every dataset conversation once into [17, T] codes, so training never re-encodes.

Row 0 is Moshi's text stream built from the alignments (moshi-finetune's conventions, `text_stream`), rows 1-8
the left channel's (Moshi's) codes, rows 9-16 the right channel's (the user's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from moshi.models.compression import MimiModel
from tqdm import tqdm

from moshi_knowledge.codes.samples import ConversationCodes, turn_spans
from moshi_knowledge.codes.text_stream import text_stream
from moshi_knowledge.dataset.format import read_alignments, read_conversations_index
from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.model import uncompiled
from moshi_knowledge.model.load import LoadedCodec
from moshi_knowledge.speech.audio import read_stereo

INDEX = "index.json"
SAMPLES_PER_FRAME = 1920  # Mimi: 24 kHz / 12.5 Hz
_ENCODE_BATCH = 16


@torch.no_grad()
def mimi_encode(mimi: MimiModel, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
    """Mimi codes [n_q, ceil(len / 1920)] of each mono 24 kHz waveform, on the CPU. Each waveform is encoded
    whole (batched, zero-padded at the end, which a causal codec cannot see), so the codes of a clip are the
    same here, in training data and in recall prompts."""
    device = next(mimi.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(waves), _ENCODE_BATCH):
        chunk = waves[start:start + _ENCODE_BATCH]
        batch = torch.zeros(len(chunk), 1, max(len(w) for w in chunk))
        for b, w in enumerate(chunk):
            batch[b, 0, :len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
        with uncompiled():  # Mimi's shapes must not reach the LM's compiled kernels (moshi_knowledge.model)
            codes = mimi.encode(batch.to(device)).cpu().long()
        out += [codes[b, :, :math.ceil(len(w) / SAMPLES_PER_FRAME)] for b, w in enumerate(chunk)]
    return out


@torch.no_grad()
def encode_dataset(codec: LoadedCodec, dataset_dir: Path, out: Path) -> None:
    """Write `<split>/<conversation id>.pt` (ConversationCodes) for every conversation, and `index.json`."""
    mimi = codec.mimi
    index: dict[str, list[str]] = {"train": [], "eval": []}
    for entry in tqdm(read_conversations_index(dataset_dir / "conversations.json"), desc="tokenize",
                      unit="conv", mininterval=1.0):
        wav = dataset_dir / entry.path
        left, right, _ = read_stereo(wav)
        moshi_codes, user_codes = mimi_encode(mimi, [left, right])
        n_frames = moshi_codes.shape[-1]
        text = text_stream(read_alignments(wav.with_suffix(".json")), codec.tokenizer.encode, n_frames,
                           pad_id=codec.text_padding_id, end_pad_id=codec.end_of_padding_id)
        codes = torch.cat([text[None], moshi_codes, user_codes])
        conv_id = Path(entry.path).stem
        ConversationCodes(conv_id, codes, turn_spans(entry.turns, n_frames)).save(out / entry.split / f"{conv_id}.pt")
        index[entry.split].append(conv_id)
    atomic_write_json(out / INDEX, index)


def load_split(codes_dir: Path, split: str) -> list[ConversationCodes]:
    return [ConversationCodes.load(codes_dir / split / f"{cid}.pt") for cid in read_json(codes_dir / INDEX)[split]]
