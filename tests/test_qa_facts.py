"""qa=facts: tiers, counts, held-out phrasings, eval chains that really need the trained facts, distractors."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.facts import QUESTIONS, FactsQA, held_out_templates
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.speech.script import question_line_id, question_lines
from moshi_knowledge.world.procedural import ProceduralStory
from moshi_knowledge.world.prose import capitalize, label
from moshi_knowledge.world.schema import Entity, Fact, Story, World


@pytest.fixture(scope="module")
def qa(story: Story) -> QASet:
    return FactsQA(seed=0).build(story)


def _facts_by_id(world: World) -> dict[str, Fact]:
    return {f.id: f for f in world.facts}


def _names(item: QAItem, entity: Entity) -> bool:
    """The answer string refers to this entity (its invented name or its year)."""
    return entity.name in item.answer and entity.name in item.aliases


def test_counts_and_ids(qa: QASet) -> None:
    assert [q.id for q in qa.train] == [f"train-{i:03d}" for i in range(100)]
    assert [q.id for q in qa.eval] == [f"eval-{i:03d}" for i in range(20)]
    assert [q.id for q in qa.paraphrase] == [f"para-{i:03d}" for i in range(100)]
    for q in qa.train:
        assert len(q.phrasings) == 3 and len(set(q.phrasings)) == 3 and q.phrasings[0] == q.question
        assert len(q.fact_ids) == 1
    assert len({q.fact_ids[0] for q in qa.train}) == 100  # one item per fact


def test_train_answers_are_the_facts_objects(qa: QASet, world: World) -> None:
    facts = _facts_by_id(world)
    for q in qa.train:
        fact = facts[q.fact_ids[0]]
        answer = world.entity(fact.object)
        assert _names(q, answer) and q.answer_type == answer.kind
        subject = world.entity(fact.subject)
        assert all(subject.name in p for p in q.phrasings)
        assert q.answer not in q.question and len(q.answer.split()) <= 5
        if answer.kind == "person" and answer.title:
            assert {f"{answer.title} {answer.name}", answer.name} <= set(q.aliases)
        if answer.kind == "year":
            assert {answer.name, f"the year {answer.name}"} <= set(q.aliases)


def test_every_relation_has_enough_question_templates(world: World) -> None:
    for relation in {f.relation for f in world.facts}:
        assert len(set(QUESTIONS[relation])) >= 3 + 1, relation


def _template_of(question: str, relation: str) -> str:
    """The template of QUESTIONS[relation] a question was written from (its subject matched as any text)."""
    found = [t for t in QUESTIONS[relation]
             if re.fullmatch(re.escape(capitalize(t)).replace(re.escape("{s}"), ".+"), question)]
    assert len(found) == 1, (question, found)
    return found[0]


def test_held_out_templates_are_never_trained_for_their_relation(qa: QASet) -> None:
    """The paraphrase and unseen_wording tiers ask in a wording that no training question of the relation uses
    (before, nearly every paraphrase template had been trained for other facts of its relation); the null tier
    asks like training does."""
    held_out = held_out_templates(0)
    trained = {(q.relation, _template_of(p, q.relation)) for q in qa.train for p in q.phrasings}
    for q in [*qa.paraphrase, *qa.unseen_wording]:
        assert _template_of(q.question, q.relation) == held_out[q.relation]
    assert not any((relation, template) in trained for relation, template in held_out.items())
    assert all((q.relation, _template_of(q.question, q.relation)) in trained for q in qa.unseen_facts)
    assert len({held_out[q.relation] for q in qa.paraphrase}) > 3, "the held-out wording differs by relation"


def test_paraphrase_tier_holds_out_one_unseen_phrasing(qa: QASet) -> None:
    train = {q.id: q for q in qa.train}
    assert len(qa.paraphrase) == len(qa.train)
    for p in qa.paraphrase:
        source = train[p.source_id]
        assert p.question not in source.phrasings
        assert p.phrasings == [p.question]
        assert (p.answer, p.aliases, p.distractors, p.fact_ids, p.answer_type) == (
            source.answer, source.aliases, source.distractors, source.fact_ids, source.answer_type)


def test_eval_support_is_trained_and_chains_to_the_answer(qa: QASet, world: World) -> None:
    """Walk the world's facts from each eval item's fact_ids and check they yield its gold answer."""
    facts = _facts_by_id(world)
    trained = {fid for q in qa.train for fid in q.fact_ids}
    linked = {(f.subject, f.object) for f in world.facts}
    kinds = defaultdict(int)
    for q in qa.eval:
        assert q.fact_ids and set(q.fact_ids) <= trained, q.id
        support = [facts[fid] for fid in q.fact_ids]
        assert q.answer not in q.question
        if len(support) == 1:  # reversal: the question names the object, the answer is the subject
            (fact,) = support
            assert world.entity(fact.object).name in q.question
            assert _names(q, world.entity(fact.subject))
            same_object = [f for f in world.facts if f.relation == fact.relation and f.object == fact.object]
            assert same_object == [fact]  # so the backward question has one answer
            kinds["reversal"] += 1
        else:
            for hop, nxt in zip(support, support[1:]):
                assert hop.object == nxt.subject
                assert world.entity(hop.object).name not in q.question  # the bridge stays hidden
            start, end = support[0].subject, support[-1].object
            assert world.entity(start).name in q.question
            assert _names(q, world.entity(end)) and q.answer_type == world.entity(end).kind
            assert (start, end) not in linked  # no single fact shortcuts the chain
            kinds["chain"] += 1
    assert kinds["reversal"] >= 3 and kinds["chain"] >= 10


def test_eval_questions_are_new(qa: QASet) -> None:
    seen = {p for q in [*qa.train, *qa.paraphrase] for p in q.phrasings}
    questions = [q.question for q in qa.eval]
    assert len(set(questions)) == len(questions)
    assert not seen & set(questions)


def _relation(item: QAItem, facts: dict[str, Fact]) -> str:
    """The relation an item asks, read from the world: a one-fact eval item is asked backwards."""
    relation = facts[item.fact_ids[-1]].relation
    return f"{relation}^-1" if item.tier == "eval" and len(item.fact_ids) == 1 else relation


def _scored(qa: QASet) -> list[QAItem]:
    return [*qa.train, *qa.paraphrase, *qa.eval, *qa.unseen_facts]


def test_every_candidate_is_the_answer_of_another_question_of_its_tier_and_relation(qa: QASet, world: World) -> None:
    """Counterbalanced sets (qa/balance.py): a question's distractors are the golds of the other questions of its
    set, which ask the same relation; forward candidates of the trained tiers are all trained answers."""
    facts = _facts_by_id(world)
    trained: dict[str, set[str]] = defaultdict(set)
    for q in qa.train:
        trained[_relation(q, facts)].add(q.answer)
    for tier in ("train", "paraphrase", "eval", "unseen_facts"):
        items = getattr(qa, tier)
        golds = defaultdict(set)
        for q in items:
            golds[q.relation].add(q.answer)
        for q in items:
            assert q.relation == _relation(q, facts), q.id
            assert 1 <= len(q.distractors) <= 3 and len(set(q.distractors)) == len(q.distractors), q.id
            assert set(q.distractors) <= golds[q.relation], q.id
            gold = {a.lower() for a in [q.answer, *q.aliases]}
            assert not gold & {d.lower() for d in q.distractors} and not any(d in q.question for d in q.distractors)
            untrained = [c for c in [q.answer, *q.distractors] if c not in trained[q.relation]]
            assert q.untrained_candidates == untrained, q.id
            if q.relation.endswith("^-1"):
                assert untrained == [q.answer, *q.distractors]  # nobody is trained to answer backwards
            elif tier in ("train", "paraphrase"):
                assert not untrained, q.id


def test_a_candidate_never_trained_for_the_relation_is_flagged_on_load(qa: QASet, tmp_path) -> None:
    data = qa.model_dump()
    item = data["train"][0]
    item["distractors"][0] = "Queen Nobody"
    item["untrained_candidates"] = []
    reloaded = QASet.model_validate(data)
    assert reloaded.train[0].untrained_candidates[-1:] == ["Queen Nobody"]
    assert "Queen Nobody" not in qa.train[0].untrained_candidates


def test_unseen_facts_are_untrained_facts_asked_like_training_questions(qa: QASet, world: World) -> None:
    facts = _facts_by_id(world)
    trained = {fid for q in qa.train for fid in q.fact_ids}
    assert [q.id for q in qa.unseen_facts] == [f"unseen-{i:03d}" for i in range(20)]
    relations = set()
    for q in qa.unseen_facts:
        (fid,) = q.fact_ids
        fact = facts[fid]
        assert fid not in trained and q.relation == fact.relation
        subject = label(world.entity(fact.subject))
        assert q.question in {capitalize(t.format(s=subject)) for t in QUESTIONS[fact.relation]}
        assert _names(q, world.entity(fact.object))
        relations.add(fact.relation)
    # the train tier's relations in its proportions: the most frequent ones, not one relation's facts
    assert len(relations) >= 4
    share = Counter(q.relation for q in qa.train)
    assert relations <= set(share) and sum(share[r] for r in relations) >= 0.5 * len(qa.train)
    assert all(q.balanced for q in qa.unseen_facts)


def test_same_seed_same_questions_other_seed_differs(story: Story, qa: QASet) -> None:
    assert FactsQA(seed=0).build(story).model_dump() == qa.model_dump()
    assert FactsQA(seed=1).build(story).model_dump() != qa.model_dump()


@pytest.mark.parametrize("n_train,n_eval,paraphrases", [(40, 8, 1), (150, 30, 4)])
def test_other_sizes(story: Story, n_train: int, n_eval: int, paraphrases: int) -> None:
    qa = FactsQA(seed=5, n_train=n_train, n_eval=n_eval, paraphrases=paraphrases).build(story)
    assert (len(qa.train), len(qa.eval), len(qa.paraphrase)) == (n_train, n_eval, n_train)
    assert all(len(q.phrasings) == paraphrases for q in qa.train)
    trained = {fid for q in qa.train for fid in q.fact_ids}
    assert all(set(q.fact_ids) <= trained for q in qa.eval)


def test_story_without_world_is_a_user_error() -> None:
    with pytest.raises(UserError) as err:
        FactsQA(seed=0).build(Story(text="Once upon a time."))
    text = str(err.value)
    assert "story=procedural" in text and "qa=file" in text and "qa=openai" in text and "qa=gemini" in text


@pytest.mark.parametrize("kwargs,field", [
    (dict(paraphrases=0), "qa.paraphrases"), (dict(paraphrases=9), "qa.paraphrases"),
    (dict(n_train=10_000), "qa.n_train"), (dict(n_train=5, n_eval=20), "qa.n_eval"),
    (dict(n_train=230, n_eval=0, n_unseen=20), "qa.n_unseen"), (dict(n_unseen=-1), "qa.n_unseen"),
    (dict(heldout_share=1.0), "qa.heldout_share"), (dict(n_train=20, n_eval=8, heldout_share=0.9), "qa.heldout_share"),
    (dict(spike_in=0.5), "qa.spike_in"), (dict(heldout_share=0.5, spike_in=1.5), "qa.spike_in"),
])
def test_impossible_sizes_are_user_errors(story: Story, kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(UserError, match=field):
        FactsQA(seed=0, **kwargs).build(story)


def test_qaset_round_trips_through_disk(qa: QASet, tmp_path) -> None:
    qa.save(tmp_path)
    assert QASet.load(tmp_path) == qa


def test_many_seeds_keep_the_rules() -> None:
    """Several worlds and seeds: eval supports always trained, unseen facts never, distractors never the gold."""
    for seed in range(5):
        story = ProceduralStory(seed=seed).generate()
        qa = FactsQA(seed=seed).build(story)
        trained = {fid for q in qa.train for fid in q.fact_ids}
        assert len(qa.eval) == 20
        for q in qa.all_items():
            if q.tier == "unseen_facts":
                assert not set(q.fact_ids) & trained
            else:
                assert set(q.fact_ids) <= trained or q.tier == "train"
            assert 1 <= len(q.distractors) <= 3 and q.balanced
            assert not {a.lower() for a in [q.answer, *q.aliases]} & {d.lower() for d in q.distractors}


@pytest.fixture(scope="module")
def mixed(story: Story) -> QASet:
    return FactsQA(seed=0, heldout_share=0.5).build(story)


def test_heldout_facts_are_training_facts_whose_qa_nothing_trains(mixed: QASet, qa: QASet, world: World) -> None:
    """Half the default training facts: none an eval support, none asked by a train or cause item, each asked like
    a training question; the eval tier asks the facts of the default set's."""
    facts = _facts_by_id(world)
    held = {f for q in mixed.heldout_facts for f in q.fact_ids}
    assert len(mixed.heldout_facts) == 50 and len(mixed.train) == 50
    assert not held & {f for q in mixed.train for f in q.fact_ids}
    assert not held & {f for q in [*mixed.train, *mixed.eval, *mixed.paraphrase, *mixed.unseen_facts,
                                   *mixed.unseen_voice, *mixed.unseen_wording, *mixed.shifted] for f in q.fact_ids}
    assert [(q.fact_ids, q.answer) for q in mixed.eval] == [(q.fact_ids, q.answer) for q in qa.eval]
    trained_questions = {p for q in mixed.train for p in q.phrasings}
    for q in mixed.heldout_facts:
        (fact,) = (facts[f] for f in q.fact_ids)
        assert q.answer == label(world.entity(fact.object)) and q.question not in trained_questions
        assert _template_of(q.question, fact.relation) != held_out_templates(0)[fact.relation]
    assert not qa.heldout_facts  # the default holds nothing out


