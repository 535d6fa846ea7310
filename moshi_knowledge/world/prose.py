"""Turn a generated world's facts into readable prose, one sentence per fact.

Each fact's sentence is kept on the Fact, so a reader (or a test) can find exactly where the story
states it. Several templates per relation keep the prose from reading like a table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from moshi_knowledge.world.schema import Entity, Fact

# {s}: the subject, {o}: the object, {kin}: "son"/"daughter". Each template states exactly one fact.
SENTENCES: dict[str, tuple[str, ...]] = {
    "has_capital": (
        "The capital of {s} is {o}.",
        "{o} has long served as the capital of {s}.",
        "The royal court of {s} sits in {o}, its capital.",
    ),
    "founded_in_year": (
        "{s} was founded in {o}.",
        "{s} was founded in the year {o}.",
        "The founding of {s} took place in {o}.",
        "In the year {o}, {s} was founded.",
    ),
    "founded_by": (
        "{s} was founded by {o}.",
        "It was {o} who founded {s}.",
        "{o} was the founder of {s}.",
        "{s} owes its founding to {o}.",
    ),
    "born_in": (
        "{s} was born in {o}.",
        "{s} was born in the city of {o}.",
        "The birthplace of {s} was {o}.",
        "{s} came into the world in {o}.",
    ),
    "born_in_year": (
        "{s} was born in {o}.",
        "{s} was born in the year {o}.",
        "The year {o} saw the birth of {s}.",
    ),
    "died_in_year": (
        "{s} died in {o}.",
        "{s} died in the year {o}.",
        "Death came to {s} in {o}.",
        "{s} passed away in {o}.",
    ),
    "reigned_from": (
        "{s} took the throne in {o}.",
        "{s} was crowned in the year {o}.",
        "The reign of {s} began in {o}.",
    ),
    "reigned_until": (
        "The reign of {s} ended in {o}.",
        "{s} ruled until the year {o}.",
        "{s} reigned until {o}.",
    ),
    "succeeded": (
        "{s} succeeded {o} on the throne.",
        "After {o}, the crown passed to {s}.",
        "{s} followed {o} as ruler.",
    ),
    "child_of": (
        "{s} was the {kin} of {o}.",
        "{s} was born the {kin} of {o}.",
        "{o} was the parent of {s}.",
    ),
    "located_on_river": (
        "{s} stands on {o}.",
        "{s} lies on the banks of {o}.",
        "{o} flows through {s}.",
        "{s} was built beside {o}.",
    ),
    "seated_in": (
        "{s} has its seat in {o}.",
        "{s} is based in {o}.",
        "The halls of {s} stand in {o}.",
    ),
    "member_of": (
        "{s} was a member of {o}.",
        "{s} belonged to {o}.",
        "{s} was counted among the members of {o}.",
    ),
    "served_under": (
        "{s} served {o}.",
        "{s} was in the service of {o}.",
        "{s} served under {o}.",
    ),
    "forged_by": (
        "{s} was forged by {o}.",
        "{o} forged {s}.",
        "{s} was the work of {o}.",
    ),
    "forged_in_year": (
        "{s} was forged in {o}.",
        "{s} was made in the year {o}.",
        "The forging of {s} was finished in {o}.",
    ),
    "kept_in": (
        "{s} is kept in {o}.",
        "Today {s} rests in {o}.",
        "{s} is held in a vault in {o}.",
    ),
    "held_by": (
        "{s} is held by {o}.",
        "{o} keeps {s}.",
        "{s} is in the keeping of {o}.",
    ),
    "fought_at": (
        "{s} was fought near {o}.",
        "{s} took place outside {o}.",
        "The armies met for {s} near {o}.",
    ),
    "fought_in_year": (
        "{s} was fought in {o}.",
        "{s} took place in the year {o}.",
        "The year {o} saw {s}.",
    ),
    "commanded_by": (
        "{o} commanded the royal army at {s}.",
        "At {s}, the forces of the crown were led by {o}.",
        "The royal host at {s} marched under {o}.",
    ),
    "opposed_by": (
        "{o} led the rebels at {s}.",
        "At {s}, the rebel host followed {o}.",
        "{o} raised the rebel banner at {s}.",
    ),
    "won_by": (
        "{s} was won by {o}.",
        "Victory at {s} went to {o}.",
        "{o} won {s}.",
    ),
    "lives_in": (
        "{s} lives near {o}.",
        "{s} makes its lair near {o}.",
        "Folk say that {s} dwells near {o}.",
    ),
    "guards": (
        "{s} guards {o}.",
        "{o} is guarded by {s}.",
        "{s} keeps watch over {o}.",
    ),
    "tamed_by": (
        "{s} was tamed by {o}.",
        "{o} tamed {s}.",
        "It was {o} who tamed {s}.",
    ),
}


def label(entity: Entity) -> str:
    """The full name prose and questions use: 'Queen Vova', 'the River Odol', 'the Order of Gadon'."""
    if entity.kind == "person":
        return f"{entity.title} {entity.name}" if entity.title else entity.name
    if entity.kind == "creature":
        return f"the {entity.title} {entity.name}" if entity.title else entity.name
    if entity.kind == "river":
        return f"the River {entity.name}"
    if entity.kind == "kingdom":
        return f"the Kingdom of {entity.name}"
    if entity.kind in ("institution", "artifact", "battle"):
        return f"the {entity.name}"
    return entity.name


def capitalize(text: str) -> str:
    """Upper-case the first letter only ('the Order of X ...' -> 'The Order of X ...')."""
    return text[:1].upper() + text[1:]


def restatements(fact: Fact, subject: Entity, obj: Entity, n: int, rng: random.Random) -> list[str]:
    """`n` sentences stating `fact`: the story's own first, then other templates of its relation in a random
    order, every entity by its full label (the story's sentence may use a bare name after a first mention)."""
    kin = next((w for w in ("son", "daughter") if f" {w} of " in fact.sentence), "child")
    forms = {t: {capitalize(t.format(s=s_, o=o_, kin=kin)) for s_ in {label(subject), subject.name}
                 for o_ in {label(obj), obj.name}} for t in SENTENCES[fact.relation]}
    others = [t for t, rendered in forms.items() if fact.sentence not in rendered]
    picked = rng.sample(others, min(n - 1, len(others)))
    return [fact.sentence, *(capitalize(t.format(s=label(subject), o=label(obj), kin=kin)) for t in picked)]


MAX_RESTATEMENTS = min(len(t) for t in SENTENCES.values())  # every relation has this many templates


@dataclass(frozen=True)
class Draft:
    """A fact before it has a sentence; `kin` words the child_of relation ('son'/'daughter')."""

    subject: Entity
    relation: str
    object: Entity
    kin: str = "child"


@dataclass
class Section:
    title: str
    intro: str  # a framing sentence that states no fact
    paragraphs: list[list[Draft]]


def _mention(entity: Entity, seen: set[str], rng: random.Random) -> str:
    """Full label on first mention in a paragraph; afterwards people and creatures may go by bare name."""
    short_ok = entity.kind in ("person", "creature") and entity.title and entity.id in seen
    seen.add(entity.id)
    return entity.name if short_ok and rng.random() < 0.5 else label(entity)


def render(sections: list[Section], rng: random.Random) -> tuple[str, list[Fact]]:
    """The story text and its facts (ids '<subject id>.<relation>', in reading order)."""
    blocks: list[str] = []
    facts: list[Fact] = []
    for section in sections:
        paragraphs = [p for p in section.paragraphs if p]
        if not paragraphs:
            continue
        blocks.append(section.title)
        for i, drafts in enumerate(paragraphs):
            seen: set[str] = set()
            sentences = [section.intro] if i == 0 else []
            for d in drafts:
                template = rng.choice(SENTENCES[d.relation])
                # Mention in the order the template names them, so "first mention" is literal.
                order = ("o", "s") if template.index("{o}") < template.index("{s}") else ("s", "o")
                words = {k: _mention(d.subject if k == "s" else d.object, seen, rng) for k in order}
                sentence = capitalize(template.format(kin=d.kin, **words))
                sentences.append(sentence)
                facts.append(Fact(id=f"{d.subject.id}.{d.relation}", subject=d.subject.id,
                                  relation=d.relation, object=d.object.id, sentence=sentence))
            blocks.append(" ".join(sentences))
    return "\n\n".join(blocks) + "\n", facts
