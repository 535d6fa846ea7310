"""The narration regimes on real espeak speech: Moshi narrates alone, the restatement and order knobs do what they
say, and a mixed dataset holds no Q/A of a held-out fact (the heldout_facts tier's whole point)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import SMALL, compose_cfg, run_app
from llm_stub_server import StubLLMServer
from moshi_knowledge.errors import UserError
from moshi_knowledge.qa.facts import FactsQA
from moshi_knowledge.qa.schema import QASet
from moshi_knowledge.speech.espeak import EspeakTTS
from moshi_knowledge.speech.narration import Narration, narrated_facts
from moshi_knowledge.speech.narration_layout import MixedLayout, NarrationLayout
from moshi_knowledge.speech.schema import MOSHI_SPEAKER, SAMPLE_RATE, USER_SPEAKER, Utterance, Voice
from moshi_knowledge.speech.script import answer_lines, question_lines
from moshi_knowledge.text_norm import normalise
from moshi_knowledge.world.prose import label
from moshi_knowledge.world.schema import Story


@pytest.fixture(scope="module")
def qa(story: Story) -> QASet:
    return FactsQA(seed=0, n_train=10, n_eval=2, paraphrases=2, retain=False, n_unseen=2, n_per_cause=2,
                   heldout_share=0.5).build(story)


@pytest.fixture(scope="module")
def speech(qa: QASet, story: Story) -> dict[str, Utterance]:
    tts = EspeakTTS(Voice("en+m3", rate=165, pitch=35), [Voice("en-us+m1")], Voice("en+f4"))
    narration = NarrationLayout(Narration(seed=0, restatements=3)).lines(qa, story)
    return {line.id: tts.synthesize(line.text, tts.voice_for(line))
            for line in [*question_lines(qa), *answer_lines(qa), *narration]}


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def test_narration_is_moshi_alone_on_the_left_with_its_words_where_it_says_them(
        qa: QASet, story: Story, speech: dict[str, Utterance]) -> None:
    layout = NarrationLayout(Narration(seed=0, restatements=3), max_duration_sec=20.0)
    convs = layout.compose(qa, speech, story)
    train = [c for c in convs if c.split == "train"]
    assert train and all(c.id.startswith("train-narration-") for c in train)
    said = []
    for conv in train:
        assert not conv.turns and conv.duration <= 20.0
        assert not conv.right.any()  # the user's channel is silent throughout
        assert {w.speaker for w in conv.words} == {MOSHI_SPEAKER}
        assert [w.start for w in conv.words] == sorted(w.start for w in conv.words)
        for w in conv.words:  # every word is spoken on the left where its span says
            assert 0 <= w.start < w.end <= conv.duration
            assert rms(conv.left[int(w.start * SAMPLE_RATE):int(w.end * SAMPLE_RATE)]) > 1e-3, (conv.id, w)
        said.append(" ".join(w.word for w in conv.words))
    sentences = [line.text for r in layout.narration.rounds(story, qa) for line in r]
    assert normalise(" ".join(said)) == normalise(" ".join(sentences))  # Moshi's text stream is the narration
    evals = [c for c in convs if c.split == "eval"]  # the eval split stays the eval items' Q/A
    assert [t.qid for c in evals for t in c.turns] == [q.id for q in qa.eval]
    assert layout.lead_sec == 0.3 and layout.gap_sec == 0.4  # what recall's prompts mirror


def test_mixed_adds_the_training_qa_and_nothing_of_the_held_out_facts(
        qa: QASet, story: Story, speech: dict[str, Utterance]) -> None:
    convs = MixedLayout(Narration(seed=0, restatements=3), max_duration_sec=20.0, max_turns=1).compose(qa, speech,
                                                                                                      story)
    turns = [t.qid for c in convs if c.split == "train" for t in c.turns]
    assert sorted(turns) == sorted(q.id for q in qa.train for _ in q.phrasings)  # every phrasing, one per conversation
    assert all(len(c.turns) <= 1 for c in convs if c.split == "train")
    alone = NarrationLayout(Narration(seed=0, restatements=3), max_duration_sec=20.0).compose(qa, speech, story)
    narrated = [c for c in convs if c.split == "train" and not c.turns]
    assert [c.words for c in narrated] == [c.words for c in alone if c.split == "train"]  # the same narration


def test_restatements_state_each_fact_that_many_times_round_by_round(qa: QASet, story: Story) -> None:
    assert story.world is not None
    facts = narrated_facts(story, qa)
    asked = {f for q in [*qa.train, *qa.heldout_facts, *qa.eval] for f in q.fact_ids}
    assert {f.id for f in facts} == asked  # every asked fact, held-out ones included
    assert not asked & {f for q in qa.unseen_facts for f in q.fact_ids}  # the null stays never trained
    for n in (1, 2, 3):
        rounds = Narration(seed=0, restatements=n).rounds(story, qa)
        assert len(rounds) == n and all(len(r) == len(facts) for r in rounds)
        assert [line.text for line in rounds[0]] == [f.sentence for f in facts]  # the story's own sentences first
        by_fact: dict[str, set[str]] = {}
        for r in rounds:
            for line in r:
                by_fact.setdefault(line.id.rsplit("-", 1)[0], set()).add(line.text)
        assert all(len(texts) == n for texts in by_fact.values())  # n different sentences per fact
        for fact in facts:  # each restatement names the fact's subject and states its object
            subject, obj = story.world.entity(fact.subject), story.world.entity(fact.object)
            for text in by_fact[f"n-{fact.id}"]:
                assert obj.name in text and subject.name in text, text
    plain = Narration(seed=0, restatements=3).rounds(story, qa)
    shuffled = Narration(seed=0, restatements=3, shuffle=True).rounds(story, qa)
    assert [sorted(line.id for line in r) for r in plain] == [sorted(line.id for line in r) for r in shuffled]
    assert [line.id for r in plain for line in r] != [line.id for r in shuffled for line in r]
    with pytest.raises(UserError, match="narration.restatements"):
        Narration(seed=0, restatements=4)


def test_a_story_without_asked_facts_is_narrated_sentence_by_sentence() -> None:
    story = Story(text="The Chronicle\n\nMarrow founded Olt in 912. Its river is the Dun!\n\nThe end came late.\n")
    qa = QASet(train=[{"id": "train-000", "tier": "train", "question": "Who founded Olt?", "answer": "Marrow"}])
    (sentences,) = Narration(seed=0).rounds(story, qa)
    assert [line.text for line in sentences] == ["The Chronicle", "Marrow founded Olt in 912.",
                                                 "Its river is the Dun!", "The end came late."]
    with pytest.raises(UserError, match="narration.restatements=2"):
        Narration(seed=0, restatements=2).rounds(story, qa)


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real mixed dataset: procedural story, qa=facts with half the Q/A held out, espeak, two restatements."""
    from moshi_knowledge.stages import run_stages

    root = tmp_path_factory.mktemp("mixed")
    cfg = compose_cfg([*SMALL, "layout=mixed", "qa.heldout_share=0.25", "narration.restatements=2",
                       "narration.shuffle=true", "layout.max_duration_sec=20", f"paths.cache_dir={root / 'cache'}"])
    run_stages(cfg, root / "run")
    return root / "run"


