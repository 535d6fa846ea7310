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
Distractors are answers the trained facts give for the question's own relation, matched to the gold (kind word,
training frequency, length: `_Candidates`), so that nothing but the question picks the gold; a candidate never
trained as an answer of that relation is flagged in the item (QASet.untrained_candidates).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.retain import with_retain
from moshi_knowledge.qa.schema import CAUSE_TIERS, QAItem, QASet
from moshi_knowledge.specs import init_schema
from moshi_knowledge.world.procedural import ARTIFACT_NOUNS, BATTLE_SITES, INSTITUTION_TYPES
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

KIND_WORDS = frozenset((*INSTITUTION_TYPES, *ARTIFACT_NOUNS, *BATTLE_SITES))
REVERSAL_SHARE = 0.25  # of eval questions; the rest chain two facts
N_DISTRACTORS = 3

T = TypeVar("T")


def reverse(relation: str) -> str:
    """The relation a backward question asks: its answers are the subjects of `relation`'s facts."""
    return f"{relation}^-1"


def kind_word(entity: Entity) -> str | None:
    """The fixed word of a label that says what sort of thing it names ("King", "wyrm", "Order", "Pass"): a prior
    that picks answers by it must find every candidate alike. None for plain names and years."""
    if entity.title:
        return entity.title
    words = [w for w in entity.name.split() if w in KIND_WORDS]
    return words[0] if words else None


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
        return self.kind_sizes[self.world.entity(entity_id).kind] > N_DISTRACTORS

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

    def choose(self, n_eval: int, budget: int) -> list[tuple[Fact, ...]]:
        """Up to n_eval supports whose facts fit in `budget` training items.

        Reversals take their share first, chains fill the rest, and reversals top up if chains run out.
        """
        reversals, chains = self.reversals(), self.chains()
        chosen: list[tuple[Fact, ...]] = []
        used: set[str] = set()
        for pool, quota in ((reversals, round(n_eval * REVERSAL_SHARE)), (chains, n_eval), (reversals, n_eval)):
            for support in pool:
                if len(chosen) >= quota:
                    break
                new = {f.id for f in support} - used
                if support not in chosen and len(used) + len(new) <= budget:
                    chosen.append(support)
                    used |= new
        return chosen


def held_out_templates(seed: int) -> dict[str, str]:
    """Per relation, the one question template training never uses: the paraphrase and unseen_wording tiers ask
    with it, so their wording is new to the relation, not only to the fact (otherwise nearly every paraphrase
    template was trained for other facts of its relation). Drawn from its own seeded stream."""
    rng = random.Random(f"{seed}-held-out-templates")
    return {relation: rng.choice(templates) for relation, templates in sorted(QUESTIONS.items())}


def _training_templates(relation: str, held_out: dict[str, str]) -> list[str]:
    return [t for t in QUESTIONS[relation] if t != held_out[relation]]


