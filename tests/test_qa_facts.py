"""qa=facts: tiers, counts, held-out phrasings, eval chains that really need the trained facts, distractors."""

from __future__ import annotations

from collections import defaultdict

import pytest

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.facts import QUESTIONS, FactsQA
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.world.procedural import ProceduralStory
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


def test_distractors_come_from_other_training_answers(qa: QASet, world: World) -> None:
    trained = defaultdict(set)
    for q in qa.train:
        trained[q.answer_type].add(q.answer)
    kinds = defaultdict(list)
    for e in world.entities:
        kinds[e.kind].append(e.name)
    for q in [*qa.train, *qa.eval, *qa.paraphrase]:
        assert len(q.distractors) == 3 and len(set(q.distractors)) == 3, q.id
        gold = {a.lower() for a in [q.answer, *q.aliases]}
        assert not gold & {d.lower() for d in q.distractors}, q.id
        for d in q.distractors:
            assert any(name in d for name in kinds[q.answer_type]), (q.id, d)  # same type as the answer
        usable = {a for a in trained[q.answer_type] if a.lower() not in gold and a not in q.question}
        if len(usable) >= 3:
            assert set(q.distractors) <= usable, q.id
        else:
            assert usable <= set(q.distractors), q.id  # fall back to other entities only when needed


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
])
def test_impossible_sizes_are_user_errors(story: Story, kwargs: dict[str, int], field: str) -> None:
    with pytest.raises(UserError, match=field):
        FactsQA(seed=0, **kwargs).build(story)


def test_qaset_round_trips_through_disk(qa: QASet, tmp_path) -> None:
    qa.save(tmp_path)
    assert QASet.load(tmp_path) == qa


def test_many_seeds_keep_the_rules() -> None:
    """Several worlds and seeds: eval supports always trained, distractors never the gold."""
    for seed in range(5):
        story = ProceduralStory(seed=seed).generate()
        qa = FactsQA(seed=seed).build(story)
        trained = {fid for q in qa.train for fid in q.fact_ids}
        assert len(qa.eval) == 20
        for q in qa.all_items():
            assert set(q.fact_ids) <= trained or q.tier == "train"
            assert len(q.distractors) == 3
            assert not {a.lower() for a in [q.answer, *q.aliases]} & {d.lower() for d in q.distractors}
