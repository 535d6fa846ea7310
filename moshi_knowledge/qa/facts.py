"""qa=facts: questions built from a procedural world's facts, with held-out tiers that test generalisation.

- train: one question per chosen fact, asked in several phrasings (diverse restatements make facts extractable).
- paraphrase: the same fact, asked with its relation's held-out template: a phrasing no training question of that
  relation ever uses (`held_out_templates`).
- eval: questions no single training item answers: two facts chained ("Where was the founder of X born?")
  or one fact asked backwards ("What did Y found?", the reversal curse). Their facts are all trained.
- unseen_facts: facts never trained, asked like training questions: the null (what the priors score).
- unseen_voice, unseen_wording, shifted: trained facts asked with one thing changed (`_cause_items`).
- heldout_facts (`heldout_share`): training facts whose Q/A is kept out of training; the narration layouts narrate
  them with the others, so the tier asks whether facts learned from prose alone can be extracted by questions.
Every tier's questions sit in counterbalanced candidate sets (qa/balance.py): questions of one relation with
distinct answers share one set of candidates, each the gold of one of them, so no prior over the candidates (how
often an answer was trained, its kind, its length) scores above chance. Facts that link the same two entities under
two relations (`twins`) are never split between a trained and a never-trained tier.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.balance import SET_SIZE, Slot, clash, give_candidates, group, slot, take
from moshi_knowledge.qa.retain import with_retain
from moshi_knowledge.qa.schema import CAUSE_TIERS, QAItem, QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.world.prose import capitalize, label
from moshi_knowledge.world.schema import Entity, Fact, Story, World

# Forward questions: {s} is the subject, the answer is the object. >= 5 per relation (paraphrases + 1).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "has_capital": (
        "What is the capital of {s}?", "Which city is the capital of {s}?", "Name the capital city of {s}.",
        "In which city does the royal court of {s} sit?", "Which city serves as the capital of {s}?"),
    "founded_in_year": (
        "In what year was {s} founded?", "When was {s} founded?", "In which year did the founding of {s} take place?",
        "What year saw the founding of {s}?", "What is the founding year of {s}?"),
    "founded_by": (
        "Who founded {s}?", "Who was the founder of {s}?", "By whom was {s} founded?",
        "Which person founded {s}?", "Who is remembered as the founder of {s}?"),
    "born_in": (
        "Where was {s} born?", "In which city was {s} born?", "What is the birthplace of {s}?",
        "Which town was the birthplace of {s}?", "In what town did {s} come into the world?"),
    "born_in_year": (
        "In what year was {s} born?", "When was {s} born?", "What year was {s} born in?",
        "In which year did {s} come into the world?", "What was the birth year of {s}?"),
    "died_in_year": (
        "In what year did {s} die?", "When did {s} die?", "What year did {s} pass away?",
        "In which year did death come to {s}?", "What was the year of the death of {s}?"),
    "reigned_from": (
        "In what year did {s} take the throne?", "When did the reign of {s} begin?", "In which year was {s} crowned?",
        "What year did {s} become ruler?", "When did {s} start to reign?"),
    "reigned_until": (
        "In what year did the reign of {s} end?", "Until what year did {s} reign?", "When did {s} stop ruling?",
        "What year marked the end of the reign of {s}?", "When did the rule of {s} come to an end?"),
    "succeeded": (
        "Whom did {s} succeed?", "Who reigned just before {s}?", "Who was the predecessor of {s}?",
        "Whom did {s} follow on the throne?", "From whom did the crown pass to {s}?"),
    "child_of": (
        "Who was the parent of {s}?", "Whose child was {s}?", "Of which monarch was {s} the child?",
        "Which ruler was the parent of {s}?", "Who was the royal parent of {s}?"),
    "located_on_river": (
        "On which river does {s} stand?", "Which river flows through {s}?", "What river is {s} built beside?",
        "On the banks of which river does {s} lie?", "Which river runs past {s}?"),
    "seated_in": (
        "Where does {s} have its seat?", "In which city is {s} based?", "Which city is home to {s}?",
        "In what town do the halls of {s} stand?", "Where is {s} seated?"),
    "member_of": (
        "Which fellowship did {s} belong to?", "Of which institution was {s} a member?",
        "Which order, academy or guild counted {s} among its members?", "To what body did {s} belong?",
        "Which institution did {s} join?"),
    "served_under": (
        "Which monarch did {s} serve?", "Under which ruler did {s} serve?", "In whose service was {s}?",
        "Which king or queen did {s} serve?", "Whom did {s} serve?"),
    "forged_by": (
        "Who forged {s}?", "Who made {s}?", "By whom was {s} forged?", "Which smith forged {s}?",
        "Who was the maker of {s}?"),
    "forged_in_year": (
        "In what year was {s} forged?", "When was {s} made?", "What year was {s} forged in?",
        "In which year was {s} crafted?", "When was the forging of {s} finished?"),
    "kept_in": (
        "Where is {s} kept?", "In which town does {s} rest today?", "Where can {s} be found today?",
        "In what town is {s} held?", "Which town keeps {s} in its vault?"),
    "held_by": (
        "Which institution holds {s}?", "Who keeps {s}?", "In whose keeping is {s}?",
        "Which fellowship has {s} in its care?", "By which order, academy or guild is {s} held?"),
    "fought_at": (
        "Where was {s} fought?", "Near which town was {s} fought?", "Outside which town did {s} take place?",
        "Near what town did the armies meet for {s}?", "Which town saw {s} fought nearby?"),
    "fought_in_year": (
        "In what year was {s} fought?", "When was {s} fought?", "What year did {s} take place?",
        "In which year did the armies meet at {s}?", "When did {s} take place?"),
    "commanded_by": (
        "Who commanded the royal army at {s}?", "Who led the forces of the crown at {s}?",
        "Under whom did the royal host march at {s}?", "Who was the royal commander at {s}?",
        "Which general led the royal army at {s}?"),
    "opposed_by": (
        "Who led the rebels at {s}?", "Whom did the rebel host follow at {s}?",
        "Who raised the rebel banner at {s}?", "Who commanded the rebels at {s}?",
        "Which rebel leader fought the crown at {s}?"),
    "won_by": (
        "Who won {s}?", "Who was victorious at {s}?", "To whom did victory at {s} go?",
        "Who was the victor of {s}?", "Who carried the day at {s}?"),
    "lives_in": (
        "Where does {s} live?", "Near which town does {s} make its lair?", "Where does {s} dwell?",
        "Near what town is {s} said to live?", "Where is the lair of {s}?"),
    "guards": (
        "What does {s} guard?", "Which treasure is guarded by {s}?", "What treasure does {s} watch over?",
        "Which treasure does {s} protect?", "What is {s} said to guard?"),
    "tamed_by": (
        "Who tamed {s}?", "By whom was {s} tamed?", "Who was the tamer of {s}?",
        "Which hero tamed {s}?", "Who brought {s} to heel?"),
}

# A noun phrase for the object of a relation, given its subject {s}: the first hop of a chained question.
DESCRIPTORS: dict[str, tuple[str, ...]] = {
    "has_capital": ("the capital of {s}",),
    "founded_by": ("the founder of {s}", "the person who founded {s}"),
    "born_in": ("the birthplace of {s}", "the town where {s} was born"),
    "succeeded": ("the predecessor of {s}", "the monarch who reigned just before {s}"),
    "child_of": ("the parent of {s}",),
    "seated_in": ("the town where {s} has its seat",),
    "member_of": ("the institution that {s} belonged to",),
    "served_under": ("the monarch whom {s} served",),
    "forged_by": ("the maker of {s}", "the smith who forged {s}"),
    "kept_in": ("the town where {s} is kept",),
    "held_by": ("the institution that holds {s}",),
    "fought_at": ("the town near which {s} was fought",),
    "commanded_by": ("the royal commander at {s}",),
    "opposed_by": ("the rebel leader at {s}",),
    "won_by": ("the victor of {s}",),
    "lives_in": ("the town near which {s} lives",),
    "guards": ("the treasure guarded by {s}",),
    "tamed_by": ("the tamer of {s}",),
}

# Backward questions: {o} is the object, the answer is the subject.
REVERSE: dict[str, tuple[str, ...]] = {
    "founded_by": ("What did {o} found?", "What was founded by {o}?"),
    "born_in": ("Who was born in {o}?",),
    "born_in_year": ("Who was born in the year {o}?",),
    "died_in_year": ("Who died in the year {o}?",),
    "reigned_from": ("Which monarch took the throne in {o}?",),
    "reigned_until": ("Whose reign ended in {o}?",),
    "succeeded": ("Who succeeded {o}?", "Who took the throne after {o}?"),
    "child_of": ("Who was the child of {o}?",),
    "located_on_river": ("Which town stands on {o}?",),
    "seated_in": ("Which institution has its seat in {o}?",),
    "member_of": ("Who was a member of {o}?",),
    "served_under": ("Who served {o}?",),
    "forged_by": ("What did {o} forge?",),
    "forged_in_year": ("What was forged in the year {o}?",),
    "kept_in": ("What treasure is kept in {o}?",),
    "held_by": ("What treasure does {o} hold?",),
    "fought_at": ("Which battle was fought near {o}?",),
    "fought_in_year": ("Which battle was fought in the year {o}?",),
    "commanded_by": ("At which battle did {o} command the royal army?",),
    "opposed_by": ("At which battle did {o} lead the rebels?",),
    "won_by": ("Which battle did {o} win?",),
    "lives_in": ("Which creature lives near {o}?",),
    "guards": ("Which creature guards {o}?",),
    "tamed_by": ("Which creature did {o} tame?",),
}

REVERSAL_SHARE = 0.25  # of eval questions; the rest chain two facts

T = TypeVar("T")


def reverse(relation: str) -> str:
    """The relation a backward question asks: its answers are the subjects of `relation`'s facts."""
    return f"{relation}^-1"


