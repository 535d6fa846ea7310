"""The tokenize stage: Mimi-encode every dataset conversation once into [17, T] codes, so training never re-encodes.

Row 0 is Moshi's text stream built from the alignments (moshi-finetune's conventions, `text_stream`), rows 1-8
the left channel's (Moshi's) codes, rows 9-16 the right channel's (the user's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from moshi_knowledge.dataset.format import read_alignments, read_conversations_index, read_stereo
from moshi_knowledge.io_utils import atomic_write_json, read_json
from moshi_knowledge.model.load import LoadedModel
from moshi_knowledge.train.samples import ConversationCodes, turn_spans
from moshi_knowledge.train.text_stream import text_stream

INDEX = "index.json"


@torch.no_grad()
def encode_dataset(loaded: LoadedModel, dataset_dir: Path, out: Path) -> None:
    """Write `<split>/<conversation id>.pt` (ConversationCodes) for every conversation, and `index.json`."""
    lm, mimi = loaded.lm, loaded.mimi
    device = next(mimi.parameters()).device
    index: dict[str, list[str]] = {"train": [], "eval": []}
    for entry in tqdm(read_conversations_index(dataset_dir / "conversations.json"), desc="tokenize",
                      unit="conv", mininterval=1.0):
        wav = dataset_dir / entry.path
        left, right, _ = read_stereo(wav)
        audio = torch.from_numpy(np.stack([left, right])).to(device)[:, None]  # [2, 1, samples]
        audio_codes = mimi.encode(audio).cpu()  # [2, 8, frames]
        n_frames = audio_codes.shape[-1]
        text = text_stream(read_alignments(wav.with_suffix(".json")), loaded.tokenizer.encode, n_frames,
                           pad_id=lm.text_padding_token_id, end_pad_id=lm.end_of_text_padding_id)
        codes = torch.cat([text[None], audio_codes[0], audio_codes[1]])
        conv_id = Path(entry.path).stem
        ConversationCodes(conv_id, codes, turn_spans(entry.turns, n_frames)).save(out / entry.split / f"{conv_id}.pt")
        index[entry.split].append(conv_id)
    atomic_write_json(out / INDEX, index)


def load_split(codes_dir: Path, split: str) -> list[ConversationCodes]:
    return [ConversationCodes.load(codes_dir / split / f"{cid}.pt") for cid in read_json(codes_dir / INDEX)[split]]
