"""Moshi's text stream ("inner monologue") at 12.5 Hz, built from word times the way moshi-finetune builds it.

Conventions (moshi-finetune's interleaver with `keep_main_only`, read, not copied):
- only Moshi's words (SPEAKER_MAIN) and words of positive duration count; each word is tokenized on its own;
- every frame holds the padding id, except that a word's tokens go one per frame from the first frame its start
  time falls in (frame t covers [t/12.5, (t+1)/12.5));
- the frame just before a word's first token becomes end-of-padding, if that frame is padding;
- when a word starts while the previous word still has tokens left, those leftovers are dropped (moshi-finetune's
  default). `shift_overflow=True` queues them instead, so no answer token is ever lost.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Sequence

import torch

from moshi_knowledge.codes.samples import FRAME_RATE
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SpeakerWord

Tokenize = Callable[[str], list[int]]  # e.g. sentencepiece.SentencePieceProcessor().encode


def speaker_words(alignments: Iterable[Sequence]) -> list[SpeakerWord]:
    """moshi-finetune's `[word, [start, end], speaker]` alignment entries as SpeakerWord."""
    return [SpeakerWord(str(w), float(ts[0]), float(ts[1]), str(spk)) for w, ts, spk in alignments]


def text_stream(
    words: Sequence[SpeakerWord],
    tokenize: Tokenize,
    n_frames: int,
    pad_id: int,
    end_pad_id: int,
    speaker: str = MOSHI_SPEAKER,
    shift_overflow: bool = False,
) -> torch.Tensor:
    """The [n_frames] int64 text tokens for one conversation."""
    spoken = sorted((w for w in words if w.speaker == speaker and w.end > w.start), key=lambda w: w.start)
    out = [pad_id] * n_frames
    pending: deque[int] = deque()
    next_word = 0
    for t in range(n_frames):
        while next_word < len(spoken) and spoken[next_word].start * FRAME_RATE < t + 1:
            tokens = tokenize(spoken[next_word].word.strip())
            pending = deque([*pending, *tokens]) if shift_overflow else deque(tokens)
            next_word += 1
        if pending:
            if t > 0 and out[t - 1] == pad_id:
                out[t - 1] = end_pad_id
            out[t] = pending.popleft()
    return torch.tensor(out, dtype=torch.long)
