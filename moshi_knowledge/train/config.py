"""Training options, as one dataclass: `conf/train/*.yaml` instantiates it (`_target_`), tests build it directly.

Its schema, registered from here, is the dataclass itself plus the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moshi_knowledge.errors import UserError


@dataclass
class TrainConfig:
    """Every knob of the loop. Defaults follow moshi-finetune's published recipe unless noted."""

    # optimizer steps; null when exposures_per_fact sets them from the data
    max_steps: Optional[int] = 200
    # the run's length as a dose: steps until the trained facts are heard this many times on average (mean over
    # the facts the training conversations state, every phrasing, restatement and Q/A turn counted; train/exposures.py)
    exposures_per_fact: Optional[float] = None
    batch_size: int = 8  # rows per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    seq_sec: float = 100.0  # length of one training row; moshi-finetune's duration_sec is 100 s in its recipe
    packing: bool = True  # several whole conversations per row (False: one conversation padded per row)
    lr: float = 1e-4
    schedule: str = "cosine"  # cosine | one_cycle | constant
    warmup_steps: int = 10  # cosine: linear warmup; one_cycle: the rising phase
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    max_grad_norm: float = 1.0
    text_weight: float = 1.0  # loss = text_weight * text CE + audio CE
    text_padding_weight: float = 0.5  # weight of pad / end-of-padding text targets
    first_codebook_weight_multiplier: float = 1.0
    # fraction of answer turns whose Moshi audio becomes the zero token (docs/moshi.md: training and scoring)
    audio_drop: float = 0.5
    eval_every: int = 50  # 0: evaluate only at the end
    eval_at_start: bool = True  # one evaluation before the first step: the base model's figures
    eval_batch_size: Optional[int] = None  # None: batch_size
    log_every: int = 1
    ckpt_every: int = 100  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 0
    precision: str = "bf16"  # bf16 | fp32; bf16 autocast on CUDA only; trainable weights stay fp32
    gradient_checkpointing: bool = False
    # torch.compile every transformer layer, with FlexAttention for packed rows (train/compile.py); null: on a GPU
    # unless FSDP shards the model, off on CPU
    compile: Optional[bool] = None
    # the frozen base's Linear layers under LoRA compute in float8 while training (train/fp8.py): faster compiled
    # steps on FP8 tensor cores (H100, H200); recall stays bf16. Off: a long sweep measures it first
    fp8: bool = False
    # under torchrun: ddp; fsdp (weights, gradients and optimizer state sharded: full finetuning of the 7B model);
    # auto = fsdp when every parameter trains, else ddp
    distributed: str = "auto"  # auto | ddp | fsdp

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]  # OmegaConf gives a list
        checks = [
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "a positive number of optimizer steps"),
            ("exposures_per_fact", self.exposures_per_fact is None or self.exposures_per_fact > 0,
             "a positive number of exposures per trained fact, e.g. 10 (or null: train.max_steps sets the length)"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("seq_sec", self.seq_sec > 0, "a positive number of seconds"),
            ("lr", self.lr >= 0, "a positive learning rate, e.g. 1e-4 (0: weights never change)"),
            ("warmup_steps", self.warmup_steps >= 0, "0 or a positive number of steps"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "a fraction in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "0 or a positive number"),
            ("max_grad_norm", self.max_grad_norm > 0, "a positive gradient norm"),
            ("eval_every", self.eval_every >= 0, "0 (only at the end) or a positive number of steps"),
            ("eval_batch_size", self.eval_batch_size is None or self.eval_batch_size >= 1, "null or at least 1"),
            ("log_every", self.log_every >= 1, "at least 1"),
            ("ckpt_every", self.ckpt_every >= 0, "0 (only the final checkpoint) or a positive number of steps"),
            ("audio_drop", 0.0 <= self.audio_drop <= 1.0, "a fraction in [0, 1]"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, "at least 1"),
            ("schedule", self.schedule in ("cosine", "one_cycle", "constant"), "cosine, one_cycle or constant"),
            ("precision", self.precision in ("bf16", "fp32"), "bf16 or fp32"),
            ("distributed", self.distributed in ("auto", "ddp", "fsdp"), "auto, ddp or fsdp"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UserError(f"train.{name}={getattr(self, name)!r} is invalid", f"set train.{name} to {want}")
        self._check_length()

    def _check_length(self) -> None:
        """One setting says how long a run trains: two would disagree, none leaves it unknown."""
        if self.max_steps is not None and self.exposures_per_fact is not None:
            raise UserError(f"train.max_steps={self.max_steps} and "
                            f"train.exposures_per_fact={self.exposures_per_fact:g} both set how long the run trains",
                            "add train.max_steps=null to let exposures_per_fact set the steps from the data, or "
                            "set train.exposures_per_fact=null to keep max_steps")
        if self.max_steps is None and self.exposures_per_fact is None:
            raise UserError("train.max_steps and train.exposures_per_fact are both null: nothing sets the run's length",
                            "set train.max_steps (optimizer steps) or train.exposures_per_fact (a dose per fact)")


@dataclass
class TrainSchema(TrainConfig):
    _target_: str = "moshi_knowledge.train.config.TrainConfig"


SCHEMAS = {("train", "default_schema"): TrainSchema}
