"""Structured-config schemas: Hydra rejects a mistyped key or a wrong type when the config is composed.

Each group option's YAML lists its schema first in its defaults (e.g. `- /schema/tts@_here_: espeak_schema`).
`register()` must run before composing; the app and the test fixtures call it. Every schema sits beside the class
it configures (read off a light class's constructor by `specs.init_schema`, or a settings dataclass plus its
target, in `specs/` for a torch-side class), so its defaults have one home; this module collects them and
holds the root's own settings.
"""

from __future__ import annotations

from typing import Annotated

from hydra.core.config_store import ConfigStore
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter

from moshi_knowledge.cli import register_help_resolver
from moshi_knowledge.dataset import moshi_finetune, source
from moshi_knowledge.evaluation import config as eval_config
from moshi_knowledge.qa import facts
from moshi_knowledge.qa import file as file_qa
from moshi_knowledge.qa import llm as llm_qa
from moshi_knowledge.specs import lora, model, nan_guard, tiny
from moshi_knowledge.speech import espeak, kokoro, layout, narration, narration_layout, narration_llm, whisperx_align
from moshi_knowledge.tracking import sinks
from moshi_knowledge.train import config as train_config
from moshi_knowledge.world import file as file_story
from moshi_knowledge.world import llm as llm_story
from moshi_knowledge.world import procedural

SCHEMAS = {
    **procedural.SCHEMAS, **file_story.SCHEMAS, **llm_story.SCHEMAS,
    **facts.SCHEMAS, **file_qa.SCHEMAS, **llm_qa.SCHEMAS,
    **espeak.SCHEMAS, **kokoro.SCHEMAS, **layout.SCHEMAS, **whisperx_align.SCHEMAS,
    **narration_layout.SCHEMAS, **narration.SCHEMAS, **narration_llm.SCHEMAS,
    **source.SCHEMAS, **moshi_finetune.SCHEMAS,
    **model.SCHEMAS, **tiny.SCHEMAS, **lora.SCHEMAS,
    **train_config.SCHEMAS, **nan_guard.SCHEMAS, **eval_config.SCHEMAS,
    **sinks.SCHEMAS,
}


def register() -> None:
    register_help_resolver()
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=f"schema/{group}", name=name, node=node)


# ---- the root's own settings (conf/config.yaml): not a group, so pydantic checks them before the first stage ----


SEED_RANGE = "an integer in [0, 2**32), the seeds numpy and torch accept, e.g. seed=0"
Seed = Annotated[int, Strict(), Field(ge=0, lt=2**32, description=SEED_RANGE)]
SEED = TypeAdapter(Seed)  # a group's own seed (train.seed=...) is checked against the same type (preflight)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ObjectiveSettings(_Strict):
    metric: str
    mode: str  # max | min, checked with the metric by tracking.contract.check_objective


class DebugSettings(_Strict):
    inject_nonfinite_at: list[Annotated[int, Field(ge=1)]] = Field(
        description="a list of optimizer steps (from 1), e.g. debug.inject_nonfinite_at=[5,6]")


class RootSettings(BaseModel):
    """The top-level keys besides the groups; a group's keys are checked by its structured schema."""

    model_config = ConfigDict(extra="ignore", strict=True)
    seed: Seed
    stages: list[str] = Field(min_length=1, description="a non-empty list of stages, e.g. stages=[story,qa]")
    objective: ObjectiveSettings = Field(description="objective.metric=... objective.mode=max|min, not a string")
    debug: DebugSettings = Field(description="a node with inject_nonfinite_at (debug.inject_nonfinite_at=[5]), "
                                             "not a string")