class FactsQA:
    """qa=facts: every tier's questions from the world's facts (needs story=procedural)."""

    def __init__(self, seed: int, n_train: int = 100, n_eval: int = 20, paraphrases: int = 3,
                 retain: bool = True, n_unseen: int = 20, n_per_cause: int = 20, shift_sec: float = 0.4,
                 heldout_share: float = 0.0) -> None:
        most = min(len(t) for t in QUESTIONS.values()) - 1
        if not 1 <= paraphrases <= most:
            raise UserError(f"qa.paraphrases is {paraphrases}; qa=facts has templates for 1 to {most}",
                            f"set qa.paraphrases between 1 and {most}")
        if n_per_cause < 0 or shift_sec <= 0:
            raise UserError(f"qa.n_per_cause={n_per_cause}, qa.shift_sec={shift_sec}: need n_per_cause >= 0 and "
                            "shift_sec > 0", "set qa.n_per_cause to 0 or more and qa.shift_sec to a positive time")
        if n_train < 1 or n_eval < 0 or n_unseen < 0:
            raise UserError(f"qa.n_train={n_train}, qa.n_eval={n_eval}, qa.n_unseen={n_unseen}: need n_train >= 1 "
                            "and n_eval, n_unseen >= 0",
                            "set qa.n_train to at least 1 and qa.n_eval and qa.n_unseen to 0 or more")
        if not 0.0 <= heldout_share < 1.0:
            raise UserError(f"qa.heldout_share={heldout_share}: the share of training facts whose Q/A is held out "
                            "must be in [0, 1)", "set qa.heldout_share to 0 (every Q/A trained) or up to 0.9")
        self.seed = seed
        self.heldout_share = heldout_share
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
        supports = plan.choose(self.n_eval, self.n_train)
        if len(supports) < self.n_eval:
            raise UserError(f"qa.n_eval={self.n_eval}, but only {len(supports)} held-out questions fit "
                            f"{self.n_train} training facts of this world",
                            "lower qa.n_eval or raise qa.n_train")
        train_facts = self._train_facts(world, supports, rng)
        heldout_facts = self._heldout_facts(train_facts, supports)
        heldout_ids = {f.id for f in heldout_facts}
        held_out = held_out_templates(self.seed)
        train, para = self._train_items(world, [f for f in train_facts if f.id not in heldout_ids], held_out, rng)
        evals = [self._eval_item(world, i, s, rng) for i, s in enumerate(supports)]
        candidates = _Candidates(world, train_facts, train)
        for item in (*train, *evals):
            item.distractors = candidates.pick(item, rng)
        for source, item in zip(train, para):
            item.distractors = list(source.distractors)
        unseen = self._unseen_items(world, plan, train_facts, train, held_out, rng)
        for item in unseen:
            item.distractors = candidates.pick(item, rng)
        heldout = self._heldout_items(world, heldout_facts, held_out)
        for item in heldout:
            item.distractors = candidates.pick(item, rng)
        causes = self._cause_items(train, para)
        return with_retain(QASet(train=train, eval=evals, paraphrase=para, unseen_facts=unseen, heldout_facts=heldout,
                                 **causes), self.retain)

    def _heldout_facts(self, train_facts: list[Fact], supports: list[tuple[Fact, ...]]) -> list[Fact]:
        """`heldout_share` of the training facts, none of them an eval question's support (those stay Q/A-trained,
        so the eval tier means what it means without narration), drawn from their own seeded stream: the default
        (no held-out facts) builds exactly the set it built before the tier existed."""
        n = round(self.heldout_share * len(train_facts))
        if n == 0:
            return []
        needed = {f.id for s in supports for f in s}
        pool = [f for f in train_facts if f.id not in needed]
        if n > len(pool) or n >= len(train_facts):
            raise UserError(f"qa.heldout_share={self.heldout_share} holds out {n} of {len(train_facts)} training "
                            f"facts, but only {len(pool)} support no eval question and one Q/A must stay trained",
                            "lower qa.heldout_share or qa.n_eval, or raise qa.n_train")
        return random.Random(f"{self.seed}-heldout-facts").sample(pool, n)

    def _heldout_items(self, world: World, facts: list[Fact], held_out: dict[str, str]) -> list[QAItem]:
        """The held-out facts asked as a training question would ask them (a training template, first of the
        relation's training templates in a seeded order), so the tier differs from `train` only in its Q/A."""
        rng = random.Random(f"{self.seed}-heldout-facts-questions")
        items = []
        for i, fact in enumerate(facts):
            answer = world.entity(fact.object)
            template = rng.choice(_training_templates(fact.relation, held_out))
            items.append(QAItem(id=f"heldout-{i:03d}", tier="heldout_facts",
                                question=capitalize(template.format(s=label(world.entity(fact.subject)))),
                                answer=label(answer), aliases=aliases(answer), answer_type=answer.kind,
                                fact_ids=[fact.id], relation=fact.relation, entity_ids=[fact.subject]))
        return items

    def _cause_items(self, train: list[QAItem], para: list[QAItem]) -> dict[str, list[QAItem]]:
        """Tiers that change one thing of a trained question, so a drop from the train tier has one cause: the
        trained phrasing in the held-out voice (unseen_voice), the held-out phrasing in the voice it was trained
        in (unseen_wording), and the trained audio itself `shift_sec` later in the prompt (shifted: the same
        speech, other Mimi codes). The first `n_per_cause` training items, candidates unchanged."""
        out: dict[str, list[QAItem]] = {tier: [] for tier in CAUSE_TIERS}
        for i, (item, rephrased) in enumerate(zip(train[:self.n_per_cause], para)):
            same = item.model_dump(include={"answer", "aliases", "answer_type", "relation", "distractors", "fact_ids",
                                            "entity_ids"})
            for tier, prefix, question, shift in (("unseen_voice", "voice", item.question, 0.0),
                                                  ("unseen_wording", "wording", rephrased.question, 0.0),
                                                  ("shifted", "shift", item.question, self.shift_sec)):
                out[tier].append(QAItem(id=f"{prefix}-{i:03d}", tier=tier, question=question, source_id=item.id,
                                        shift_sec=shift, **same))
        return out

    def _unseen_items(self, world: World, plan: _EvalPlan, train_facts: list[Fact], train: list[QAItem],
                      held_out: dict[str, str], rng: random.Random) -> list[QAItem]:
        """The null tier: facts never trained, asked with the training templates (no question of it is ever heard
        in training, nor its subject with its answer), of every relation in turn.

        Facts whose answer was trained for another subject of the same relation come first: their candidates then
        meet the same contract as the trained tiers' (gold included), so the tier's score is what the priors give.
        """
        trained_ids = {f.id for f in train_facts}
        trained = {(q.relation, q.answer) for q in train}
        pool = [f for f in world.facts if f.id not in trained_ids and plan.useful_answer(f.object)]
        if len(pool) < self.n_unseen:
            raise UserError(f"qa.n_unseen={self.n_unseen}, but only {len(pool)} facts of this world are untrained",
                            "lower qa.n_unseen or qa.n_train, or raise the story.n_* counts")
        ordered = _round_robin(pool, lambda f: f.relation, rng)
        ordered.sort(key=lambda f: (f.relation, label(world.entity(f.object))) not in trained)
        items = []
        for i, fact in enumerate(ordered[:self.n_unseen]):
            answer = world.entity(fact.object)
            template = rng.choice(_training_templates(fact.relation, held_out))
            question = capitalize(template.format(s=label(world.entity(fact.subject))))
            items.append(QAItem(id=f"unseen-{i:03d}", tier="unseen_facts", question=question, answer=label(answer),
                                aliases=aliases(answer), answer_type=answer.kind, fact_ids=[fact.id],
                                relation=fact.relation, entity_ids=[fact.subject]))
        return items

    def _train_facts(self, world: World, supports: list[tuple[Fact, ...]], rng: random.Random) -> list[Fact]:
        """The eval supports' facts, filled up with others, in random order.

        Multiple choice must have nothing but the question to go by, so the fill takes, in turn: a fact whose answer
        is new to its relation (an answer trained for many subjects would win on frequency alone), of a relation
        with enough distinct answers for same-relation distractors, preferably the one closest to having them,
        whose answer has been trained least often so far; ties are broken at random.
        """
        enough = N_DISTRACTORS + 1
        distinct_in_world = Counter(r for r, _ in {(f.relation, f.object) for f in world.facts})
        needed = {f.id for s in supports for f in s}
        chosen = [f for f in world.facts if f.id in needed]
        in_relation = Counter((f.relation, f.object) for f in chosen)
        overall = Counter(f.object for f in chosen)

        def priority(f: Fact) -> tuple[int, bool, int, int]:
            distinct = sum(1 for r, _ in in_relation if r == f.relation)
            short = -distinct if distinct < enough else 1  # the relation closest to enough answers fills first
            return (in_relation[(f.relation, f.object)], distinct_in_world[f.relation] < enough, short,
                    overall[f.object])

        rest = rng.sample([f for f in world.facts if f.id not in needed], len(world.facts) - len(needed))
        for _ in range(self.n_train - len(chosen)):
            fact = min(rest, key=priority)
            rest.remove(fact)
            chosen.append(fact)
            in_relation[(fact.relation, fact.object)] += 1
            overall[fact.object] += 1
        return rng.sample(chosen, len(chosen))

    def _train_items(self, world: World, facts: list[Fact], held_out: dict[str, str],
                     rng: random.Random) -> tuple[list[QAItem], list[QAItem]]:
        """Each fact's training question in `paraphrases` phrasings, and its paraphrase in the held-out one."""
        train, para = [], []
        for i, fact in enumerate(facts):
            subject, answer = world.entity(fact.subject), world.entity(fact.object)
            templates = [*rng.sample(_training_templates(fact.relation, held_out), self.paraphrases),
                         held_out[fact.relation]]
            phrasings = [capitalize(t.format(s=label(subject))) for t in templates]
            common = dict(answer=label(answer), aliases=aliases(answer), answer_type=answer.kind, fact_ids=[fact.id],
                          relation=fact.relation, entity_ids=[fact.subject])
            tid = f"train-{i:03d}"
            train.append(QAItem(id=tid, tier="train", question=phrasings[0], phrasings=phrasings[:-1], **common))
            para.append(QAItem(id=f"para-{i:03d}", tier="paraphrase", question=phrasings[-1], source_id=tid, **common))
        return train, para

    @staticmethod
    def _eval_item(world: World, i: int, support: tuple[Fact, ...], rng: random.Random) -> QAItem:
        if len(support) == 1:  # asked backwards
            (fact,) = support
            answer = world.entity(fact.subject)
            question = rng.choice(REVERSE[fact.relation]).format(o=label(world.entity(fact.object)))
            relation, named = reverse(fact.relation), fact.object
        else:
            first, second = support
            phrase = rng.choice(DESCRIPTORS[first.relation]).format(s=label(world.entity(first.subject)))
            answer = world.entity(second.object)
            question = rng.choice(QUESTIONS[second.relation]).format(s=phrase)
            relation, named = second.relation, first.subject
        return QAItem(id=f"eval-{i:03d}", tier="eval", question=capitalize(question), answer=label(answer),
                      aliases=aliases(answer), answer_type=answer.kind, fact_ids=[f.id for f in support],
                      relation=relation, entity_ids=[named])