def _words(alignment: Path, speaker: str | None = None) -> str:
    entries = json.loads(alignment.read_text())["alignments"]
    return normalise(" ".join(w for w, _, s in entries if speaker in (None, s)))


def test_no_training_conversation_holds_a_held_out_question_or_its_answer_turn(mixed_run: Path) -> None:
    dataset = mixed_run / "dataset"
    qa = QASet.load(mixed_run / "qa")
    story = Story.load(mixed_run / "story")
    assert story.world is not None and qa.heldout_facts and qa.train
    heldout_facts = {f for q in qa.heldout_facts for f in q.fact_ids}
    by_id = {q.id: q for q in qa.all_items()}
    train_rows = [json.loads(line)["path"] for line in (dataset / "train.jsonl").read_text().splitlines()]
    turns = {e["path"]: e["turns"] for e in json.loads((dataset / "conversations.json").read_text())}
    texts = {rel: _words((dataset / rel).with_suffix(".json")) for rel in train_rows}
    assert any(turns[rel] for rel in train_rows) and any(not turns[rel] for rel in train_rows)  # both kinds
    for q in qa.heldout_facts:
        question = normalise(q.question)
        assert not any(question in text for text in texts.values()), q.question
    for rel in train_rows:
        for turn in turns[rel]:  # a Q/A turn asks a trained item, never a held-out fact
            assert turn["qid"] not in {q.id for q in qa.heldout_facts}
            assert not set(by_id[turn["qid"]].fact_ids) & heldout_facts
        if turns[rel]:  # and no held-out subject is asked with its answer said
            asked = _words((dataset / rel).with_suffix(".json"), USER_SPEAKER)
            answered = _words((dataset / rel).with_suffix(".json"), MOSHI_SPEAKER)
            for q in qa.heldout_facts:
                fact = next(f for f in story.world.facts if f.id == q.fact_ids[0])
                subject = normalise(label(story.world.entity(fact.subject)))
                assert not (re.search(rf"\b{re.escape(subject)}\b", asked) and normalise(q.answer) in answered)
    narration = " ".join(text for rel, text in texts.items() if not turns[rel])
    for q in qa.heldout_facts:  # the positive side: every held-out fact is narrated
        assert normalise(q.answer) in narration
    questions = json.loads((dataset / "questions.json").read_text())["questions"]
    assert sorted(e["id"] for e in questions if e["tier"] == "heldout_facts") == sorted(q.id for q in qa.heldout_facts)


