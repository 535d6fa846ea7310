"""The training loss: text_weight * text CE + audio CE, as weighted means over the frames a batch may learn from.

Terms are kept as sums (Σ weight·CE) and divided by the total weight of the whole optimizer step (all
micro-batches, all ranks), so gradient accumulation and DDP give exactly the loss of one big batch. Text targets
that are padding or end-of-padding weigh `text_padding_weight`; Moshi's first (semantic) codebook weighs
`first_codebook_weight_multiplier` (both as in moshi-finetune). Logits are NaN where the LM's masks are off, so
entries are selected by mask before the cross-entropy, never multiplied by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.train.batches import Batch


@dataclass(frozen=True)
class LossSettings:
    text_weight: float = 1.0
    text_padding_weight: float = 0.5
    first_codebook_weight_multiplier: float = 1.0


@dataclass
class LossSums:
    """Σ weight·CE and Σ weight, for text and audio: they add across micro-batches and ranks."""

    text_ce: torch.Tensor
    text_w: torch.Tensor
    audio_ce: torch.Tensor
    audio_w: torch.Tensor

    def as_vector(self) -> torch.Tensor:
        return torch.stack([self.text_ce, self.text_w, self.audio_ce, self.audio_w]).detach().double()

    @staticmethod
    def means(vector: torch.Tensor, text_weight: float) -> dict[str, float]:
        """Loss figures from a summed `as_vector()`: a term with no weight at all counts as 0."""
        text_ce, text_w, audio_ce, audio_w = vector.tolist()
        text = text_ce / text_w if text_w > 0 else 0.0
        audio = audio_ce / audio_w if audio_w > 0 else 0.0
        return {"loss": text_weight * text + audio, "text_loss": text, "audio_loss": audio}


def target_weights(batch: Batch, spec: StreamSpec, settings: LossSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target weights: text [B, T] and audio [B, 8, T], zero where the batch has nothing to learn."""
    mask = batch.loss_mask.float()
    text = batch.codes[:, 0]
    is_pad = (text == spec.pad_id) | (text == spec.end_pad_id)
    text_w = mask[:, 0] * torch.where(is_pad, settings.text_padding_weight, 1.0)
    audio_w = mask[:, 1:].clone()
    audio_w[:, 0] *= settings.first_codebook_weight_multiplier
    return text_w, audio_w


def _weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
    keep = (weights > 0) & valid
    ce = F.cross_entropy(logits[keep].float(), targets[keep], reduction="none")
    return (ce * weights[keep]).sum()


def loss_sums(output, batch: Batch, spec: StreamSpec, settings: LossSettings) -> LossSums:
    """`output` is moshi's LMOutput for `batch.codes`; logits are aligned with the codes (no shift)."""
    text_w, audio_w = target_weights(batch, spec, settings)
    text_ce = _weighted_ce(output.text_logits[:, 0], batch.codes[:, 0], text_w, output.text_mask[:, 0])
    audio_ce = _weighted_ce(output.logits, batch.codes[:, 1:9], audio_w, output.mask)
    return LossSums(text_ce, text_w.sum(), audio_ce, audio_w.sum())


def step_loss(sums: LossSums, text_total: torch.Tensor, audio_total: torch.Tensor, text_weight: float) -> torch.Tensor:
    """This micro-batch's share of the step loss, given the step's total weights (clamped: 0/0 counts as 0)."""
    tiny = torch.finfo(torch.float32).tiny
    return (text_weight * sums.text_ce / text_total.clamp_min(tiny)
            + sums.audio_ce / audio_total.clamp_min(tiny))