def aliases(entity: Entity) -> list[str]:
    """Every accepted way to say an entity, the canonical answer (its label) first."""
    full = label(entity)
    forms = [full]
    if full.startswith("the "):
        forms.append(full[4:])
    if entity.kind in ("person", "creature", "river", "kingdom"):
        forms.append(entity.name)
    if entity.kind == "river":
        forms.append(f"the {entity.name}")
    if entity.kind == "year":
        forms.append(f"the year {entity.name}")
    return list(dict.fromkeys(forms))


def _round_robin(items: Sequence[T], key: Callable[[T], Hashable], rng: random.Random) -> list[T]:
    """Shuffle, then interleave groups so consecutive picks cover different kinds of question."""
    groups: dict[Hashable, list[T]] = defaultdict(list)
    for item in rng.sample(list(items), len(items)):
        groups[key(item)].append(item)
    queues = list(groups.values())
    out: list[T] = []
    while queues:
        out.extend(q.pop(0) for q in queues)
        queues = [q for q in queues if q]
    return out


class _EvalPlan:
    """The eval questions' fact support, chosen before training so that every supporting fact is trained."""

    def __init__(self, world: World, rng: random.Random) -> None:
        self.world = world
        self.rng = rng
        self.by_subject: dict[str, list[Fact]] = defaultdict(list)
        for f in world.facts:
            self.by_subject[f.subject].append(f)
        self.linked = {(f.subject, f.object) for f in world.facts}
        self.kind_sizes: dict[str, int] = defaultdict(int)
        for e in world.entities:
            self.kind_sizes[e.kind] += 1

    def useful_answer(self, entity_id: str) -> bool:
        """Only kinds with enough members for distractors (not the lone kingdom)."""
        return self.kind_sizes[self.world.entity(entity_id).kind] >= SET_SIZE

    def chains(self) -> list[tuple[Fact, ...]]:
        """(s -r1-> m, m -r2-> o) where no single fact links s to o, so both hops are needed."""
        out = []
        for f1 in self.world.facts:
            if f1.relation not in DESCRIPTORS:
                continue
            for f2 in self.by_subject[f1.object]:
                if (f2.object != f1.subject and (f1.subject, f2.object) not in self.linked
                        and self.useful_answer(f2.object)):
                    out.append((f1, f2))
        return _round_robin(out, lambda c: (c[0].relation, c[1].relation), self.rng)

    def reversals(self) -> list[tuple[Fact, ...]]:
        """Facts whose object has exactly one subject under that relation, so the backward question is unique."""
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for f in self.world.facts:
            counts[(f.relation, f.object)] += 1
        out = [(f,) for f in self.world.facts
               if f.relation in REVERSE and counts[(f.relation, f.object)] == 1
               and (f.object, f.subject) not in self.linked and self.useful_answer(f.subject)]
        return _round_robin(out, lambda c: c[0].relation, self.rng)


