"""A seeded, invented kingdom: entities, ground-truth facts and the prose that states them.

Everything comes from one `random.Random(seed)`, so a seed always yields the same world and text.
Every relation is functional (one object per subject), so a question "who/where/when" about a
subject has exactly one answer, and facts chain (the founder of X was born in Y, which lies on Z).
The timeline is kept plausible: people act while adult and alive, places exist before anyone is
born or fights there, and a ruler's child is born while the parent lives.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from moshi_knowledge.errors import UserError
from moshi_knowledge.specs import init_schema
from moshi_knowledge.world.names import NameMaker
from moshi_knowledge.world.prose import Draft, Section, label, render
from moshi_knowledge.world.schema import Entity, EntityKind, Story, World

# Fixed English words in multi-word names (the invented part is the other token).
INSTITUTION_TYPES = ("Order", "Academy", "Guild", "College", "Circle")
ARTIFACT_NOUNS = ("Crown", "Sword", "Chalice", "Horn", "Mirror", "Lantern", "Shield", "Ring", "Scepter", "Harp")
BATTLE_SITES = ("Ford", "Field", "Hill", "Moor", "Pass", "Bridge")
CREATURE_SPECIES = ("wyrm", "griffin", "serpent", "drake", "basilisk", "great stag", "night owl", "wolf")

# Non-ruler roles, dealt out in this order; (male, female) titles.
_ROLES = ("general", "founder", "smith", "scholar", "rebel", "builder", "hunter")
_TITLES = {
    "ruler": ("King", "Queen"),
    "general": ("General", "General"),
    "founder": ("Father", "Mother"),
    "smith": ("Master", "Mistress"),
    "scholar": ("Sage", "Sage"),
    "rebel": ("Lord", "Lady"),
    "builder": ("Architect", "Architect"),
    "hunter": ("Sir", "Dame"),
}
# Sentence order inside an entity's paragraph.
_RELATION_ORDER = (
    "founded_in_year", "founded_by", "has_capital", "born_in_year", "born_in", "child_of", "succeeded",
    "reigned_from", "reigned_until", "located_on_river", "seated_in", "fought_in_year", "fought_at",
    "commanded_by", "opposed_by", "won_by", "forged_by", "forged_in_year", "kept_in", "held_by",
    "member_of", "served_under", "lives_in", "guards", "tamed_by", "died_in_year",
)
_KIND_ORDER: tuple[EntityKind, ...] = (
    "kingdom", "person", "place", "river", "institution", "artifact", "battle", "creature", "year"
)
_ACTIVE_YEARS = 20  # length of a non-ruler's active window


@dataclass
class _Life:
    """A person's timeline; `window` is when they can act (a ruler's reign, else an adult span)."""

    person: Entity
    female: bool
    role: str
    window: tuple[int, int]
    deeds: list[int] = field(default_factory=list)
    birth: int = 0
    death: int = 0


class ProceduralStory:
    """story=procedural: invent a kingdom with the given numbers of each kind of entity."""

    def __init__(self, seed: int, n_people: int = 24, n_places: int = 14, n_rivers: int = 4,
                 n_institutions: int = 6, n_artifacts: int = 6, n_battles: int = 6, n_creatures: int = 5) -> None:
        minimums = {"n_people": (n_people, 3), "n_places": (n_places, 1), "n_rivers": (n_rivers, 1),
                    "n_institutions": (n_institutions, 0), "n_artifacts": (n_artifacts, 0),
                    "n_battles": (n_battles, 0), "n_creatures": (n_creatures, 0)}
        for key, (value, low) in minimums.items():
            if value < low:
                raise UserError(f"story.{key} is {value}, below its minimum {low}",
                                f"set story.{key} to at least {low}")
        self.seed = seed
        self.n_people = n_people
        self.n_places = n_places
        self.n_rivers = n_rivers
        self.n_institutions = n_institutions
        self.n_artifacts = n_artifacts
        self.n_battles = n_battles
        self.n_creatures = n_creatures

    def generate(self) -> Story:
        return _Builder(self).build()


class _Builder:
    """One generation run: all state of the world under construction."""

    def __init__(self, cfg: ProceduralStory) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.names = NameMaker(self.rng)
        self.entities: dict[str, Entity] = {}
        self.drafts: dict[str, list[Draft]] = defaultdict(list)  # by subject id
        self.lives: list[_Life] = []
        self.dated: dict[str, int] = {}  # place/institution -> founding year; battle -> its year

    # -- entities and facts ---------------------------------------------------------------------

    def _entity(self, kind: EntityKind, name: str, title: str | None = None) -> Entity:
        entity = Entity(id=f"{kind}-{name.lower().replace(' ', '-')}", kind=kind, name=name, title=title)
        self.entities[entity.id] = entity
        return entity

    def _year(self, year: int) -> Entity:
        return self.entities.get(f"year-{year}") or self._entity("year", str(year))

    def _fact(self, subject: Entity, relation: str, obj: Entity, kin: str = "child") -> None:
        assert all(d.relation != relation for d in self.drafts[subject.id]), (subject.id, relation)
        self.drafts[subject.id].append(Draft(subject, relation, obj, kin))

    def _person(self, role: str, window: tuple[int, int]) -> _Life:
        female = self.rng.random() < 0.5
        title = _TITLES[role][female]
        life = _Life(self._entity("person", self.names.new(), title), female, role, window)
        self.lives.append(life)
        return life

    # -- the world, part by part ----------------------------------------------------------------

    def build(self) -> Story:
        rng, cfg = self.rng, self.cfg
        self.kingdom = self._entity("kingdom", self.names.new())
        self.rulers = self._dynasty(max(2, cfg.n_people // 3))
        self.start, self.end = self.rulers[0].window[0], self.rulers[-1].window[1]
        war_start = rng.randint(self.start + 5, max(self.start + 5, self.end - _ACTIVE_YEARS))
        for i in range(cfg.n_people - len(self.rulers)):
            role = _ROLES[i % len(_ROLES)]
            begin = war_start if role in ("general", "rebel") else rng.randint(
                self.start, max(self.start, self.end - _ACTIVE_YEARS))
            self._person(role, (begin, begin + _ACTIVE_YEARS))
        self.places = self._places()
        self.institutions = self._institutions()
        self.artifacts = self._artifacts()
        self.battles = self._battles()
        self.creatures = self._creatures()
        self._scholars()
        self._lifetimes()
        text, facts = render(self._sections(war_start), rng)
        order = {kind: i for i, kind in enumerate(_KIND_ORDER)}
        entities = sorted(self.entities.values(), key=lambda e: order[e.kind])
        world = World(name=f"Kingdom of {self.kingdom.name}", seed=cfg.seed, entities=entities, facts=facts)
        return Story(text=text, world=world)

    def _dynasty(self, n: int) -> list[_Life]:
        """Successive monarchs; most are the previous monarch's child, born while that parent lived."""
        rng = self.rng
        start = rng.randint(700, 1100)
        birth = start - rng.randint(18, 40)
        rulers: list[_Life] = []
        is_child = False
        for _ in range(n):
            until = min(start + rng.randint(8, 30), birth + 80)
            life = self._person("ruler", (start, until))
            life.birth = birth
            life.death = until if rng.random() < 0.8 else until + rng.randint(2, 12)
            self._fact(life.person, "reigned_from", self._year(start))
            self._fact(life.person, "reigned_until", self._year(until))
            if rulers:
                self._fact(life.person, "succeeded", rulers[-1].person)
            if is_child:
                self._fact(life.person, "child_of", rulers[-1].person, "daughter" if life.female else "son")
            rulers.append(life)
            low, high = birth + 18, min(birth + 40, until - 16)
            is_child = low <= high and rng.random() < 0.75
            birth = rng.randint(low, high) if is_child else until - rng.randint(18, 40)
            start = until
        return rulers

    def _performers(self, role: str) -> list[_Life]:
        """People of a role, or the monarchs when the world has nobody of that role."""
        return [life for life in self.lives if life.role == role] or self.rulers

    def _deed(self, life: _Life) -> int:
        year = self.rng.randint(*life.window)
        life.deeds.append(year)
        return year

    def _places_before(self, year: int) -> list[Entity]:
        return [p for p in self.places if self.dated[p.id] < year]

    def _places(self) -> list[Entity]:
        """Old towns (the capital among them) predate the dynasty; newer ones were founded by builders."""
        rng, cfg = self.rng, self.cfg
        rivers = [self._entity("river", self.names.new()) for _ in range(cfg.n_rivers)]
        builders = self._performers("builder")
        n_old = math.ceil(cfg.n_places / 2)
        places: list[Entity] = []
        for i in range(cfg.n_places):
            place = self._entity("place", self.names.new())
            if i < n_old:
                year = rng.randint(self.start - 400, self.start - 60)
            else:
                builder = builders[i % len(builders)]
                year = self._deed(builder)
                self._fact(place, "founded_by", builder.person)
            self.dated[place.id] = year
            self._fact(place, "founded_in_year", self._year(year))
            # Every river gets a town before any river gets a second one.
            river = rivers[i] if i < len(rivers) else rng.choice(rivers)
            self._fact(place, "located_on_river", river)
            places.append(place)
        self._fact(self.kingdom, "founded_in_year", self._year(self.start))
        self._fact(self.kingdom, "founded_by", self.rulers[0].person)
        self._fact(self.kingdom, "has_capital", places[0])
        return places

    def _institutions(self) -> list[Entity]:
        founders = self._performers("founder")
        out = []
        for i in range(self.cfg.n_institutions):
            kind = INSTITUTION_TYPES[i % len(INSTITUTION_TYPES)]
            inst = self._entity("institution", f"{kind} of {self.names.new()}")
            founder = founders[i % len(founders)]
            year = self._deed(founder)
            self.dated[inst.id] = year
            self._fact(inst, "founded_by", founder.person)
            self._fact(inst, "founded_in_year", self._year(year))
            self._fact(inst, "seated_in", self.rng.choice(self._places_before(year)))
            out.append(inst)
        return out

    def _artifacts(self) -> list[Entity]:
        rng = self.rng
        smiths = self._performers("smith")
        nouns = rng.sample(ARTIFACT_NOUNS, len(ARTIFACT_NOUNS))
        out = []
        for i in range(self.cfg.n_artifacts):
            artifact = self._entity("artifact", f"{nouns[i % len(nouns)]} of {self.names.new()}")
            smith = smiths[i % len(smiths)]
            self._fact(artifact, "forged_by", smith.person)
            self._fact(artifact, "forged_in_year", self._year(self._deed(smith)))
            if self.institutions and rng.random() < 0.5:
                self._fact(artifact, "held_by", rng.choice(self.institutions))
            else:
                self._fact(artifact, "kept_in", rng.choice(self.places))
            out.append(artifact)
        return out

    def _battles(self) -> list[Entity]:
        """All battles fall in one era of war, so each general and rebel fights within one lifetime."""
        rng = self.rng
        generals, rebels = self._performers("general"), self._performers("rebel")
        out = []
        for i in range(self.cfg.n_battles):
            battle = self._entity("battle", f"Battle of {self.names.new()} {rng.choice(BATTLE_SITES)}")
            general, rebel = generals[i % len(generals)], rebels[i % len(rebels)]
            year = self._deed(general)
            rebel.deeds.append(year)
            self.dated[battle.id] = year
            self._fact(battle, "fought_in_year", self._year(year))
            self._fact(battle, "fought_at", rng.choice(self._places_before(year)))
            self._fact(battle, "commanded_by", general.person)
            if rebel is not general:
                self._fact(battle, "opposed_by", rebel.person)
            self._fact(battle, "won_by", rng.choice((general, rebel)).person)
            out.append(battle)
        return out

    def _creatures(self) -> list[Entity]:
        """A creature that guards a treasure lives where that treasure is kept."""
        rng = self.rng
        hunters = self._performers("hunter")
        guarded = rng.sample(self.artifacts, min(len(self.artifacts), self.cfg.n_creatures))
        out = []
        for i in range(self.cfg.n_creatures):
            creature = self._entity("creature", self.names.new(), rng.choice(CREATURE_SPECIES))
            home = rng.choice(self.places)
            if i < len(guarded):
                self._fact(creature, "guards", guarded[i])
                home = self._home_of(guarded[i])
            self._fact(creature, "lives_in", home)
            hunter = hunters[i % len(hunters)]
            self._deed(hunter)
            self._fact(creature, "tamed_by", hunter.person)
            out.append(creature)
        return out

    def _home_of(self, artifact: Entity) -> Entity:
        """The place an artifact is kept: its vault's town, or its institution's seat."""
        facts = {d.relation: d.object for d in self.drafts[artifact.id]}
        if "kept_in" in facts:
            return facts["kept_in"]
        return next(d.object for d in self.drafts[facts["held_by"].id] if d.relation == "seated_in")

    def _scholars(self) -> None:
        """Scholars belong to an institution and are active after it was founded."""
        if not self.institutions:
            return
        for life in (lf for lf in self.lives if lf.role == "scholar"):
            inst = self.rng.choice(self.institutions)
            begin = self.rng.randint(self.dated[inst.id], max(self.dated[inst.id], self.end))
            life.window = (begin, begin + _ACTIVE_YEARS)
            self._fact(life.person, "member_of", inst)

    def _ruler_at(self, year: int) -> _Life:
        return next((r for r in self.rulers if year < r.window[1]), self.rulers[-1])

    def _lifetimes(self) -> None:
        """Birth and death around each person's deeds; birthplaces that already existed at birth."""
        rng = self.rng
        for life in self.lives:
            if life.role != "ruler":
                deeds = life.deeds or list(life.window)
                life.birth = min(deeds) - rng.randint(22, 38)
                life.death = max(deeds) + rng.randint(2, 25)
                self._fact(life.person, "served_under", self._ruler_at(min(deeds)).person)
            self._fact(life.person, "born_in_year", self._year(life.birth))
            self._fact(life.person, "born_in", rng.choice(self._places_before(life.birth)))
            self._fact(life.person, "died_in_year", self._year(life.death))

    # -- prose ----------------------------------------------------------------------------------

    def _paragraph(self, *entities: Entity) -> list[Draft]:
        rank = {r: i for i, r in enumerate(_RELATION_ORDER)}
        return [d for e in entities for d in sorted(self.drafts[e.id], key=lambda d: rank[d.relation])]

    def _sections(self, war_start: int) -> list[Section]:
        rng, kingdom = self.rng, label(self.kingdom)
        by_river: dict[str, list[Entity]] = defaultdict(list)
        for place in self.places:
            river = next(d.object for d in self.drafts[place.id] if d.relation == "located_on_river")
            by_river[river.id].append(place)
        others = [life.person for life in self.lives if life.role != "ruler"]
        battles = sorted(self.battles, key=lambda b: self.dated[b.id])
        return [
            Section(f"A Chronicle of {kingdom}", rng.choice((
                f"This is the chronicle of {kingdom}, as its scribes remember it.",
                f"What follows is the history of {kingdom}, set down by its scribes.")),
                [self._paragraph(self.kingdom)]),
            Section("The Royal House", rng.choice((
                f"One royal house has ruled {kingdom} since its founding.",
                f"The crown of {kingdom} has passed down a single royal line.")),
                [self._paragraph(r.person) for r in self.rulers]),
            Section("Cities and Rivers", rng.choice((
                f"The towns of {kingdom} grew up along its rivers.",
                f"Rivers carry the trade of {kingdom} from town to town.")),
                [self._paragraph(*places) for places in by_river.values()]),
            Section("Orders, Academies and Guilds", rng.choice((
                "Learning and craft were kept alive by sworn fellowships.",
                "Several fellowships shaped the learning and crafts of the realm.")),
                [self._paragraph(i) for i in self.institutions]),
            Section("Notable People", rng.choice((
                "Beyond the throne, many others left their mark on the realm.",
                "The realm remembers many who never wore the crown.")),
                [self._paragraph(p) for p in others]),
            Section("The Wars", rng.choice((
                f"Around the year {war_start}, rebellion spread across {kingdom}.",
                f"Peace broke in {kingdom} around the year {war_start}, and the rebel lords took up arms.")),
                [self._paragraph(b) for b in battles]),
            Section("Treasures", rng.choice((
                "Old treasures of great renown are still kept in the realm.",
                "The realm holds treasures whose names every child knows.")),
                [self._paragraph(a) for a in self.artifacts]),
            Section("Legends of Beasts", rng.choice((
                "Strange creatures still haunt the wild places of the realm.",
                "Tales of great beasts are told at every hearth in the realm.")),
                [self._paragraph(c) for c in self.creatures]),
        ]


SCHEMAS = {("story", "procedural_schema"): init_schema(ProceduralStory)}
