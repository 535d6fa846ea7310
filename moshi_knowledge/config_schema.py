"""Structured-config schemas: Hydra rejects a mistyped key or a wrong type when the config is composed.

Each group option's YAML lists its schema first in its defaults (e.g. `defaults: [espeak_schema, _self_]`).
`register()` must run before composing; the app and the test fixtures call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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


@dataclass
class FileQASchema:
    _target_: str = "moshi_knowledge.qa.file.FileQA"
    train_path: str = MISSING
    eval_path: Optional[str] = None
    n_eval: int = 20
    seed: int = 0


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


@dataclass
class MonoDuplicateLayoutSchema:
    _target_: str = "moshi_knowledge.speech.layout.MonoDuplicateLayout"
    lead_sec: float = 0.3
    turn_gap_sec: float = 0.8
    max_duration_sec: float = 60.0


SCHEMAS = {
    ("story", "procedural_schema"): ProceduralStorySchema,
    ("story", "file_schema"): FileStorySchema,
    ("qa", "facts_schema"): FactsQASchema,
    ("qa", "file_schema"): FileQASchema,
    ("tts", "espeak_schema"): EspeakTTSSchema,
    ("layout", "dialogue_schema"): DialogueLayoutSchema,
    ("layout", "mono_duplicate_schema"): MonoDuplicateLayoutSchema,
}


def register() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
