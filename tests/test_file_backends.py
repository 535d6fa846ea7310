"""story=file and qa=file: a user's own files, read strictly, with errors that point at the exact item."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.file import FileQA, answer_type
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.file import FileStory
from moshi_knowledge.world.schema import Story

STORY = Story(text="unused by qa=file", world=None)


def _write_qa(path: Path, items: list) -> str:
    path.write_text(json.dumps(items), encoding="utf-8")
    return str(path)


def _qa_items(n: int) -> list[dict]:
    """n items whose answers alternate between names and years, so typed distractors can be checked."""
    return [
        {"question": f"Question number {i}?", "answer": f"{1100 + i}" if i % 2 else f"Name{i}"} for i in range(n)
    ]


# ---- story=file ---------------------------------------------------------------------------------------------


def test_file_story_reads_text_without_world(tmp_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text("\ufeffOnce upon a time, Queen Ysolde founded Varn.\n", encoding="utf-8")
    story = FileStory(str(path)).generate()
    assert story.text == "Once upon a time, Queen Ysolde founded Varn.\n"  # the byte-order mark is dropped
    assert story.world is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        (b"", "empty"),
        (b"  \n\t\n", "empty"),
        ("caf\u00e9".encode("latin-1"), "not UTF-8"),
    ],
    ids=["missing", "empty", "whitespace", "latin1"],
)
def test_file_story_errors_name_file_and_problem(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "story.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        FileStory(str(path)).generate()
    assert f"story.path={path}" in err.value.message
    assert expected in err.value.message
    assert err.value.fix


def test_file_story_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory"):
        FileStory(str(tmp_path)).generate()


# ---- qa=file: malformed files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"question": "Q?", "answer": "A"},\n {"question": "Q2?" "answer": "B"}]', "invalid JSON at line 2 column"),
        ('{"question": "Q?", "answer": "A"}', "top level is a JSON object, not a list"),
        ("[]", "the list is empty"),
        ('[{"question": "Q?", "answer": "A"}, ["Q?", "A"]]', "item 1: is a JSON list, not an object"),
        ('[{"question": "Q?", "answer": "A"}, {"question": "Q?"}]', "item 1: missing key 'answer'"),
        ('[{"answer": "A"}]', "item 0: missing key 'question'"),
        ('[{"question": "Q?", "answer": 1204}]', "item 0: 'answer' must be a string, got JSON number 1204"),
        ('[{"question": "  ", "answer": "A"}]', "item 0: 'question' is empty"),
        ('[{"question": "Q?", "answer": "A", "alias": ["a"]}]', "item 0: unknown key 'alias'"),
        ('[{"question": "Q?", "answer": "A", "aliases": "a"}]', "item 0: 'aliases' must be a non-empty list"),
        ('[{"question": "Q?", "answer": "A", "aliases": ["a", 3]}]', "item 0: 'aliases'[1] must be a string"),
        ('[{"question": "Q?", "answer": "A", "distractors": []}]', "item 0: 'distractors' must be a non-empty list"),
        ('[{"question": "Q?", "answer": "Avon", "distractors": ["Tay", "the avon"]}]', "item 0: 'distractors'[1]"),
    ],
    ids=[
        "bad-json", "object", "empty", "not-object", "no-answer", "no-question", "number", "blank",
        "unknown-key", "aliases-str", "aliases-int", "distractors-empty", "distractor-is-gold",
    ],
)
def test_file_qa_malformed_train_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "qa.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        FileQA(str(path), n_eval=0).build(STORY)
    assert err.value.message.startswith(f"qa.train_path={path}")
    assert expected in err.value.message
    assert err.value.fix


def test_file_qa_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"qa.train_path=.*nope.json: file not found"):
        FileQA(str(tmp_path / "nope.json")).build(STORY)
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"question": "Caf\u00e9?", "answer": "A"}]'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        FileQA(str(latin)).build(STORY)


def test_file_qa_eval_file_errors_name_eval_path(tmp_path: Path) -> None:
    train = _write_qa(tmp_path / "train.json", _qa_items(4))
    bad_eval = _write_qa(tmp_path / "eval.json", [{"question": "Q?", "answer": ""}])
    with pytest.raises(UserError) as err:
        FileQA(train, eval_path=bad_eval).build(STORY)
    assert err.value.message == f"qa.eval_path={bad_eval} item 0: 'answer' is empty"


def test_file_qa_hold_out_must_leave_training_items(tmp_path: Path) -> None:
    path = _write_qa(tmp_path / "qa.json", _qa_items(5))
    with pytest.raises(UserError, match="qa.n_eval=5 holds out all 5 items") as err:
        FileQA(path, n_eval=5).build(STORY)
    assert "qa.eval_path" in err.value.fix
    with pytest.raises(UserError, match="negative"):
        FileQA(path, n_eval=-1).build(STORY)


# ---- qa=file: the split ------------------------------------------------------------------------------------


def test_file_qa_held_out_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    items = _qa_items(30)
    path = _write_qa(tmp_path / "qa.json", items)
    qa = FileQA(path, n_eval=8, seed=3).build(STORY)
    assert [q.id for q in qa.train] == [f"train-{i:03d}" for i in range(22)]
    assert [q.id for q in qa.eval] == [f"eval-{i:03d}" for i in range(8)]
    assert {q.tier for q in qa.train} == {"train"} and {q.tier for q in qa.eval} == {"eval"}
    assert qa.paraphrase == []
    train_qs = [q.question for q in qa.train]
    eval_qs = [q.question for q in qa.eval]
    assert sorted(train_qs + eval_qs) == sorted(i["question"] for i in items)  # a partition of the file
    file_order = [i["question"] for i in items]
    assert train_qs == [q for q in file_order if q in train_qs]  # both tiers keep the file's order
    assert eval_qs == [q for q in file_order if q in eval_qs]
    again = FileQA(path, n_eval=8, seed=3).build(STORY)
    assert again.model_dump() == qa.model_dump()
    other_seed = FileQA(path, n_eval=8, seed=4).build(STORY)
    assert {q.question for q in other_seed.eval} != set(eval_qs)


def test_file_qa_eval_path_keeps_all_training_items(tmp_path: Path) -> None:
    train = _write_qa(tmp_path / "train.json", _qa_items(6))
    evals = _write_qa(tmp_path / "eval.json", [{"question": "Who rules Varn?", "answer": "Ysolde"}])
    qa = FileQA(train, eval_path=evals, n_eval=20).build(STORY)
    assert len(qa.train) == 6
    assert [(q.id, q.question, q.answer) for q in qa.eval] == [("eval-000", "Who rules Varn?", "Ysolde")]


def test_file_qa_n_eval_zero_gives_no_eval_tier(tmp_path: Path) -> None:
    qa = FileQA(_write_qa(tmp_path / "qa.json", _qa_items(3)), n_eval=0).build(STORY)
    assert len(qa.train) == 3 and qa.eval == []


# ---- qa=file: distractors and answer types -----------------------------------------------------------------


def test_answer_type_and_normalise() -> None:
    assert [answer_type(a) for a in ["1204", "987", " 1204 ", "12", "12045", "1204 AD", "Varn"]] == [
        "year", "year", "year", "text", "text", "text", "text"
    ]
    assert normalise("The  Avon!") == normalise("avon") == "avon"
    assert normalise("Anne") == "anne"  # only whole articles are dropped


def test_file_qa_distractors_follow_the_rules(tmp_path: Path) -> None:
    path = _write_qa(tmp_path / "qa.json", _qa_items(24))
    qa = FileQA(path, n_eval=6, seed=1).build(STORY)
    for tier in (qa.train, qa.eval):  # the retain tier brings its own distractors (test_retain.py)
        answers = {q.answer for q in tier}
        for item in tier:
            assert item.answer_type == answer_type(item.answer) and item.answer not in item.distractors
            assert len(set(item.distractors)) == len(item.distractors)
            if item.balanced:  # a set of its own tier's answers of its type, each the gold of one of its items
                assert 1 <= len(item.distractors) <= 3 and set(item.distractors) <= answers
                assert {answer_type(d) for d in item.distractors} == {item.answer_type}
            else:  # an item no set of 2 to 4 takes: three other answers
                assert len(item.distractors) == 3
        # sets of four, then the rest of a type as one set of two or three: a type with 4m + 1 items leaves one
        types = Counter(q.answer_type for q in tier)
        assert sum(not q.balanced for q in tier) == sum(c % 4 == 1 for c in types.values())
    assert FileQA(path, n_eval=6, seed=1).build(STORY).model_dump() == qa.model_dump()
    reseeded = FileQA(path, n_eval=6, seed=2).build(STORY)
    assert [q.distractors for q in reseeded.train] != [q.distractors for q in qa.train]


def test_file_qa_distractors_skip_equal_normalised_answers_and_aliases(tmp_path: Path) -> None:
    items = [
        {"question": "Which river runs through Varn?", "answer": "The Avon", "aliases": ["Avon River"]},
        {"question": "Which river is longest?", "answer": "avon"},  # same answer, other spelling
        {"question": "Which river floods?", "answer": "Avon river"},  # an alias of the first
        {"question": "Which river is cold?", "answer": "Tay"},
        {"question": "Who built the bridge?", "answer": "Orrin"},
        {"question": "When was it built?", "answer": "1204"},
    ]
    for seed in range(10):
        qa = FileQA(_write_qa(tmp_path / "qa.json", items), n_eval=0, seed=seed).build(STORY)
        first = qa.train[0]
        assert first.aliases == ["Avon River"]
        for item in qa.train:  # no candidate is another right answer of the question
            right = {normalise(a) for a in [item.answer, *item.aliases]}
            assert right.isdisjoint({normalise(d) for d in item.distractors}), (seed, item)
        year = qa.train[5]
        assert year.answer_type == "year" and len(year.distractors) == 3  # the only year: no set, three others


def test_file_qa_tiers_share_counterbalanced_sets_of_their_own_answers(tmp_path: Path) -> None:
    """Eval candidates are other eval answers (never trained, like the gold), train candidates other train
    answers: a set's answers share one training status, so no frequency prior can pick the gold."""
    train = _write_qa(tmp_path / "train.json", [{"question": f"Q{i}?", "answer": f"Train{i}"} for i in range(3)])
    evals = _write_qa(tmp_path / "eval.json", [{"question": f"E{i}?", "answer": f"Eval{i}"} for i in range(3)])
    qa = FileQA(train, eval_path=evals).build(STORY)
    for tier, prefix in ((qa.eval, "Eval"), (qa.train, "Train")):
        for item in tier:
            assert item.balanced and sorted([item.answer, *item.distractors]) == [f"{prefix}{i}" for i in range(3)]


