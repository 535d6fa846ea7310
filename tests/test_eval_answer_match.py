"""Generated answers are matched after normalisation: whole words, any alias, token F1."""

from __future__ import annotations

import pytest

from moshi_knowledge.evaluation.generate import contains_answer, token_f1


def test_containment_ignores_case_punctuation_and_articles_and_accepts_aliases() -> None:
    assert contains_answer("I believe it was THE River Temos!", ["River Temos"])
    assert contains_answer("temos, of course", ["the River Temos", "Temos"])
    assert not contains_answer("the Temoskan hills", ["Temos"])  # whole words only
    assert not contains_answer("", ["Temos"])
    assert not contains_answer("anything", [""])


def test_token_f1_takes_the_best_alias() -> None:
    assert token_f1("queen maren", ["Queen Maren"]) == 1.0
    assert token_f1("maren", ["Queen Maren"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("maren", ["Queen Maren", "Maren"]) == 1.0
    assert token_f1("nothing here", ["Queen Maren"]) == 0.0
