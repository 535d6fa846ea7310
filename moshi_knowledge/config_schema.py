"""Structured-config schemas: Hydra rejects a mistyped key or a wrong type when the config is composed.

Each group option's YAML lists its schema first in its defaults (e.g. `defaults: [espeak_schema, _self_]`).
`register()` must run before composing; the app and the test fixtures call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from pydantic import BaseModel, ConfigDict, Field

from moshi_knowledge.evaluation.config import EvalConfig
from moshi_knowledge.train.config import TrainConfig


@dataclass
class ProceduralStorySchema:
    _target_: str = "moshi_knowledge.world.procedural.ProceduralStory"
    seed: int = 0
    n_people: int = 24
    n_places: int = 14
    n_rivers: int = 4
    n_institutions: int = 6
    n_artifacts: int = 6
    n_battles: int = 6
    n_creatures: int = 5


@dataclass
class FileStorySchema:
    _target_: str = "moshi_knowledge.world.file.FileStory"
    path: str = MISSING


@dataclass
class FactsQASchema:
    _target_: str = "moshi_knowledge.qa.facts.FactsQA"
    seed: int = 0
    n_train: int = 100
    n_eval: int = 20
    paraphrases: int = 3
    retain: bool = True  # also ask the general-knowledge retain tier (qa/retain.py), never trained
    n_unseen: int = 20  # questions on facts never trained (the unseen_facts tier, the null)
    n_per_cause: int = 20  # trained facts asked in each of unseen_voice, unseen_wording and shifted
    shift_sec: float = 0.4  # the shifted tier: silence before a trained question's audio (other Mimi codes)


@dataclass
class FileQASchema:
    _target_: str = "moshi_knowledge.qa.file.FileQA"
    train_path: str = MISSING
    eval_path: Optional[str] = None
    n_eval: int = 20
    seed: int = 0
    retain: bool = True  # also ask the general-knowledge retain tier (qa/retain.py), never trained


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


@dataclass
class DialogueLayoutSchema:
    _target_: str = "moshi_knowledge.speech.layout.DialogueLayout"
    lead_sec: float = 0.3
    gap_sec: float = 0.4
    turn_gap_sec: float = 0.8
    max_duration_sec: float = 60.0
    max_turns: Optional[int] = None  # 1: every Q/A is its own conversation


@dataclass
class MonoDuplicateLayoutSchema:
    _target_: str = "moshi_knowledge.speech.layout.MonoDuplicateLayout"
    lead_sec: float = 0.3
    turn_gap_sec: float = 0.8
    max_duration_sec: float = 60.0
    max_turns: Optional[int] = 1  # one Q/A clip per file, as in the published attempt


@dataclass
class BuiltDatasetSchema:
    _target_: str = "moshi_knowledge.dataset.source.BuiltDataset"


@dataclass
class MoshiFinetuneDatasetSchema:
    _target_: str = "moshi_knowledge.dataset.moshi_finetune.MoshiFinetuneDataset"
    path: str = MISSING  # a folder holding one *.jsonl manifest, or the manifest


SCHEMAS = {
    ("story", "procedural_schema"): ProceduralStorySchema,
    ("story", "file_schema"): FileStorySchema,
    ("qa", "facts_schema"): FactsQASchema,
    ("qa", "file_schema"): FileQASchema,
    ("tts", "espeak_schema"): EspeakTTSSchema,
    ("layout", "dialogue_schema"): DialogueLayoutSchema,
    ("layout", "mono_duplicate_schema"): MonoDuplicateLayoutSchema,
    ("dataset", "built_schema"): BuiltDatasetSchema,
    ("dataset", "moshi_finetune_schema"): MoshiFinetuneDatasetSchema,
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
    base_url: Optional[str] = None  # an OpenAI-compatible server (vLLM, ...) or a Gemini endpoint
    timeout_s: float = 600.0
    max_retries: int = 5
    backoff_s: float = 2.0  # first retry's wait; doubles each retry
    cache_dir: Optional[str] = None  # response cache; null: none


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
    base_url: Optional[str] = None
    timeout_s: float = 600.0
    max_retries: int = 5
    backoff_s: float = 2.0
    cache_dir: Optional[str] = None
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
class WhisperXAlignSchema:
    _target_: str = "moshi_knowledge.speech.whisperx_align.WhisperXAligner"
    model: str = "large-v2"
    language: str = "en"
    device: str = "cpu"
    compute_type: str = "int8"
    batch_size: int = 8
    align_model: Optional[str] = None  # null: whisperx's default for `language`


SCHEMAS.update({
    ("story", "openai_schema"): OpenAIStorySchema,
    ("story", "gemini_schema"): GeminiStorySchema,
    ("qa", "openai_schema"): OpenAIQASchema,
    ("qa", "gemini_schema"): GeminiQASchema,
    ("tts", "kokoro_schema"): KokoroTTSSchema,
    ("align", "whisperx_schema"): WhisperXAlignSchema,
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
class TinyModelSchema:
    _target_: str = "moshi_knowledge.model.tiny.TinyModel"
    seed: int = 0
    fit_seconds: float = 300.0
    device: str = "auto"
    dtype: str = "auto"
    dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    context: int = 500
    depformer_dim: int = 64
    depformer_num_heads: int = 4
    depformer_num_layers: int = 2
    depformer_dim_feedforward: int = 264
    card: int = 1024
    vocab_size: int = 1000
    mimi_dim: int = 64
    mimi_filters: int = 8
    mimi_layers: int = 1
    mimi_codebook_dim: int = 32


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


@dataclass
class LoraSchema:
    _target_: str = "moshi_knowledge.model.lora.LoraSpec"
    targets: str = "attn_mlp"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    use_rslora: bool = False
    use_dora: bool = False
    train_embeddings: bool = False
    export_merged: bool = False


@dataclass
class FullFinetuneSchema:
    _target_: str = "moshi_knowledge.model.lora.FullFinetune"


SCHEMAS.update({
    ("model", "tiny_schema"): TinyModelSchema,
    ("model", "local_schema"): LocalModelSchema,
    ("model", "hub_schema"): HubModelSchema,
    ("lora", "lora_schema"): LoraSchema,
    ("lora", "full_schema"): FullFinetuneSchema,
})


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
