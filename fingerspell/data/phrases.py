"""Phrases in the styles of the Kaggle fingerspelling data, and their type.

The real phrases are street addresses ("6920 northeast 661st road"), URLs
("https://www.keainfo.gr", "arabradio.us/vana") and phone numbers
("+3515218895", "290-119-109-582"). The synthetic generator draws from the same
three styles so that a model trained on it meets the same mix of letters, digits
and punctuation, and so the evaluator can report scores per style on real and
synthetic data alike through `phrase_type`.

Names are built from syllables as well as from word lists: the vocabulary is open,
as in the real data, so a model cannot just memorise a list of words.
"""
from __future__ import annotations

import re

import numpy as np

from fingerspell.data import vocab

MAX_PHRASE_LEN = 31
PHRASE_TYPES: tuple[str, ...] = ("address", "url", "phone")
#: How often each style is drawn, roughly the real data's mix.
TYPE_WEIGHTS: tuple[float, ...] = (0.40, 0.35, 0.25)

_STREET_WORDS = (
    "creekhouse", "franklin", "maple", "cedar", "willow", "sunset", "highland", "river",
    "lake", "hill", "park", "spring", "meadow", "ridge", "forest", "valley", "church",
    "mill", "market", "union", "liberty", "lincoln", "madison", "jackson", "elm", "pine",
    "birch", "chestnut", "walnut", "aspen", "harbor", "ocean", "prospect", "pleasant",
    "fairview", "glen", "brook", "stone", "fox", "deer", "eagle", "hawk", "magnolia",
    "poplar", "sycamore", "laurel", "holly", "orchard", "garden", "grove", "heather",
    "juniper", "olive", "bridge", "canyon", "quarry", "vista", "summit", "kings", "oxford",
)
_FIRST_NAMES = (
    "william", "mary", "james", "linda", "robert", "susan", "john", "karen", "michael",
    "nancy", "david", "lisa", "joseph", "betty", "thomas", "helen", "charles", "sandra",
    "daniel", "donna", "matthew", "carol", "anthony", "ruth", "mark", "sharon", "ahmed",
    "yuki", "olga", "pedro",
)
_SUFFIXES = (
    "road", "street", "avenue", "lane", "drive", "court", "place", "boulevard", "way",
    "circle", "terrace", "trail", "parkway", "highway", "square", "loop", "pike", "run",
    "rd", "st", "ave", "ln", "dr", "ct", "blvd", "hwy",
)
_DIRECTIONS = (
    "north", "south", "east", "west", "northeast", "northwest", "southeast", "southwest",
)
_TLDS = (
    "com", "org", "net", "be", "gr", "us", "de", "fr", "jp", "ne.jp", "co.uk", "io",
    "it", "es", "ru", "br", "pl", "nl", "se", "info", "edu", "gov", "ca", "com.au",
    "pt", "tv", "is", "cz", "at", "ch",
)
_URL_WORDS = (
    "info", "radio", "news", "shop", "blog", "media", "online", "web", "home", "store",
    "music", "travel", "sport", "games", "art", "tech", "data", "club", "press", "live",
)
_ONSETS = (
    "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
    "br", "ch", "cr", "dr", "fl", "gr", "kr", "pl", "sh", "st", "tr", "th", "y", "j", "qu",
)
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ou", "ie", "ay")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "k", "t", "nd", "rt", "st", "x")


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    """One item, drawn with numpy so a seed fixes the choice."""
    return items[int(rng.integers(len(items)))]


def _digits(rng: np.random.Generator, n: int, leading_zero: bool = False) -> str:
    """`n` random digits, without a leading zero unless allowed (house numbers)."""
    d = rng.integers(0, 10, size=n)
    if not leading_zero and n > 0:
        d[0] = rng.integers(1, 10)
    return "".join(map(str, d.tolist()))


def _syllable_name(rng: np.random.Generator, min_syl: int = 1, max_syl: int = 3) -> str:
    """A pronounceable made-up word ("kuhaylan", "sudinfo"): an open vocabulary."""
    n = int(rng.integers(min_syl, max_syl + 1))
    return "".join(
        _pick(rng, _ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS) for _ in range(n)
    )


def _ordinal(n: int) -> str:
    """English ordinal: 1st, 2nd, 3rd, 11th, 661st."""
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return str(n) + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _street_name(rng: np.random.Generator) -> str:
    """A street's proper name: a common word, a person, a made-up name or a number."""
    kind = rng.random()
    if kind < 0.35:
        return _pick(rng, _STREET_WORDS)
    if kind < 0.55:
        return f"{_pick(rng, _FIRST_NAMES)} {_syllable_name(rng, 2, 3)}"
    if kind < 0.85:
        name = _syllable_name(rng, 2, 3)
        return name if rng.random() > 0.04 else f"o'{name}"
    return _ordinal(int(rng.integers(1, 1000)))


def random_address(rng: np.random.Generator) -> str:
    """A street address: "3 creekhouse", "6920 northeast 661st road", "2708 west 77th"."""
    number = _digits(rng, int(rng.integers(1, 7)))
    form = rng.random()
    if form < 0.25:
        parts = [number, _street_name(rng)]
    elif form < 0.55:
        parts = [number, _street_name(rng), _pick(rng, _SUFFIXES)]
    elif form < 0.75:
        parts = [number, _pick(rng, _DIRECTIONS), _street_name(rng), _pick(rng, _SUFFIXES)]
    elif form < 0.9:
        parts = [number, _pick(rng, _DIRECTIONS), _ordinal(int(rng.integers(1, 1000)))]
    else:
        parts = [number, _street_name(rng), _pick(rng, _SUFFIXES), f"#{_digits(rng, 2)}"]
    return " ".join(parts)