def test_file_qa_given_distractors_are_kept(tmp_path: Path) -> None:
    items = [*_qa_items(4), {"question": "Who?", "answer": "Ysolde", "distractors": [" Maren ", "Orla"]}]
    qa = FileQA(_write_qa(tmp_path / "qa.json", items), n_eval=0).build(STORY)
    assert qa.train[4].distractors == ["Maren", "Orla"] and not qa.train[4].balanced
    assert qa.train[0].distractors == ["Name2"] and qa.train[0].balanced  # the two names share a set of two


# ---- qa=file: repeated questions ---------------------------------------------------------------------------


def test_file_qa_rejects_a_repeated_question_with_another_answer_across_files(tmp_path: Path) -> None:
    train = _write_qa(tmp_path / "train.json", [*_qa_items(3), {"question": "Who rules Varn?", "answer": "Ysolde"}])
    evals = _write_qa(tmp_path / "eval.json", [{"question": "Who rules Varn?", "answer": "Ysolde"},
                                                 {"question": "who RULES varn", "answer": "Orrin"}])
    with pytest.raises(UserError) as err:
        FileQA(train, eval_path=evals).build(STORY)
    assert err.value.message.startswith(f"qa.train_path={train} item 3 and qa.eval_path={evals} item 1 ask the same")
    assert "'Ysolde' and 'Orrin'" in err.value.message and err.value.fix


