"""Answer normalisation, shared by distractor de-duplication and answer matching.

Case, punctuation and articles do not make a different answer ("The Avon!" == "avon"): SQuAD's normalisation,
plus a break between digits and letters, since a text stream can glue a year to the next word ("904e" says 904).
"""

from __future__ import annotations

import re

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[\W_]+")
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")


def normalise(text: str) -> str:
    spaced = _DIGIT_LETTER.sub(" ", _NON_WORD.sub(" ", text.casefold()))
    return " ".join(_ARTICLES.sub(" ", spaced).split())