def held_out_templates(seed: int) -> dict[str, str]:
    """Per relation, the one question template training never uses: the paraphrase and unseen_wording tiers ask
    with it, so their wording is new to the relation, not only to the fact (otherwise nearly every paraphrase
    template was trained for other facts of its relation). Drawn from its own seeded stream."""
    rng = random.Random(f"{seed}-held-out-templates")
    return {relation: rng.choice(templates) for relation, templates in sorted(QUESTIONS.items())}


def _training_templates(relation: str, held_out: dict[str, str]) -> list[str]:
    return [t for t in QUESTIONS[relation] if t != held_out[relation]]


class _FactSets:
    """Training facts kept in counterbalanced sets while they are chosen: facts of one relation with distinct
    answers, none of which names another's subject (balance.Slot), at most `size` to a set."""

    def __init__(self, world: World, size: int) -> None:
        self.world, self.size = world, size
        self.sets: list[list[Fact]] = []
        self._of_relation: dict[str, list[list[Fact]]] = defaultdict(list)  # a fact may only join its relation's
        self._slots: dict[str, Slot] = {}
        # what is asked again and again while sets fill (each choice ranks every fact left): whether two facts
        # clash, fixed; whether a fact has a set to join, until its relation's sets change
        self._clashes: dict[tuple[str, str], bool] = {}
        self._has_room: dict[str, dict[str, bool]] = defaultdict(dict)

    def slot(self, fact: Fact) -> Slot:
        if fact.id not in self._slots:
            self._slots[fact.id] = Slot(fact.relation, label(self.world.entity(fact.object)),
                                        (label(self.world.entity(fact.subject)),))
        return self._slots[fact.id]

    def fits(self, fact: Fact, members: list[Fact]) -> bool:
        return len(members) < self.size and members[0].relation == fact.relation \
            and not any(self._clash(fact, m) for m in members)

    def _clash(self, a: Fact, b: Fact) -> bool:
        key = (a.id, b.id)
        if key not in self._clashes:
            self._clashes[key] = clash(self.slot(a), self.slot(b))
        return self._clashes[key]

    def has_room(self, fact: Fact) -> bool:
        """Whether some set would take `fact` (`open_set` is not None)."""
        known = self._has_room[fact.relation]
        if fact.id not in known:
            known[fact.id] = any(self.fits(fact, s) for s in self._of_relation[fact.relation])
        return known[fact.id]

    def open_set(self, fact: Fact) -> list[Fact] | None:
        """The set `fact` would join: a lone fact's first (it needs a partner), else the fullest with room."""
        fitting = [s for s in self._of_relation[fact.relation] if self.fits(fact, s)]
        return max(fitting, key=lambda s: (len(s) == 1, len(s))) if fitting else None

    def add(self, fact: Fact, members: list[Fact] | None = None) -> None:
        """Into `members`, else its open set, else a set of its own."""
        members = members if members is not None else self.open_set(fact)
        self._has_room.pop(fact.relation, None)
        if members is None:
            self.sets.append([fact])
            self._of_relation[fact.relation].append(self.sets[-1])
        else:
            members.append(fact)

    def remove(self, fact: Fact) -> None:
        self._has_room.pop(fact.relation, None)
        for members in self._of_relation[fact.relation]:
            if fact in members:
                members.remove(fact)
        self.sets = [s for s in self.sets if s]
        self._of_relation[fact.relation] = [s for s in self._of_relation[fact.relation] if s]

    def facts(self) -> list[Fact]:
        return [f for s in self.sets for f in s]


