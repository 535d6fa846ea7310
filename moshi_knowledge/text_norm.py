"""Answer normalisation, shared by distractor de-duplication and answer matching.

Case, punctuation and articles do not make a different answer ("The Avon!" == "avon"): SQuAD's normalisation.
"""

from __future__ import annotations

import re

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", _NON_WORD.sub(" ", text.casefold())).split())
