"""Structured-config schemas: Hydra rejects a mistyped key or a wrong type when the config is composed.

Each group option's YAML lists its schema first in its defaults (e.g. `defaults: [espeak_schema, _self_]`).
`register()` must run before composing; the app and the test fixtures call it. A light class's schema sits beside
it, read off its constructor (`specs.init_schema`), and a torch-side class's in `specs/`; this module collects
them and holds the schemas not yet moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from pydantic import BaseModel, ConfigDict, Field

from moshi_knowledge.dataset import moshi_finetune, source
from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.llm.connection import Connection
from moshi_knowledge.qa import facts
from moshi_knowledge.qa import file as file_qa
from moshi_knowledge.specs import lora, tiny
from moshi_knowledge.speech import layout, narration, narration_layout, whisperx_align
from moshi_knowledge.train.config import TrainConfig
from moshi_knowledge.world import file as file_story
from moshi_knowledge.world import procedural


@dataclass
class VoiceSchema:
    name: str = MISSING
    rate: int = 160
    pitch: int = 50


@dataclass
class EspeakTTSSchema:
    _target_: str = "moshi_knowledge.speech.espeak.EspeakTTS"
    moshi_voice: VoiceSchema = field(default_factory=VoiceSchema)
    user_voices: list[VoiceSchema] = field(default_factory=list)
    heldout_voice: VoiceSchema = field(default_factory=VoiceSchema)


SCHEMAS = {
    **procedural.SCHEMAS,
    **file_story.SCHEMAS,
    **facts.SCHEMAS,
    **file_qa.SCHEMAS,
    ("tts", "espeak_schema"): EspeakTTSSchema,
    **layout.SCHEMAS,
    **narration_layout.SCHEMAS,
    **narration.SCHEMAS,
    **source.SCHEMAS,
    **moshi_finetune.SCHEMAS,
}


def register() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)


# ---- LLM and heavyweight backends (issue 3). API keys are never config fields: they come from the env. ----

DEFAULT_PREMISE = (
    "Invent a small kingdom that never existed: its founding and founders, its rulers and their reigns "
    "with years, its cities, rivers and landmarks, its institutions, famous artifacts, wars and battles, "
    "and the creatures of its lands. Tell it as a chronicle."
)


@dataclass
class LLMStorySchema:
    _target_: str = MISSING
    model: str = MISSING
    premise: str = DEFAULT_PREMISE
    temperature: Optional[float] = 0.9
    target_words: int = 3000
    refine_passes: int = 2
    connection: Connection = field(default_factory=Connection)
    _convert_: str = "object"  # the connection node reaches the constructor as a Connection


@dataclass
class OpenAIStorySchema(LLMStorySchema):
    _target_: str = "moshi_knowledge.world.llm.OpenAIStory"
    model: str = "gpt-4.1"


@dataclass
class GeminiStorySchema(LLMStorySchema):
    _target_: str = "moshi_knowledge.world.llm.GeminiStory"
    model: str = "gemini-2.5-pro"


@dataclass
class LLMQASchema:
    _target_: str = MISSING
    model: str = MISSING
    eval_model: Optional[str] = None  # null: same as model
    temperature: Optional[float] = 0.3
    n_train: int = 100
    paraphrases: int = 3
    n_eval: int = 20
    max_attempts: int = 3
    connection: Connection = field(default_factory=Connection)
    _convert_: str = "object"
    retain: bool = True  # also ask the general-knowledge retain tier (qa/retain.py), never trained


@dataclass
class OpenAIQASchema(LLMQASchema):
    _target_: str = "moshi_knowledge.qa.llm.OpenAIQA"
    model: str = "gpt-4.1"


@dataclass
class GeminiQASchema(LLMQASchema):
    _target_: str = "moshi_knowledge.qa.llm.GeminiQA"
    model: str = "gemini-2.5-flash"
    eval_model: Optional[str] = "gemini-2.5-pro"


@dataclass
class KokoroTTSSchema:
    _target_: str = "moshi_knowledge.speech.kokoro.KokoroTTS"
    moshi_voice: VoiceSchema = field(default_factory=VoiceSchema)
    user_voices: list[VoiceSchema] = field(default_factory=list)
    heldout_voice: VoiceSchema = field(default_factory=VoiceSchema)
    repo_id: str = "hexgrad/Kokoro-82M"
    device: str = "cpu"


@dataclass
class LLMNarrationSchema:
    _target_: str = MISSING
    seed: int = MISSING
    model: str = MISSING
    restatements: int = 2  # the story's own sentence and one LLM rewrite of it
    shuffle: bool = False
    temperature: Optional[float] = 0.7
    max_attempts: int = 3
    connection: Connection = field(default_factory=Connection)
    _convert_: str = "object"


@dataclass
class OpenAINarrationSchema(LLMNarrationSchema):
    _target_: str = "moshi_knowledge.speech.narration_llm.OpenAINarration"
    model: str = "gpt-4.1"


@dataclass
class GeminiNarrationSchema(LLMNarrationSchema):
    _target_: str = "moshi_knowledge.speech.narration_llm.GeminiNarration"
    model: str = "gemini-2.5-flash"


SCHEMAS.update({
    ("story", "openai_schema"): OpenAIStorySchema,
    ("story", "gemini_schema"): GeminiStorySchema,
    ("qa", "openai_schema"): OpenAIQASchema,
    ("qa", "gemini_schema"): GeminiQASchema,
    ("narration", "openai_schema"): OpenAINarrationSchema,
    ("narration", "gemini_schema"): GeminiNarrationSchema,
    ("tts", "kokoro_schema"): KokoroTTSSchema,
    **whisperx_align.SCHEMAS,
})


@dataclass
class TrainSchema(TrainConfig):
    """The training knobs are TrainConfig's own fields; OmegaConf stores `betas` as a list."""

    _target_: str = "moshi_knowledge.train.config.TrainConfig"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class NanGuardSchema:
    _target_: str = "moshi_knowledge.train.nan_guard.NanGuard"
    policy: str = "skip"  # off | skip | rollback | halt
    lr_factor: float = 0.5
    max_consecutive: int = 3
    snapshot_every: int = 1


