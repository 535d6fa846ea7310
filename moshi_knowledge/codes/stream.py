"""What batches, the loss and recall prompts need to know about the LM: its delays and its special token ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moshi_knowledge.codes.samples import N_STREAMS


def find_lm(model: nn.Module) -> nn.Module:
    """The moshi LMModel inside DDP / peft wrappers (anything with `delays` and `forward_text`)."""
    for module in model.modules():
        if hasattr(module, "delays") and hasattr(module, "forward_text"):
            return module
    raise TypeError(f"no moshi LMModel inside {type(model).__name__}")


@dataclass(frozen=True)
class StreamSpec:
    """What batches and the loss need to know about the LM: delays, initial-token ids, text padding ids."""

    delays: tuple[int, ...]
    card: int
    text_card: int
    pad_id: int = 3
    end_pad_id: int = 0

    @classmethod
    def from_lm(cls, model: nn.Module) -> "StreamSpec":
        lm = find_lm(model)
        return cls(tuple(int(d) for d in lm.delays), int(lm.card), int(lm.text_card),
                   int(lm.text_padding_token_id), int(lm.end_of_text_padding_id))

    @property
    def gap(self) -> int:
        """Frames between packed conversations: one more than the largest delay, so that after moshi's own
        delaying a packed conversation's first positions read what they read at the start of a sequence."""
        return max(self.delays) + 1

    def initial_frames(self) -> torch.Tensor:
        frame = torch.full((N_STREAMS, self.gap), self.card, dtype=torch.long)
        frame[0] = self.text_card
        return frame
