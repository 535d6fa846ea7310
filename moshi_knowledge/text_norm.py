"""Answer normalisation, shared by duplicate-question detection, distractor de-duplication and answer matching.

Case, punctuation and articles do not make a different answer ("The Avon!" == "avon"): SQuAD's normalisation,
plus a break between digits and letters, since a text stream can glue a year to the next word ("904e" says 904).
An operator or sign next to a number changes its meaning, so it stays, as a word of its own: "7+2" is not "7-2"
and "-5" is not "5". A hyphen after a letter ("COVID-19", "Saint-Malo") is punctuation.
"""

from __future__ import annotations

import re

# numbers, runs of letters, a minus or sign before a number (not after a letter), other operators
_TOKEN = re.compile(r"\d+|[^\W\d_]+|(?<![^\W\d_])-(?=\s*\d)|[+*/=<>%^±]")
_ARTICLES = frozenset({"a", "an", "the"})
_OPERATORS = frozenset("-+*/=<>%^±")
_SAME_OPERATOR = str.maketrans({"\u2212": "-", "\u2013": "-", "\u00d7": "*", "\u00f7": "/"})  # − – × ÷


def normalise(text: str) -> str:
    tokens = _TOKEN.findall(text.casefold().translate(_SAME_OPERATOR))
    return " ".join(t for k, t in enumerate(tokens)
                    if t not in _ARTICLES and (t not in _OPERATORS or _next_to_number(tokens, k)))


def _next_to_number(tokens: list[str], k: int) -> bool:
    return any(0 <= j < len(tokens) and tokens[j][0].isdigit() for j in (k - 1, k + 1))
