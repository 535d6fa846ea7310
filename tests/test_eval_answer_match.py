"""Generated answers are matched after normalisation: exactly on the first answer span (strict), by token F1 on
that span, and by containment anywhere (lenient)."""

from __future__ import annotations

import pytest

from moshi_knowledge.evaluation.generate import contains_answer, exact_match, first_span, token_f1
from moshi_knowledge.text_norm import normalise


def test_containment_ignores_case_punctuation_and_articles_and_accepts_aliases() -> None:
    assert contains_answer("I believe it was THE River Temos!", ["River Temos"])
    assert contains_answer("temos, of course", ["the River Temos", "Temos"])
    assert not contains_answer("the Temoskan hills", ["Temos"])  # whole words only
    assert not contains_answer("", ["Temos"])
    assert not contains_answer("anything", [""])


def test_exact_match_reads_only_the_first_answer_span() -> None:
    assert first_span("  King Vabro. And then the rebels came") == "King Vabro"
    assert exact_match("the River Temos, I think", ["River Temos"])
    assert exact_match("Temos!", ["the River Temos", "Temos"])
    assert not exact_match("it was the River Temos", ["River Temos"])  # containment, not the answer span
    assert not exact_match("Fogi. Temos.", ["Temos"])  # the gold after a wrong first answer does not count
    assert not exact_match("", ["Temos"]) and not exact_match("...", [""])


def test_babble_that_includes_the_gold_is_lenient_only() -> None:
    babble = "the kingdom of the kingdom of 904 the king the king"
    assert contains_answer(babble, ["904"]) and not exact_match(babble, ["904"])
    assert token_f1(babble, ["904"]) == pytest.approx(2 * (1 / 7) / (1 / 7 + 1))  # 1 of its 7 words


def test_glued_digits_and_letters_are_split() -> None:
    assert normalise("904e") == "904 e" and normalise("in904") == "in 904"
    assert exact_match("904", ["904"]) and contains_answer("904e", ["904"])
    assert token_f1("904e", ["904"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_token_f1_takes_the_best_alias_on_the_first_span() -> None:
    assert token_f1("queen maren", ["Queen Maren"]) == 1.0
    assert token_f1("maren", ["Queen Maren"]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("maren", ["Queen Maren", "Maren"]) == 1.0
    assert token_f1("nothing here", ["Queen Maren"]) == 0.0
    assert token_f1("nothing. queen maren", ["Queen Maren"]) == 0.0