class _Candidates:
    """Distractor choice that leaves nothing but the question to pick the gold by.

    A candidate must not be findable without the question, so distractors are answers the trained facts give for
    the item's own relation (its reverse for a backward question), with the same kind word as the gold
    ("King", "wyrm", "Order") where they can, and then the closest to the gold in how often they were trained as
    an answer (over all relations, then within the relation) and in length (characters, a proxy for tokens).
    Only when a relation has too few trained answers do other answers of the same kind fill in, then untrained
    entities of that kind; QASet flags every candidate that was not trained as an answer of the item's relation.
    """

    def __init__(self, world: World, facts: Sequence[Fact], train: Sequence[QAItem]) -> None:
        self.count = Counter(item.answer for item in train)  # training items answered by it, all relations
        self.in_relation: dict[str, Counter[str]] = defaultdict(Counter)
        for fact in facts:
            subject, obj = world.entity(fact.subject), world.entity(fact.object)
            self.in_relation[fact.relation][label(obj)] += 1
            self.in_relation[reverse(fact.relation)][label(subject)] += 1
        self.kind_word = {label(e): kind_word(e) for e in world.entities}
        self.of_kind: dict[str, set[str]] = defaultdict(set)
        for e in world.entities:
            self.of_kind[e.kind].add(label(e))
        self.trained_of_kind: dict[str, set[str]] = defaultdict(set)
        for item in train:
            self.trained_of_kind[item.answer_type].add(item.answer)

    def pick(self, item: QAItem, rng: random.Random) -> list[str]:
        """N_DISTRACTORS candidates for `item` (fewer only when its kind has too few entities)."""
        assert item.relation is not None, f"{item.id}: qa=facts items name their relation"
        gold = {a.lower() for a in (item.answer, *item.aliases)}
        relation = self.in_relation[item.relation]
        same_word = {a for a in relation if self.kind_word[a] == self.kind_word[item.answer]}
        trained = self.trained_of_kind[item.answer_type]
        pools = (same_word, set(relation), {a for a in trained if self.kind_word[a] == self.kind_word[item.answer]},
                 trained, self.of_kind[item.answer_type])
        picked: list[str] = []
        for pool in pools:
            rest = [a for a in sorted(pool) if a.lower() not in gold and a not in item.question and a not in picked]
            rng.shuffle(rest)  # ties go to chance, not to the alphabet
            rest.sort(key=lambda a: (abs(self.count[a] - self.count[item.answer]),
                                     abs(relation[a] - relation[item.answer]), abs(len(a) - len(item.answer))))
            picked += rest[:N_DISTRACTORS - len(picked)]
        return picked


SCHEMAS = {("qa", "facts_schema"): init_schema(FactsQA)}
