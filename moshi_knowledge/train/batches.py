"""Model-ready batches: the endless training stream (resumable by position) and the fixed eval set.

How a row is laid out, and why no conversation sees another:
- padding frames hold the zero token (-1): no embedding, no loss; padding only ever follows real frames, and the
  LM is causal, so it cannot change any prediction (a test checks this);
- a packed conversation is preceded by `gap` frames of the LM's initial tokens, so that after moshi's own delaying
  its first positions read exactly what they read at the start of a sequence;
- `segments` numbers the conversations of each row; attention.segment_attention turns it into a block-diagonal
  mask, because LMModel.forward takes no attention mask (RoPE is relative, so positions need no reset);
- the loss mask keeps a conversation's own frames only, minus the last `delay` frames of each delayed codebook,
  whose prediction would read the next frame (moshi masks the same frames at the end of a sequence).
Together, a packed conversation gets the same logits as the conversation alone (tested).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from moshi_knowledge.codes.samples import N_STREAMS, ZERO_TOKEN, ConversationCodes, drop_answer_audio
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.errors import UserError
from moshi_knowledge.train.packing import Placement, pack_rows

PackedRow = list[tuple[torch.Tensor, int]]  # (codes [17, L], offset) per conversation in the row
N_PREDICTED = 9  # text + Moshi's 8 codebooks


@dataclass
class Batch:
    codes: torch.Tensor  # [B, 17, T] int64
    loss_mask: torch.Tensor  # [B, 9, T] bool: text + Moshi's 8 codebooks
    segments: Optional[torch.Tensor]  # [B, T] int64, or None when no row holds two conversations
    useful_frames: int  # frames that belong to a conversation

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def to(self, device: torch.device | str) -> "Batch":
        seg = None if self.segments is None else self.segments.to(device, non_blocking=True)
        return replace(self, codes=self.codes.to(device, non_blocking=True),
                       loss_mask=self.loss_mask.to(device, non_blocking=True), segments=seg)


def collate(rows: Sequence[PackedRow], spec: StreamSpec, seq_frames: int) -> Batch:
    n = len(rows)
    codes = torch.full((n, N_STREAMS, seq_frames), ZERO_TOKEN, dtype=torch.long)
    inside = torch.zeros((n, N_PREDICTED, seq_frames), dtype=torch.bool)
    segments = torch.zeros((n, seq_frames), dtype=torch.long)
    predicted_delays = spec.delays[:N_PREDICTED]
    useful = 0
    for b, row in enumerate(rows):
        for k, (conv, offset) in enumerate(row):
            length = conv.shape[1]
            codes[b, :, offset:offset + length] = conv
            if offset > 0:
                codes[b, :, offset - spec.gap:offset] = spec.initial_frames()
                segments[b, offset:] = k  # the gap before it stays with the previous conversation
            for s, delay in enumerate(predicted_delays):
                inside[b, s, offset:offset + length - delay] = True
            useful += length
    loss_mask = inside & (codes[:, :N_PREDICTED] != ZERO_TOKEN)
    packed = any(len(row) > 1 for row in rows)
    return Batch(codes, loss_mask, segments if packed else None, useful)


def _rows(codes: Sequence[torch.Tensor], layout: list[list[Placement]]) -> list[PackedRow]:
    return [[(codes[p.sample], p.offset) for p in row] for row in layout]


def _check_samples(samples: Sequence[ConversationCodes], what: str) -> None:
    if not samples:
        raise UserError(f"the {what} set has no conversations", "check the dataset stage's output and its split")


class TrainStream:
    """An endless, deterministic sequence of packed rows.

    Epoch e is a shuffle of every conversation seeded by (seed, e), with its own audio_drop draw, packed. Batches
    run on across epoch ends, so every step gets a full batch however small the data. `position` (epoch, row) is
    all a checkpoint needs to continue exactly. `drawn[i]` counts the rows handed out that hold conversation i
    (the measured exposures of train/exposures.py); a checkpoint keeps it too.
    """

    def __init__(self, samples: Sequence[ConversationCodes], spec: StreamSpec, seq_frames: int, packing: bool,
                 audio_drop: float, seed: int) -> None:
        _check_samples(samples, "training")
        self.samples, self.spec, self.seq_frames = list(samples), spec, seq_frames
        self.packing, self.audio_drop, self.seed = packing, audio_drop, seed
        self.position: tuple[int, int] = (0, 0)
        self.drawn: list[int] = [0] * len(self.samples)
        self._epoch: tuple[int, list[list[Placement]], list[PackedRow]] | None = None

    def _shuffled(self, epoch: int) -> tuple[list[int], random.Random]:
        """Epoch `epoch`'s order, and its generator where the audio_drop draws continue."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.samples)))
        rng.shuffle(order)
        return order, rng

    def epoch_layout(self, epoch: int) -> list[list[Placement]]:
        """Which conversations each row of epoch `epoch` holds: the packing alone, no codes (cheap to replay)."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        order, _ = self._shuffled(epoch)
        return pack_rows(self.samples, order, self.seq_frames, self.spec.gap, self.packing)

    def epoch_rows(self, epoch: int) -> list[PackedRow]:
        if self._epoch is None or self._epoch[0] != epoch:
            order, rng = self._shuffled(epoch)
            codes = [s.codes for s in self.samples]
            for i in order:  # drawn in shuffled order, so each epoch drops different turns
                codes[i] = drop_answer_audio(self.samples[i], self.audio_drop, rng)
            layout = pack_rows(self.samples, order, self.seq_frames, self.spec.gap, self.packing)
            self._epoch = (epoch, layout, _rows(codes, layout))
        return self._epoch[2]

    def next_rows(self, n: int) -> list[PackedRow]:
        """The next `n` rows of the global stream; advances `position` and `drawn`."""
        epoch, row = self.position
        out: list[PackedRow] = []
        while len(out) < n:
            rows = self.epoch_rows(epoch)
            take = rows[row:row + n - len(out)]
            for placements in self.epoch_layout(epoch)[row:row + len(take)]:
                for p in placements:
                    self.drawn[p.sample] += 1
            out.extend(take)
            row += len(take)
            if row >= len(rows):
                epoch, row = epoch + 1, 0
        self.position = (epoch, row)
        return out

    def replay_drawn(self) -> list[int]:
        """`drawn` recounted from `position`: what the rows before it held (a checkpoint written without it)."""
        drawn = [0] * len(self.samples)
        epoch, row = self.position
        for e in range(epoch + 1):
            for placements in self.epoch_layout(e)[:row if e == epoch else None]:
                for p in placements:
                    drawn[p.sample] += 1
        return drawn


def eval_batches(samples: Sequence[ConversationCodes], spec: StreamSpec, seq_frames: int, batch_size: int,
                 packing: bool) -> list[Batch]:
    """The fixed eval set: built once, in dataset order, no audio_drop; the last batch may be smaller.

    A list, not a generator: every evaluation sees the very same batches (moshi-finetune's single-pass generator
    is why its eval loss turned NaN after the first evaluation).
    """
    _check_samples(samples, "eval")
    layout = pack_rows(samples, range(len(samples)), seq_frames, spec.gap, packing)
    rows = _rows([s.codes for s in samples], layout)
    return [collate(rows[i:i + batch_size], spec, seq_frames) for i in range(0, len(rows), batch_size)]