def test_the_regimes_sweep_runs_as_a_real_multirun(tmp_path: Path) -> None:
    """`sweep=regimes` launches its whole grid: every regime with every augmentation, the same Q/A in each job."""
    sweep = tmp_path / "sweep"
    proc = run_app(["sweep=regimes", "stages=[story,qa]", "logger=none", f"paths.cache_dir={tmp_path / 'cache'}",
                    f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    grid = {tuple(sorted((p / ".hydra" / "overrides.yaml").read_text().split("\n"))) for p in jobs}
    assert len(jobs) == len(grid) == 3 * 2 * 2
    qa_files = {(p / "qa" / "qa.json").resolve() for p in jobs}
    assert len(qa_files) == 1  # one Q/A set (a cached stage) for every regime: the tiers compare across jobs
    assert QASet.load(next(iter(qa_files)).parent).heldout_facts


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_llm_rewrites_are_validated_against_what_each_sentence_states(provider: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A rewrite that drops an answer the sentence gives is sent back with the problem; the valid one is the
    second restatement, and the layout built from the config narrates it (the reply is cached: no second ask)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "GEMINI_API_KEY", "test-key")
    story = Story(text="Marrow founded Olt in 912. The river of Olt is the Dun.\n")
    qa = QASet(train=[{"id": "train-000", "tier": "train", "question": "Who founded Olt?", "answer": "Marrow"},
                      {"id": "train-001", "tier": "train", "question": "Which river runs by Olt?",
                       "answer": "the Dun"}])
    with StubLLMServer() as server:
        base_url = server.openai_base_url if provider == "openai" else server.gemini_base_url
        server.push(json.dumps({"rewrites": ["Olt was founded in 912.", "Olt lies on the Dun."]}),
                    json.dumps({"rewrites": ["It was Marrow who founded Olt, in 912.", "The Dun flows past Olt."]}))
        cfg = compose_cfg(["layout=narration", f"narration={provider}", f"narration.connection.base_url={base_url}",
                           "narration.connection.max_retries=0", f"paths.cache_dir={tmp_path}"])
        layout = instantiate(cfg.layout)
        rounds = layout.narration.rounds(story, qa)
        assert [[line.text for line in r] for r in rounds] == [
            ["Marrow founded Olt in 912.", "The river of Olt is the Dun."],
            ["It was Marrow who founded Olt, in 912.", "The Dun flows past Olt."]]
        assert server.count == 2 and "drops 'Marrow'" in json.dumps(server.received[1].body)
        assert [line.text for line in layout.lines(qa, story)][2:] == [line.text for line in rounds[1]]
        assert server.count == 2  # the cached reply