def test_heldout_candidates_are_other_heldout_answers(mixed: QASet, world: World) -> None:
    """A held-out fact's distractors are the answers of the other held-out facts of its set (narrated, never a Q/A
    answer, like the gold): no training frequency can pick the gold."""
    facts = _facts_by_id(world)
    heldout_answers = {q.answer for q in mixed.heldout_facts}
    answers: dict[str, set[str]] = defaultdict(set)
    for q in [*mixed.train, *mixed.heldout_facts]:
        answers[_relation(q, facts)].add(q.answer)
    for q in mixed.heldout_facts:
        assert 1 <= len(q.distractors) <= 3 and set(q.distractors) <= heldout_answers and q.balanced
        assert q.untrained_candidates == [c for c in [q.answer, *q.distractors] if c not in answers[q.relation]]


def test_a_heldout_fact_that_a_training_item_trains_is_refused(mixed: QASet) -> None:
    data = mixed.model_dump()
    data["heldout_facts"][0]["fact_ids"] = data["train"][0]["fact_ids"]
    with pytest.raises(ValueError, match="heldout_facts item heldout-000"):
        QASet.model_validate(data)


@pytest.mark.parametrize("seed", range(8))
def test_spike_in_trains_a_growing_known_share_of_heldout_facts_in_whole_sets(seed: int) -> None:
    """qa.spike_in: the spiked held-out facts' Q/A is trained (their heldout question among the train item's
    phrasings, so the known share is known); whole candidate sets are spiked, a larger share spikes a superset of
    a smaller one's facts, nothing else changes, and every tier stays counterbalanced."""
    story = ProceduralStory(seed=seed).generate()
    base = FactsQA(seed=seed, heldout_share=0.5).build(story)
    spiked_before: set[str] = set()
    for share in (0.25, 0.5, 1.0):
        qa = FactsQA(seed=seed, heldout_share=0.5, spike_in=share).build(story)
        spiked = [q for q in qa.heldout_facts if q.spiked]
        assert abs(len(spiked) - share * len(qa.heldout_facts)) <= 2  # whole sets of 2 to 4
        spike_items = [q for q in qa.train if q.spiked]
        assert [q.question for q in spike_items] == [q.question for q in spiked]
        assert all(q.phrasings[0] == q.question and len(set(q.phrasings)) == len(q.phrasings) >= 2
                   for q in spike_items)
        by_set = defaultdict(set)  # a candidate set is spiked whole or not at all
        for q in qa.heldout_facts:
            by_set[frozenset([q.answer, *q.distractors])].add(q.spiked)
        assert all(len(flags) == 1 for flags in by_set.values())
        ids = {f for q in spiked for f in q.fact_ids}
        assert ids >= spiked_before
        spiked_before = ids
        assert [q for q in qa.train if not q.spiked] == base.train  # the rest of the data is the unspiked run's
        for tier in ("heldout_facts", "unseen_facts", "eval", "paraphrase"):
            asked = [(q.question, q.answer, q.distractors) for q in getattr(qa, tier)]
            assert asked == [(q.question, q.answer, q.distractors) for q in getattr(base, tier)]
        assert all(q.balanced for q in qa.all_items())
        # the spiked training item's first phrasing is the heldout question in the voice the run without spike-in
        # asks it in (the tier then plays that recording: tests/test_calibration.py); every other question is
        # voiced as in the run without spike-in
        lines = {line.id: line for line in question_lines(qa)}
        unspiked = {line.id: line for line in question_lines(base)}
        for q in spiked:
            ask, train = unspiked[question_line_id(q.id)], lines[question_line_id(q.source_id, 0)]
            assert (ask.text, ask.voice_index) == (train.text, train.voice_index)
            assert question_line_id(q.id) not in lines
        assert {i: line for i, line in lines.items() if i in unspiked} == \
            {i: line for i, line in unspiked.items() if i in lines}