SCHEMAS.update({
    ("train", "default_schema"): TrainSchema,
    ("nan_guard", "nan_guard_schema"): NanGuardSchema,
})


@dataclass
class LocalModelSchema:
    _target_: str = "moshi_knowledge.model.load.LocalModel"
    moshi_weights: str = MISSING
    mimi_weights: str = MISSING
    tokenizer: str = MISSING
    config_path: Optional[str] = None
    mimi_config_path: Optional[str] = None
    lora_weights: Optional[str] = None
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class HubModelSchema:
    _target_: str = "moshi_knowledge.model.load.HubModel"
    hf_repo: str = MISSING
    device: str = "auto"
    dtype: str = "auto"


SCHEMAS.update({
    ("model", "local_schema"): LocalModelSchema,
    ("model", "hub_schema"): HubModelSchema,
})
SCHEMAS.update(tiny.SCHEMAS | lora.SCHEMAS)  # their schemas sit beside the specs they type


# ---- logger group (issue 6): where a run's metrics are mirrored besides its run directory's files ----


@dataclass
class WandbLoggerSchema:
    _target_: str = "moshi_knowledge.tracking.sinks.WandbSink"
    project: str = "moshi-knowledge"
    entity: Optional[str] = None
    mode: str = "offline"  # offline | online (needs WANDB_API_KEY or `wandb login`) | disabled
    job_type: Optional[str] = None  # null: "sweep" inside a multirun, "run" otherwise
    tags: list[str] = field(default_factory=list)  # added to the Hydra choices (story:procedural, ...)
    log_audio: int = 4  # dataset conversations uploaded as wandb.Audio
    log_adapter: bool = False  # upload the trained adapter as an artifact


@dataclass
class NoneLoggerSchema:
    _target_: str = "moshi_knowledge.tracking.sinks.NullSink"


SCHEMAS.update({
    ("logger", "wandb_schema"): WandbLoggerSchema,
    ("logger", "none_schema"): NoneLoggerSchema,
})


# ---- eval group (issue 5): knowledge recall ----


@dataclass
class EvalSchema(EvalConfig):
    """The recall-evaluation knobs are EvalConfig's own fields."""

    _target_: str = "moshi_knowledge.evaluation.config.EvalConfig"
    _convert_: str = "object"  # eval.judge_connection reaches EvalConfig as a Connection


SCHEMAS.update({("eval", "default_schema"): EvalSchema})


# ---- the root's own settings (conf/config.yaml): not a group, so pydantic checks them before the first stage ----


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ObjectiveSettings(_Strict):
    metric: str
    mode: str  # max | min, checked with the metric by tracking.contract.check_objective


class DebugSettings(_Strict):
    inject_nonfinite_at: list[Annotated[int, Field(ge=1)]] = Field(
        description="a list of optimizer steps (from 1), e.g. debug.inject_nonfinite_at=[5,6]")


class RootSettings(BaseModel):
    """The top-level keys besides the groups; a group's keys are checked by its structured schema above."""

    model_config = ConfigDict(extra="ignore", strict=True)
    seed: int
    stages: list[str] = Field(min_length=1, description="a non-empty list of stages, e.g. stages=[story,qa]")
    objective: ObjectiveSettings = Field(description="objective.metric=... objective.mode=max|min, not a string")
    debug: DebugSettings = Field(description="a node with inject_nonfinite_at (debug.inject_nonfinite_at=[5]), "
                                             "not a string")