def twins(world: World) -> dict[str, set[str]]:
    """Fact id -> the ids of the facts that link the same two entities under another relation ("reigned until 981"
    and "died in 981"; "child of" and "succeeded"): one is as good as the other to a question, so they are trained,
    held out or left unseen together."""
    by_pair: dict[frozenset[str], set[str]] = defaultdict(set)
    for f in world.facts:
        by_pair[frozenset((f.subject, f.object))].add(f.id)
    return {f.id: by_pair[frozenset((f.subject, f.object))] - {f.id} for f in world.facts}


class FactsQA:
    """qa=facts: every tier's questions from the world's facts (needs story=procedural)."""

    def __init__(self, seed: int, n_train: int = 100, n_eval: int = 20, paraphrases: int = 3,
                 retain: bool = True, n_unseen: int = 20, n_per_cause: int = 20, shift_sec: float = 0.4,
                 heldout_share: float = 0.0, spike_in: float = 0.0) -> None:
        most = min(len(t) for t in QUESTIONS.values()) - 1
        if not 1 <= paraphrases <= most:
            raise UserError(f"qa.paraphrases is {paraphrases}; qa=facts has templates for 1 to {most}",
                            f"set qa.paraphrases between 1 and {most}")
        if n_per_cause < 0 or shift_sec <= 0:
            raise UserError(f"qa.n_per_cause={n_per_cause}, qa.shift_sec={shift_sec}: need n_per_cause >= 0 and "
                            "shift_sec > 0", "set qa.n_per_cause to 0 or more and qa.shift_sec to a positive time")
        if n_train < 2 or n_eval < 0 or n_unseen < 0:
            raise UserError(f"qa.n_train={n_train}, qa.n_eval={n_eval}, qa.n_unseen={n_unseen}: need n_train >= 2 "
                            "(questions share candidate sets of two or more) and n_eval, n_unseen >= 0",
                            "set qa.n_train to at least 2 and qa.n_eval and qa.n_unseen to 0 or more")
        if not 0.0 <= heldout_share < 1.0:
            raise UserError(f"qa.heldout_share={heldout_share}: the share of training facts whose Q/A is held out "
                            "must be in [0, 1)", "set qa.heldout_share to 0 (every Q/A trained) or up to 0.9")
        if not 0.0 <= spike_in <= 1.0 or (spike_in > 0 and heldout_share == 0):
            raise UserError(f"qa.spike_in={spike_in} with qa.heldout_share={heldout_share}: spike-in trains a share "
                            "(0 to 1) of the heldout_facts tier's facts, which needs held-out facts",
                            "set qa.spike_in between 0 and 1, and qa.heldout_share above 0 (e.g. 0.5)")
        self.seed = seed
        self.heldout_share = heldout_share
        self.spike_in = spike_in
        self.n_train = n_train
        self.n_eval = n_eval
        self.paraphrases = paraphrases
        self.retain = retain
        self.n_unseen = n_unseen
        self.n_per_cause = n_per_cause
        self.shift_sec = shift_sec

    def build(self, story: Story) -> QASet:
        world = story.world
        if world is None:
            raise UserError(
                "qa=facts needs the facts of a generated world, but this story has no world.json",
                "use story=procedural with qa=facts; for a story file use qa=file, qa=openai or qa=gemini")
        if self.n_train > len(world.facts):
            raise UserError(f"qa.n_train={self.n_train} exceeds the {len(world.facts)} facts of the world",
                            "lower qa.n_train or raise the story.n_* counts")
        rng = random.Random(self.seed)
        plan = _EvalPlan(world, rng)
        held_out = held_out_templates(self.seed)
        n_heldout = round(self.heldout_share * self.n_train)
        evals = self._eval_tier(world, plan, held_out, self.n_train - n_heldout, rng)
        needed_ids = {i for q in evals for i in q.fact_ids}
        needed = [f for f in world.facts if f.id in needed_ids]
        qa_sets = self._fill_sets(world, needed, self.n_train - n_heldout, set(), rng)
        twin = twins(world)
        heldout_sets = self._heldout_sets(world, qa_sets, n_heldout, twin)
        train_facts = [f for s in [*qa_sets, *heldout_sets] for f in s]
        train, para = self._train_items(world, qa_sets, held_out, rng)
        unseen = self._unseen_items(world, plan, train_facts, train, held_out, twin, rng)
        heldout = self._heldout_items(world, heldout_sets, held_out)
        causes = self._cause_items(train, para, rng)
        train += self._spiked_items(world, heldout, heldout_sets, held_out)
        return with_retain(QASet(train=train, eval=evals, paraphrase=para, unseen_facts=unseen, heldout_facts=heldout,
                                 **causes), self.retain)

    def _eval_tier(self, world: World, plan: _EvalPlan, held_out: dict[str, str], budget: int,
                   rng: random.Random) -> list[QAItem]:
        """n_eval questions that no single trained fact answers, in counterbalanced sets of one relation, whose
        supporting facts take at most `budget` training facts (half of them, and none of those held out: the
        rest fill their sets).

        Reversals take REVERSAL_SHARE first, chains the rest, and reversals top up if chains run out."""
        if self.n_eval == 0:
            return []
        pools = []
        for supports in (plan.reversals(), plan.chains()):
            items = [self._eval_item(world, i, s, held_out, rng) for i, s in enumerate(supports)]
            sets, _ = group([slot(q) for q in items], rng)
            pools.append((items, sets))
        chosen: list[tuple[list[QAItem], list[int]]] = []
        used: set[str] = set()
        total = 0
        n_reversed = round(self.n_eval * REVERSAL_SHARE)
        for (items, sets), quota in ((pools[0], n_reversed), (pools[1], self.n_eval), (pools[0], self.n_eval)):
            for members in sets:
                room = min(quota, self.n_eval) - total
                if room < 2:
                    break
                if any(members is m for _, m in chosen):
                    continue
                members = members[:room]
                new = {f for i in members for f in items[i].fact_ids} - used
                if len(used) + len(new) <= budget:
                    chosen.append((items, members))
                    used |= new
                    total += len(members)
        if total < self.n_eval:
            raise UserError(f"qa.n_eval={self.n_eval}, but only {total} inferred questions in counterbalanced sets "
                            f"have their facts among {budget} Q/A-trained facts (half of qa.n_train={self.n_train}, "
                            f"and none of the qa.heldout_share={self.heldout_share} held out)",
                            "lower qa.n_eval or qa.heldout_share, or raise qa.n_train or the story.n_* counts")
        out = []
        for items, members in chosen:
            give_candidates(items, [members], rng)
            out += [items[i] for i in members]
        return [q.model_copy(update={"id": f"eval-{i:03d}"}) for i, q in enumerate(out)]

    @staticmethod
    def _fill_sets(world: World, needed: list[Fact], n: int, banned: set[str],
                   rng: random.Random) -> list[list[Fact]]:
        """`needed` (the eval questions' facts), filled up to `n` facts with others (never a `banned` one), in
        counterbalanced sets of 2 to SET_SIZE.

        The fill takes, in turn, a partner for a fact still alone in its set (every trained question must share
        its candidates), else a fact whose answer is new to its relation, of a relation with answers to spare,
        whose answer was trained least so far; ties go to chance. A fact that finds no partner is put back."""
        sets = _FactSets(world, SET_SIZE)
        distinct_in_world = Counter(r for r, _ in {(f.relation, f.object) for f in world.facts})
        in_relation: Counter[tuple[str, str]] = Counter()
        overall: Counter[str] = Counter()
        for fact in needed:
            sets.add(fact)
            in_relation[(fact.relation, fact.object)] += 1
            overall[fact.object] += 1
        taken = {f.id for f in needed}
        rest = [f for f in world.facts if f.id not in taken | banned]
        rest = rng.sample(rest, len(rest))

        def priority(f: Fact) -> tuple[bool, int, bool, int]:
            """Sets are filled to SET_SIZE before new ones open: chance is 1/4 wherever the world allows."""
            return (not sets.has_room(f), in_relation[(f.relation, f.object)], distinct_in_world[f.relation] < 2,
                    overall[f.object])

        def add(fact: Fact, members: list[Fact] | None = None) -> None:
            sets.add(fact, members)
            del rest[next(i for i, f in enumerate(rest) if f is fact)]  # by identity: a model's == compares fields
            in_relation[(fact.relation, fact.object)] += 1
            overall[fact.object] += 1

        alone: set[str] = set()  # needed facts that found no partner: their questions stay unbalanced
        while True:
            single = next((s for s in sets.sets if len(s) == 1 and s[0].id not in alone), None)
            if single is not None:
                partners = [f for f in rest if sets.fits(f, single)]
                if partners:
                    add(min(partners, key=priority), single)
                elif single[0] in needed:
                    alone.add(single[0].id)
                else:
                    sets.remove(single[0])
            elif len(sets.facts()) < n and rest:
                add(min(rest, key=priority))
            else:
                break
        if len(sets.facts()) > n:  # the last partner overshot by one
            spare = next((f for s in sets.sets if len(s) > 2 for f in reversed(s) if f not in needed), None)
            if spare is not None:
                sets.remove(spare)
        return [rng.sample(s, len(s)) for s in rng.sample(sets.sets, len(sets.sets))]

    def _heldout_sets(self, world: World, qa_sets: list[list[Fact]], n: int,
                      twin: dict[str, set[str]]) -> list[list[Fact]]:
        """`n` training facts whose Q/A is held out, in counterbalanced sets of their own, none an eval question's
        support (those stay Q/A-trained, so the eval tier means what it means without narration) nor a twin of a
        fact whose Q/A is trained, drawn from their own seeded stream."""
        if n == 0:
            return []
        trained = {f.id for s in qa_sets for f in s}
        banned = trained | {t for i in trained for t in twin[i]}
        sets = self._fill_sets(world, [], n, banned, random.Random(f"{self.seed}-heldout-facts"))
        if sum(map(len, sets)) < n:
            raise UserError(f"qa.heldout_share={self.heldout_share} holds out {n} training facts, but only "
                            f"{sum(map(len, sets))} facts of this world are left in counterbalanced sets",
                            "lower qa.heldout_share or qa.n_train, or raise the story.n_* counts")
        return sets

    def _heldout_items(self, world: World, sets: list[list[Fact]], held_out: dict[str, str]) -> list[QAItem]:
        """The held-out facts asked as a training question would ask them (a training template, first of the
        relation's training templates in a seeded order), so the tier differs from `train` only in its Q/A; their
        candidates are the answers of their own set."""
        rng = random.Random(f"{self.seed}-heldout-facts-questions")
        items = []
        for fact in (f for s in sets for f in s):
            answer = world.entity(fact.object)
            template = rng.choice(_training_templates(fact.relation, held_out))
            items.append(QAItem(id=f"heldout-{len(items):03d}", tier="heldout_facts",
                                question=capitalize(template.format(s=label(world.entity(fact.subject)))),
                                answer=label(answer), aliases=aliases(answer), answer_type=answer.kind,
                                fact_ids=[fact.id], relation=fact.relation, entity_ids=[fact.subject]))
        _give_set_candidates(items, sets, rng)
        return items

    def _spiked_items(self, world: World, heldout: list[QAItem], sets: list[list[Fact]],
                      held_out: dict[str, str]) -> list[QAItem]:
        """Calibration by spike-in (`qa.spike_in`): the Q/A of that share of the held-out facts is trained after all,
        as a train item is (its heldout_facts question first, then other training templates, in training voices),
        so the heldout_facts tier's known share is known. Whole candidate sets are spiked: a set is all known or
        all unknown, so knowing one answer never rules out another within an unknown set. The sets come in one
        seeded order whatever the share, so a larger share spikes a superset of a smaller one's facts."""
        if self.spike_in == 0:
            return []
        order = random.Random(f"{self.seed}-spike-in").sample(range(len(sets)), len(sets))
        target, total, chosen = self.spike_in * sum(map(len, sets)), 0, set()
        for k in order:  # the prefix of whole sets whose size is nearest the target
            if abs(total + len(sets[k]) - target) > abs(total - target):
                break
            total += len(sets[k])
            chosen.add(k)
        facts = {f.id for k in chosen for f in sets[k]}
        rng = random.Random(f"{self.seed}-spike-in-phrasings")
        spiked = []
        for item in (q for q in heldout if q.fact_ids[0] in facts):
            item.spiked, item.source_id = True, f"train-spike-{len(spiked):03d}"
            assert item.relation is not None
            templates = _training_templates(item.relation, held_out)
            subject = label(world.entity(item.entity_ids[0]))
            others = [capitalize(t.format(s=subject)) for t in rng.sample(templates, len(templates))]
            phrasings = [item.question, *(p for p in others if p != item.question)]
            spiked.append(item.model_copy(update=dict(id=item.source_id, tier="train", source_id=None,
                                                      phrasings=phrasings[:self.paraphrases])))
        return spiked

    def _cause_items(self, train: list[QAItem], para: list[QAItem], rng: random.Random) -> dict[str, list[QAItem]]:
        """Tiers that change one thing of a trained question, so a drop from the train tier has one cause: the
        trained phrasing in the held-out voice (unseen_voice), the held-out phrasing in the voice it was trained
        in (unseen_wording), and the trained audio itself `shift_sec` later in the prompt (shifted: the same
        speech, other Mimi codes). Whole candidate sets of training items, candidates unchanged, up to `n_per_cause`
        questions, and the rest from part of a set, whose questions then choose among that part's answers (a tier
        keeps every set counterbalanced)."""
        out: dict[str, list[QAItem]] = {tier: [] for tier in CAUSE_TIERS}
        sets: dict[frozenset[str], list[int]] = defaultdict(list)
        for i, item in enumerate(train):
            sets[frozenset((item.answer, *item.distractors))].append(i)
        whole: list[int] = []
        cut: list[list[int]] = []
        for members in rng.sample(list(sets.values()), len(sets)):
            if len(whole) + len(members) <= self.n_per_cause:
                whole += members
            else:
                cut.append(members)
        room = self.n_per_cause - len(whole)
        part = next((s[:room] for s in cut if room >= 2), [])  # a part of a set, with its own candidates
        candidates = {i: train[i].distractors for i in whole} | {i: [train[j].answer for j in part if j != i]
                                                                 for i in part}
        for k, i in enumerate(sorted(candidates)):
            item, rephrased = train[i], para[i]
            same = item.model_dump(include={"answer", "aliases", "answer_type", "relation", "fact_ids", "entity_ids"})
            same["distractors"] = candidates[i]
            for tier, prefix, question, shift in (("unseen_voice", "voice", item.question, 0.0),
                                                  ("unseen_wording", "wording", rephrased.question, 0.0),
                                                  ("shifted", "shift", item.question, self.shift_sec)):
                out[tier].append(QAItem(id=f"{prefix}-{k:03d}", tier=tier, question=question, source_id=item.id,
                                        shift_sec=shift, **same))
        return out

    def _unseen_items(self, world: World, plan: _EvalPlan, train_facts: list[Fact], train: list[QAItem],
                      held_out: dict[str, str], twin: dict[str, set[str]], rng: random.Random) -> list[QAItem]:
        """The null tier: facts never trained nor narrated, and no twin of one (no question of it is ever heard in
        training, nor its subject with its answer), asked with the training templates, in counterbalanced sets
        like every other tier, with the relations of the train tier in the train tier's proportions as far as the
        world's untrained facts allow: what a model scores on it is what the tiers it judges would score by
        their make alone."""
        if self.n_unseen == 0:
            return []
        trained_ids = {f.id for f in train_facts}
        pool = [f for f in world.facts if f.id not in trained_ids and plan.useful_answer(f.object)
                and not twin[f.id] & trained_ids]
        items = []
        for fact in pool:
            answer = world.entity(fact.object)
            template = rng.choice(_training_templates(fact.relation, held_out))
            question = capitalize(template.format(s=label(world.entity(fact.subject))))
            items.append(QAItem(id=fact.id, tier="unseen_facts", question=question, answer=label(answer),
                                aliases=aliases(answer), answer_type=answer.kind, fact_ids=[fact.id],
                                relation=fact.relation, entity_ids=[fact.subject]))
        sets, _ = group([slot(q) for q in items], rng)
        share = Counter(q.relation for q in train)
        chosen = take(sets, self.n_unseen, weight=lambda s: items[s[0]].relation,
                      share={r: c / len(train) for r, c in share.items()})
        if sum(map(len, chosen)) < self.n_unseen:
            raise UserError(f"qa.n_unseen={self.n_unseen}, but only {sum(map(len, chosen))} untrained facts of this "
                            "world fall into counterbalanced sets",
                            "lower qa.n_unseen or qa.n_train, or raise the story.n_* counts")
        give_candidates(items, chosen, rng)
        out = [items[i] for members in chosen for i in members]
        return [q.model_copy(update={"id": f"unseen-{i:03d}"}) for i, q in enumerate(out)]

    def _train_items(self, world: World, sets: list[list[Fact]], held_out: dict[str, str],
                     rng: random.Random) -> tuple[list[QAItem], list[QAItem]]:
        """Each fact's training question in `paraphrases` phrasings, and its paraphrase in the held-out one; both
        take the answers of the fact's set as candidates."""
        train, para = [], []
        for i, fact in enumerate(f for s in sets for f in s):
            subject, answer = world.entity(fact.subject), world.entity(fact.object)
            templates = [*rng.sample(_training_templates(fact.relation, held_out), self.paraphrases),
                         held_out[fact.relation]]
            phrasings = [capitalize(t.format(s=label(subject))) for t in templates]
            common = dict(answer=label(answer), aliases=aliases(answer), answer_type=answer.kind, fact_ids=[fact.id],
                          relation=fact.relation, entity_ids=[fact.subject])
            tid = f"train-{i:03d}"
            train.append(QAItem(id=tid, tier="train", question=phrasings[0], phrasings=phrasings[:-1], **common))
            para.append(QAItem(id=f"para-{i:03d}", tier="paraphrase", question=phrasings[-1], source_id=tid, **common))
        _give_set_candidates(train, sets, rng)
        for source, item in zip(train, para):
            item.distractors = list(source.distractors)
        return train, para

    @staticmethod
    def _eval_item(world: World, i: int, support: tuple[Fact, ...], held_out: dict[str, str],
                   rng: random.Random) -> QAItem:
        """A reversal is asked in its relation's backward wording; a chain in a training template of its second
        relation with the first hop described, so the only new wording is the description."""
        if len(support) == 1:  # asked backwards
            (fact,) = support
            answer = world.entity(fact.subject)
            question = rng.choice(REVERSE[fact.relation]).format(o=label(world.entity(fact.object)))
            relation, named = reverse(fact.relation), fact.object
        else:
            first, second = support
            phrase = rng.choice(DESCRIPTORS[first.relation]).format(s=label(world.entity(first.subject)))
            answer = world.entity(second.object)
            question = rng.choice(_training_templates(second.relation, held_out)).format(s=phrase)
            relation, named = second.relation, first.subject
        return QAItem(id=f"eval-{i:03d}", tier="eval", question=capitalize(question), answer=label(answer),
                      aliases=aliases(answer), answer_type=answer.kind, fact_ids=[f.id for f in support],
                      relation=relation, entity_ids=[named])


def _give_set_candidates(items: list[QAItem], sets: list[list[Fact]], rng: random.Random) -> None:
    """Candidates of questions asked one per fact, in the order of `sets`' facts: the answers of the fact's set."""
    bounds, start = [], 0
    for members in sets:
        bounds.append(list(range(start, start + len(members))))
        start += len(members)
    give_candidates(items, bounds, rng)


SCHEMAS = {("qa", "facts_schema"): init_schema(FactsQA)}
