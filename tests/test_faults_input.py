"""Fault injection on the run's input: foreign encodings, out-of-range or pointless settings, normalisation that
must keep a number's operator, a key reaching a setting through an interpolation, a damaged weight file and a large
Q/A file. Each fault is injected into a real run of the app (in process, stopped by the preflight before any stage)
or into the function it reaches, and must end in a clear error or the right behaviour, never a traceback."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

from conftest import refused_in_process
from moshi_knowledge.__main__ import main
from moshi_knowledge.errors import UserError
from moshi_knowledge.llm.keys import api_key, load_env_file
from moshi_knowledge.model.load import LocalModel, load_model
from moshi_knowledge.model.tiny import tiny_lm_config
from moshi_knowledge.qa.balance import _draws
from moshi_knowledge.qa.file import FileQA
from moshi_knowledge.specs.tiny import TinySizes
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.validate import main as validate_main

KEY = "sk-fault-0123456789abcdefghij"


# ---- foreign encodings ----------------------------------------------------------------------------------------


def test_a_latin1_manifest_is_named_with_its_line_by_the_run_and_the_validator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "convs.jsonl").write_bytes(b'{"path": "a.wav", "duration": 1.0}\n'
                                         b'{"path": "caf\xe9.wav", "duration": 1.0}\n')
    says = "convs.jsonl line 2: not UTF-8 text (byte 0xe9 at column 14)"

    # the validator lists it as a problem of the dataset (exit 1, like a manifest line that is not JSON)
    assert validate_main([str(folder), "--moshi-finetune"]) == 1
    shown = capsys.readouterr()
    assert says in shown.out + shown.err

    output = refused_in_process(["dataset=moshi_finetune", f"dataset.path={folder}", "stages=[story,qa,tts,dataset]"],
                      tmp_path, monkeypatch, capsys, caplog)
    assert says in output and "dataset.path=" in output


def test_a_latin1_byte_in_a_dotenv_comment_warns_and_a_bad_key_is_refused_only_when_needed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("OPENAI_API_KEY", "MK_FAULT_PLAIN"):  # set, then removed: undone after the test whatever .env adds
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"# cl\xe9 de test\nMK_FAULT_PLAIN=kept\nOPENAI_API_KEY=sk-caf\xe9-0123456789\n")

    load_env_file()  # at the start of every run: a warning, not an error
    assert ".env line 1, 3: a byte that is not UTF-8" in caplog.text
    assert os.environ["MK_FAULT_PLAIN"] == "kept"  # the lines after it are read

    with pytest.raises(UserError, match="OPENAI_API_KEY holds a byte that is not UTF-8") as err:
        api_key("openai", "story=openai")  # the key is needed only now
    assert "save the file as UTF-8" in (err.value.fix or "")

    # a run that needs no key reads the same .env at start-up and completes
    monkeypatch.setattr(sys, "argv", ["moshi-knowledge", "stages=[story]", "logger=none",
                                      f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"])
    main()
    assert list((tmp_path / "cache").rglob("story.txt"))


# ---- settings out of range, repeated or pointless ----------------------------------------------------------------

QA_ONLY = "stages=[story,qa]"
REFUSED = [
    ([QA_ONLY, "seed=-1"], "seed=-1 is invalid: Input should be greater than or equal to 0"),
    ([QA_ONLY, f"seed={2 ** 64}"], f"seed={2 ** 64} is invalid: Input should be less than 4294967296"),
    ([QA_ONLY, "qa.seed=-3"], "qa.seed=-3 is invalid"),  # a group's own seed has the same range
    (["stages=[story,qa,tts,dataset]", "layout=narration", "narration.seed=-2"],
     "layout.narration.seed=-2 is invalid"),  # and a nested one
    (["stages=[story,qa,tts,dataset,model,tokenize,eval]", "eval.tiers=[train,train]"],
     "eval.tiers=['train', 'train'] is invalid"),  # it would score every question twice
]


@pytest.mark.parametrize(("overrides", "says"), REFUSED,
                         ids=["seed-negative", "seed-2**64", "group-seed", "nested-seed", "tiers"])
def test_a_setting_out_of_range_is_refused_before_any_stage(
        overrides: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    output = refused_in_process(overrides, tmp_path, monkeypatch, capsys, caplog)
    assert says in output


def test_a_narration_layout_with_an_imported_dataset_isrefused_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "convs.jsonl").write_text('{"path": "a.wav", "duration": 1.0}\n')
    for layout in ("narration", "mixed"):
        output = refused_in_process(["dataset=moshi_finetune", f"dataset.path={folder}", f"layout={layout}",
                           "stages=[story,qa,tts,dataset]"], tmp_path, monkeypatch, capsys, caplog)
        assert f"layout={layout} does nothing with this dataset" in output and "layout=dialogue" in output
        caplog.clear()


# ---- normalisation ----------------------------------------------------------------------------------------------


def test_normalisation_keeps_operators_and_signs_but_not_case_punctuation_or_articles() -> None:
    assert normalise("What is 7+2?") != normalise("What is 7-2?")
    assert normalise("-5") != normalise("5") and normalise("3/4") != normalise("3 4")
    assert normalise("What is 7 + 2 ?") == normalise("what is 7+2") == "what is 7 + 2"
    assert normalise("7 \u2212 2") == normalise("7-2") and normalise("3 \u00d7 4") == normalise("3*4")
    assert normalise("The Avon!") == normalise("avon") and normalise("904e") == "904 e"
    assert normalise("COVID-19") == normalise("covid 19") and normalise("Saint-Malo") == normalise("saint malo")


def test_a_qa_file_may_ask_7_plus_2_and_7_minus_2(tmp_path: Path) -> None:
    """Once refused as one question with two answers; and -3 and 3 are two answers, so the four share one set."""
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "What is 7+2?", "answer": "9"},
                                {"question": "What is 7-2?", "answer": "5"},
                                {"question": "What is 1-4?", "answer": "-3"},
                                {"question": "What is 1+2?", "answer": "3"}]))
    qa = FileQA(str(path), n_eval=0, retain=False).build(None)
    assert [q.question for q in qa.train] == ["What is 7+2?", "What is 7-2?", "What is 1-4?", "What is 1+2?"]
    for q in qa.train:
        assert q.balanced and sorted([q.answer, *q.distractors]) == ["-3", "3", "5", "9"], q


# ---- secrets ----------------------------------------------------------------------------------------------------


def test_an_interpolated_key_is_refused_like_a_pasted_one_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    output = refused_in_process(["story=openai", "story.premise=Tell a tale of ${oc.env:OPENAI_API_KEY}",
                                 "stages=[story]"], tmp_path, monkeypatch, capsys, caplog)
    assert "story.premise: its resolved value holds $OPENAI_API_KEY" in output and KEY not in output
    leaked = [p for p in tmp_path.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == [] and not list(tmp_path.rglob("*.stage.json"))


# ---- a damaged weight file --------------------------------------------------------------------------------------


def test_a_garbage_weight_file_is_named_with_its_path(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("model.safetensors", "mimi.safetensors", "tokenizer.model")}
    for path in files.values():
        path.write_bytes(random.Random(0).randbytes(4096))
    config = tmp_path / "config.json"  # a tiny LM: the 7B one takes seconds to lay out before the weights are read
    config.write_text(json.dumps(tiny_lm_config(TinySizes(), text_card=1000)))
    source = LocalModel(moshi_weights=str(files["model.safetensors"]), mimi_weights=str(files["mimi.safetensors"]),
                        tokenizer=str(files["tokenizer.model"]), config_path=str(config), device="cpu",
                        dtype="float32")
    with pytest.raises(UserError) as err:
        load_model(source)
    assert f"model.moshi_weights: {files['model.safetensors']} cannot be loaded" in err.value.message
    assert "SafetensorError" in err.value.message and "intact copy" in (err.value.fix or "")


# ---- the qa stage scales with its items ---------------------------------------------------------------------------


def test_grouping_draws_exactly_what_rng_random_would() -> None:
    for seed, n in ((0, 1), (1, 7), (2, 1000)):
        vectorised, looped = random.Random(seed), random.Random(seed)
        assert _draws(vectorised, n).tolist() == [looped.random() for _ in range(n)]
        assert vectorised.getstate() == looped.getstate()  # the draws after it are the same too


def _python_calls(n: int, tmp_path: Path) -> int:
    """Python function calls made by building an n-item qa=file of distinct answers. Each size has its own texts:
    normalisation is cached, and a text seen by an earlier build would cost nothing."""
    path = tmp_path / f"qa{n}.json"
    path.write_text(json.dumps([{"question": f"Which answer does riddle {i} of {n} have?",
                                 "answer": f"Answer {i} of {n}"} for i in range(n)]))
    calls = 0

    def count(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        FileQA(str(path), n_eval=n // 10, retain=False).build(None)
    finally:
        sys.setprofile(None)
    return calls


def test_a_4000_item_qa_file_costs_twice_a_2000_item_one(tmp_path: Path) -> None:
    """Deterministic, unlike a timing: the Python work per item stays flat (grouping used to sort every answer in
    Python for every set: 3.6 times the calls for twice the items, and 36 s for 4,000 items)."""
    ratio = _python_calls(4000, tmp_path) / _python_calls(2000, tmp_path)
    assert ratio < 2.3, ratio
