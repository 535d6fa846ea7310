"""Exposures per fact: how often training states each fact, the dose `train.exposures_per_fact` sets.

A conversation states facts (dataset/facts.py records them): each Q/A turn its item's facts, each narrated
sentence the fact it tells, so every phrasing, voice, restatement and Q/A turn counts as one exposure. An exposure is
one statement in a row the loop trains on. The dose is the *mean* over the trained facts (those that some training
conversation states), not the minimum: a shuffled epoch that ends mid-way gives some facts one exposure more than
others, and the minimum would then jump by whole epochs while the mean follows the steps.

`train.exposures_per_fact=N` sets the steps before training: the fewest whose rows (the stream's own epochs, replayed
from the start without their codes) bring the mean to N. Every run records the mean it measured from the rows the
loop drew (`data/exposures_per_fact`) and the number of trained facts (`data/trained_facts`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Optional

from torch import nn

from moshi_knowledge.codes.samples import FRAME_RATE, ConversationCodes
from moshi_knowledge.codes.stream import StreamSpec
from moshi_knowledge.errors import UserError
from moshi_knowledge.tracking.contract import EXPOSURES_PER_FACT, TRAINED_FACTS
from moshi_knowledge.train.batches import TrainStream
from moshi_knowledge.train.config import TrainConfig

log = logging.getLogger(__name__)

FactMap = Mapping[str, Sequence[str]]  # conversation id -> the facts it states, one entry per statement


@dataclass(frozen=True)
class FactIndex:
    """The facts each training conversation states, by its index in the training samples."""

    per_sample: tuple[tuple[str, ...], ...]
    trained: int  # distinct facts among them

    @classmethod
    def build(cls, samples: Sequence[ConversationCodes], facts: Optional[FactMap]) -> Optional["FactIndex"]:
        """None when the dataset does not say what some training conversation states (an imported one), or when
        no conversation states a fact: the dose is then unknown, not zero."""
        if facts is None or any(s.id not in facts for s in samples):
            return None
        per_sample = tuple(tuple(facts[s.id]) for s in samples)
        trained = len({f for stated in per_sample for f in stated})
        return cls(per_sample, trained) if trained else None

    def per_epoch(self) -> float:
        """Mean exposures per trained fact in one epoch (every conversation once)."""
        return sum(len(stated) for stated in self.per_sample) / self.trained

    def figures(self, drawn: Sequence[int]) -> dict[str, float | int]:
        """The summary's data/ keys, from how many drawn rows held each conversation (TrainStream.drawn)."""
        total = sum(n * len(stated) for n, stated in zip(drawn, self.per_sample))
        return {EXPOSURES_PER_FACT: total / self.trained, TRAINED_FACTS: self.trained}


def training_stream(samples: Sequence[ConversationCodes], spec: StreamSpec, cfg: TrainConfig) -> TrainStream:
    """The stream the loop draws its rows from (one definition, so the steps computed are the steps trained)."""
    return TrainStream(samples, spec, round(cfg.seq_sec * FRAME_RATE), cfg.packing, cfg.audio_drop, cfg.seed)


def steps_for_exposures(stream: TrainStream, index: FactIndex, target: float, batch_size: int) -> int:
    """The fewest optimizer steps of `batch_size` rows after which the trained facts average `target` exposures."""
    stated = [len(s) for s in index.per_sample]
    need, total, rows, epoch = target * index.trained, 0, 0, 0
    while True:
        for placements in stream.epoch_layout(epoch):
            rows += 1
            total += sum(stated[p.sample] for p in placements)
            if total >= need:
                return -(-rows // batch_size)
        epoch += 1


def resolve_steps(cfg: TrainConfig, stream: TrainStream, index: Optional[FactIndex]) -> TrainConfig:
    """`cfg` with `max_steps` set from `exposures_per_fact` (unchanged when that is null); logs the figure."""
    dose = cfg.exposures_per_fact
    if dose is None:
        return cfg
    if index is None:
        raise UserError(f"train.exposures_per_fact={dose:g}: the dataset does not record which facts every training "
                        "conversation states (an imported dataset=moshi_finetune, or no fact in its conversations)",
                        "set train.max_steps instead, with train.exposures_per_fact=null")
    steps = steps_for_exposures(stream, index, dose, cfg.batch_size)
    if cfg.warmup_steps >= steps:
        raise UserError(f"train.warmup_steps={cfg.warmup_steps} is not below the {steps} steps that "
                        f"train.exposures_per_fact={dose:g} gives",
                        f"set train.warmup_steps below {steps} (0: no warmup), or raise train.exposures_per_fact")
    log.info("train.exposures_per_fact=%g: %d steps of %d rows (%d trained facts, %.2f exposures each per epoch of "
             "%d conversations)", dose, steps, cfg.batch_size, index.trained, index.per_epoch(), len(stream.samples))
    return replace(cfg, max_steps=steps, exposures_per_fact=None)


def fix_length(cfg: TrainConfig, samples: Sequence[ConversationCodes], facts: Optional[FactMap],
               model: nn.Module) -> TrainConfig:
    """The run's TrainConfig with its steps known, before the recall hook needs the last step."""
    if cfg.exposures_per_fact is None:
        return cfg
    stream = training_stream(samples, StreamSpec.from_lm(model), cfg)
    return resolve_steps(cfg, stream, FactIndex.build(samples, facts))