def _domain(rng: np.random.Generator) -> str:
    """A host name: made-up words, joined words, hyphens and digits as real sites have."""
    form = rng.random()
    if form < 0.45:
        name = _syllable_name(rng, 1, 3)
    elif form < 0.75:
        name = _syllable_name(rng, 1, 2) + _pick(rng, _URL_WORDS)
    elif form < 0.9:
        name = f"{_syllable_name(rng, 1, 2)}-{_syllable_name(rng, 1, 2)}"
    else:
        name = _syllable_name(rng, 1, 2) + _digits(rng, int(rng.integers(1, 4)), True)
    return f"{name}.{_pick(rng, _TLDS)}"


def _url_path(rng: np.random.Generator) -> str:
    """A path after the host: words, dates, ids and the odd query string."""
    form = rng.random()
    if form < 0.4:
        return _syllable_name(rng, 1, 3)
    if form < 0.6:
        return f"{_syllable_name(rng, 1, 2)}{_pick(rng, ('-', '_'))}{_syllable_name(rng, 1, 2)}"
    if form < 0.75:
        return _digits(rng, int(rng.integers(2, 9)), True)
    if form < 0.88:
        return f"{_syllable_name(rng, 1, 2)}?{_pick(rng, ('id', 'q', 'p'))}={_digits(rng, 3)}"
    extras = ("~", "#top", "index.html", "%20", "a&b", "!/home", "(1)", "*", "$", ";s=1",
              "[0]", "a,b", "@me", ":8080", "+1")
    return _pick(rng, extras)


def random_url(rng: np.random.Generator) -> str:
    """A URL: "www.sudinfo.be", "https://www.keainfo.gr", "arabradio.us/vana", "/verkstader/2018"."""
    form = rng.random()
    if form < 0.2:
        return f"www.{_domain(rng)}"
    if form < 0.35:
        return f"{_pick(rng, ('https://', 'http://'))}{_pick(rng, ('www.', ''))}{_domain(rng)}"
    if form < 0.6:
        return f"{_domain(rng)}/{_url_path(rng)}"
    if form < 0.7:
        return f"www.{_domain(rng)}/{_url_path(rng)}"
    if form < 0.82:
        return f"/{_syllable_name(rng, 2, 3)}/{_digits(rng, 8, True)}"
    if form < 0.92:
        return f"{_syllable_name(rng, 1, 3)}/{_syllable_name(rng, 1, 3)}"
    return _domain(rng)


def random_phone(rng: np.random.Generator) -> str:
    """A phone number: "4082494707", "+3515218895", "290-119-109-582", "(408) 249-4707"."""
    form = rng.random()
    if form < 0.3:
        return _digits(rng, 10)
    if form < 0.5:
        return "+" + _digits(rng, int(rng.integers(10, 14)))
    if form < 0.75:
        sizes = rng.integers(2, 5, size=int(rng.integers(3, 5)))
        groups = [_digits(rng, int(k), True) for k in sizes]
        prefix = f"+{_digits(rng, int(rng.integers(1, 4)))}-" if rng.random() < 0.3 else ""
        return prefix + "-".join(groups)
    if form < 0.85:
        return f"({_digits(rng, 3)}) {_digits(rng, 3)}-{_digits(rng, 4, True)}"
    sep = _pick(rng, (".", " ", "-"))
    return sep.join((_digits(rng, 3), _digits(rng, 3, True), _digits(rng, 4, True)))


_GENERATORS = {"address": random_address, "url": random_url, "phone": random_phone}


def random_phrase(rng: np.random.Generator, kind: str | None = None) -> str:
    """One phrase of `kind` (drawn by `TYPE_WEIGHTS` when None), 1-31 map characters.

    Over-long draws are redrawn rather than cut, so a phrase never ends mid-word.
    """
    if kind is None:
        kind = PHRASE_TYPES[int(rng.choice(len(PHRASE_TYPES), p=TYPE_WEIGHTS))]
    if kind not in _GENERATORS:
        raise ValueError(f"unknown phrase type {kind!r}; expected one of {PHRASE_TYPES}")
    for _ in range(100):
        phrase = _GENERATORS[kind](rng)
        if 1 <= len(phrase) <= MAX_PHRASE_LEN and not vocab.unknown_chars(phrase):
            return phrase
    raise RuntimeError(f"could not draw a {kind} phrase of at most {MAX_PHRASE_LEN} characters")


def random_phrases(rng: np.random.Generator, n: int) -> list[str]:
    """`n` phrases in the real data's mix of styles."""
    return [random_phrase(rng) for _ in range(n)]


_PHONE_CHARS = frozenset("0123456789+-().# *")
_URL_PATTERN = re.compile(
    r"(www\.|https?:|://|/|@|[a-z0-9-]\.(com|org|net|edu|gov|info|[a-z]{2})(\b|/|$))"
)


def phrase_type(phrase: str) -> str:
    """"address", "url" or "phone": a heuristic that also fits the real Kaggle phrases.

    Phone numbers have digits and no letters; URLs have a scheme, "www.", a slash,
    an "@" or a dot followed by a top-level domain; addresses are the rest (they
    start with a house number and have spaces). A lone word without spaces is
    taken as a URL fragment, since real addresses always have a space.
    """
    s = phrase.strip().lower()
    has_letters = any(c.isalpha() for c in s)
    if not has_letters and any(c.isdigit() for c in s) and set(s) <= _PHONE_CHARS:
        return "phone"
    if _URL_PATTERN.search(s):
        return "url"
    if " " in s:
        return "address"
    return "url" if has_letters else "phone"