def test_file_qa_rejects_a_repeated_question_with_another_answer_in_one_file(tmp_path: Path) -> None:
    path = _write_qa(tmp_path / "qa.json", [{"question": "When was Varn founded?", "answer": "1204"},
                                            *_qa_items(2), {"question": "When was Varn founded ?", "answer": "1205"}])
    with pytest.raises(UserError, match=rf"qa.train_path={path} item 0 and qa.train_path={path} item 3 ask"):
        FileQA(path, n_eval=1).build(STORY)


def test_file_qa_merges_an_exact_repeat_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = _write_qa(tmp_path / "train.json", [{"question": "Which river runs past Quillby?", "answer": "The Selt"},
                                                *_qa_items(3), {"question": "Which river runs past Quillby?",
                                                                "answer": "Selt"}])
    evals = _write_qa(tmp_path / "eval.json", [{"question": "which river runs past quillby", "answer": "selt!"},
                                                {"question": "Who rules Varn?", "answer": "Ysolde"}])
    with caplog.at_level("WARNING", logger="moshi_knowledge.qa.file"):
        qa = FileQA(train, eval_path=evals).build(STORY)
    assert [q.question for q in qa.train].count("Which river runs past Quillby?") == 1 and len(qa.train) == 4
    assert [q.question for q in qa.eval] == ["Who rules Varn?"]  # a trained question is not held out
    warnings = [r.getMessage() for r in caplog.records]
    repeat = f"qa.train_path={train} item 4 repeats the question and answer of qa.train_path={train} item 0"
    assert repeat in warnings[0]
    assert f"qa.eval_path={evals} item 0 repeats" in warnings[1] and len(warnings) == 2
