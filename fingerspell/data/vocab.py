"""The character map and the special tokens, in one place.

Indices 0-58 are Kaggle's `character_to_prediction_index.json`; the model adds
pad 59, start 60 (`<`) and end 61 (`>`) as the seed notebook does.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from fingerspell.files import atomic_write

#: Kaggle's file name; the map ships inside the package (read with importlib.resources, so an
#: installed wheel finds it too) and is copied beside every run and submission.
CHARACTER_MAP_NAME = "character_to_prediction_index.json"

N_CHARS = 59
PAD = 59
START = 60
END = 61
N_CLASSES = 62
MAX_TARGET_LEN = 64  # start + up to 62 characters + end, padded to this
START_CHAR = "<"
END_CHAR = ">"


def character_map_bytes() -> bytes:
    """The packaged `character_to_prediction_index.json`, byte for byte."""
    return resources.files(__package__).joinpath(CHARACTER_MAP_NAME).read_bytes()


def write_character_map(directory: str | Path) -> Path:
    """Copy the character map into `directory` (a run, a submission, a generated dataset)."""
    return atomic_write(Path(directory) / CHARACTER_MAP_NAME, character_map_bytes())


@lru_cache(maxsize=None)
def char_to_index() -> dict[str, int]:
    """Kaggle's 59-character map, checked for shape."""
    mapping = json.loads(character_map_bytes())
    if sorted(mapping.values()) != list(range(N_CHARS)):
        raise ValueError(f"{__package__}/{CHARACTER_MAP_NAME}: expected indices 0..{N_CHARS - 1}")
    return mapping


@lru_cache(maxsize=None)
def index_to_char() -> dict[int, str]:
    return {i: c for c, i in char_to_index().items()}


def unknown_chars(phrase: str) -> set[str]:
    """Characters of `phrase` that the map cannot encode."""
    known = char_to_index()
    return {c for c in phrase if c not in known}


def encode(phrase: str, max_len: int = MAX_TARGET_LEN) -> np.ndarray:
    """`<` + phrase + `>` as indices, padded with PAD to `max_len`."""
    if bad := unknown_chars(phrase):
        raise ValueError(f"phrase {phrase!r} has characters outside the map: {sorted(bad)}")
    if len(phrase) + 2 > max_len:
        raise ValueError(f"phrase {phrase!r} is longer than {max_len - 2} characters")
    ids = [START] + [char_to_index()[c] for c in phrase] + [END]
    return np.array(ids + [PAD] * (max_len - len(ids)), dtype=np.int32)


def decode(ids) -> str:
    """Characters of `ids` up to the first END, skipping START and PAD."""
    chars = []
    lookup = index_to_char()
    for i in np.asarray(ids).reshape(-1).tolist():
        if i == END:
            break
        if i in lookup:
            chars.append(lookup[i])
    return "".join(chars)
