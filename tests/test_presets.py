"""Every experiment preset trains in the layout that recall scores: one question alone on the user's channel, at
the dataset's lead silence, then Moshi's answer after its gap (evaluation/prompts.py builds every prompt so). The
narration regimes' passages hold no question: Moshi alone, the user's channel silent."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from conftest import REPO, compose_cfg
from moshi_knowledge.qa.schema import QAItem, QASet
from moshi_knowledge.speech.schema import SAMPLE_RATE, Line, Utterance, WordSpan
from moshi_knowledge.speech.script import answer_lines, question_lines
from moshi_knowledge.world.schema import Entity, Fact, Story, World

PRESETS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml"))
# Reproduces the published attempt: one voice reads question and answer, copied to both channels. Kept for
# comparison, it cannot match recall's prompts, and this test says so (strict: it fails if it ever agrees).
REPLICATION = "seed_replication"


def _qa() -> QASet:
    items = [QAItem(id=f"train-{i:03d}", tier="train", question=f"Who founded town {i}?",
                    phrasings=[f"Who founded town {i}?", f"By whom was town {i} founded?"],
                    answer=f"King Teso {i}", distractors=["a", "b", "c"], fact_ids=[f"town{i}.founded_by"])
             for i in range(4)]
    return QASet(train=items)


def _story() -> Story:
    """The towns of `_qa` as a world whose facts its items ask, so a narration restates them."""
    towns = [Entity(id=f"town{i}", kind="place", name=f"town {i}") for i in range(4)]
    kings = [Entity(id=f"king{i}", kind="person", name=f"Teso {i}", title="King") for i in range(4)]
    facts = [Fact(id=f"town{i}.founded_by", subject=f"town{i}", relation="founded_by", object=f"king{i}",
                  sentence=f"Town {i} was founded by King Teso {i}.") for i in range(4)]
    world = World(name="Towns", seed=0, entities=[*towns, *kings], facts=facts)
    return Story(text=" ".join(f.sentence for f in facts), world=world)


def _utterance(line: Line, rng: np.random.Generator) -> Utterance:
    """Speech of 0.25 s per word, every word's span laid end to end."""
    words = line.text.split()
    samples = rng.uniform(-0.5, 0.5, int(0.25 * SAMPLE_RATE * len(words))).astype(np.float32)
    return Utterance(samples, [WordSpan(w, 0.25 * k, 0.25 * (k + 1)) for k, w in enumerate(words)])


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.xfail(
    strict=True, reason="the published attempt's layout")) if p == REPLICATION else p for p in PRESETS])
def test_the_preset_trains_one_question_alone_as_recall_asks_it(preset: str) -> None:
    cfg = compose_cfg([f"experiment={preset}"])
    layout = instantiate(cfg.layout)
    qa = _qa()
    story = _story()
    rng = np.random.default_rng(0)
    lines = [*question_lines(qa), *answer_lines(qa), *layout.lines(qa, story)]
    train = [c for c in layout.compose(qa, {line.id: _utterance(line, rng) for line in lines}, story)
             if c.split == "train"]
    conversations = [c for c in train if c.turns]
    narrated = [c for c in train if not c.turns]
    assert len(conversations) == (sum(len(q.phrasings) for q in qa.train) if layout.name != "narration" else 0)
    assert bool(narrated) == (layout.name in ("narration", "mixed"))
    for conv in narrated:  # Moshi narrates alone
        assert not conv.right.any() and conv.left.any()
    for conv in conversations:
        assert len(conv.turns) == 1, conv.id  # recall asks one question, with nothing before it
        (turn,) = conv.turns
        question = slice(round(turn.question[0] * SAMPLE_RATE), round(turn.question[1] * SAMPLE_RATE))
        answer_at = round(turn.answer[0] * SAMPLE_RATE)
        assert turn.question[0] == pytest.approx(layout.lead_sec)  # the prompt's lead silence
        assert turn.answer[0] - turn.question[1] == pytest.approx(layout.gap_sec)  # and its gap
        assert not conv.right[:question.start].any() and not conv.right[question.stop:].any()  # only the question
        assert not conv.left[:answer_at].any()  # Moshi is silent until the answer window
