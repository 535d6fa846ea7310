"""What a story stage produces: prose, and (for generated worlds) the ground-truth facts behind it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr

from moshi_knowledge.io_utils import atomic_write_json, atomic_write_text, read_json

EntityKind = Literal[
    "kingdom", "person", "place", "river", "institution", "artifact", "battle", "creature", "year"
]


class Entity(BaseModel):
    """A named thing of the world. Years are entities too, so every fact links two entities."""

    id: str
    kind: EntityKind
    name: str
    title: str | None = None  # e.g. "Queen", for people


class Fact(BaseModel):
    """One atomic, checkable statement: subject --relation--> object, with the sentence stating it."""

    id: str
    subject: str  # Entity.id
    relation: str  # e.g. founded_by, capital_of, born_in, reigned_from, located_on_river
    object: str  # Entity.id
    sentence: str  # the prose sentence in the story that states this fact


class World(BaseModel):
    name: str
    seed: int
    entities: list[Entity]
    facts: list[Fact] = Field(min_length=1)

    _index: dict[str, Entity] = PrivateAttr(default_factory=dict)  # id -> entity, rebuilt when entities grow

    def __eq__(self, other: object) -> bool:
        """Worlds are equal by their fields; the lookup index is a cache, not content."""
        return isinstance(other, World) and (self.name, self.seed, self.entities, self.facts) == \
            (other.name, other.seed, other.entities, other.facts)

    def entity(self, entity_id: str) -> Entity:
        if len(self._index) != len(self.entities):
            self._index = {e.id: e for e in self.entities}
        return self._index[entity_id]


class Story(BaseModel):
    """The story stage's artifact: `story.txt`, plus `world.json` when facts are known."""

    text: str
    world: World | None = None

    def save(self, out_dir: Path) -> None:
        atomic_write_text(out_dir / "story.txt", self.text)
        if self.world is not None:
            atomic_write_json(out_dir / "world.json", self.world.model_dump())

    @classmethod
    def load(cls, out_dir: Path) -> "Story":
        world_path = out_dir / "world.json"
        world = World.model_validate(read_json(world_path)) if world_path.exists() else None
        return cls(text=(out_dir / "story.txt").read_text(encoding="utf-8"), world=world)
