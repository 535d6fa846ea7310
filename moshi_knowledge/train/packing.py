"""Which conversations share a training row, and where each starts.

Packing (`packing=True`) fills rows of `seq_frames` first-fit in the given order; consecutive conversations in a
row are separated by `gap` frames (see codes.stream.StreamSpec.gap for why). Without packing every conversation gets its
own row, padded, as moshi-finetune does. A conversation is never cut: one longer than a row is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from moshi_knowledge.codes.samples import FRAME_RATE, ConversationCodes
from moshi_knowledge.errors import UserError


@dataclass(frozen=True)
class Placement:
    sample: int  # index into the sample list
    offset: int  # first frame in the row


def pack_rows(
    samples: Sequence[ConversationCodes], order: Sequence[int], seq_frames: int, gap: int, packing: bool
) -> list[list[Placement]]:
    rows: list[list[Placement]] = []
    used: list[int] = []  # frames taken in each row, gaps included
    for index in order:
        length = samples[index].n_frames
        if length > seq_frames:
            raise UserError(
                f"conversation {samples[index].id} lasts {length / FRAME_RATE:.1f} s, longer than "
                f"train.seq_sec={seq_frames / FRAME_RATE:g}",
                "raise train.seq_sec or shorten conversations (layout.max_duration_sec)",
            )
        target = None
        if packing:
            target = next((r for r, u in enumerate(used) if u + gap + length <= seq_frames), None)
        if target is None:
            rows.append([Placement(index, 0)])
            used.append(length)
        else:
            rows[target].append(Placement(index, used[target] + gap))
            used[target] += gap + length
    return rows
