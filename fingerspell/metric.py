"""The competition metric: normalized total Levenshtein distance, (N - D) / N."""
from __future__ import annotations

from collections.abc import Iterable

import Levenshtein


def edit_totals(targets: Iterable[str], predictions: Iterable[str]) -> tuple[int, int]:
    """(N, D): total target characters and total Levenshtein distance."""
    n = d = 0
    for target, prediction in zip(targets, predictions, strict=True):
        n += len(target)
        d += Levenshtein.distance(target, prediction)
    return n, d


def score(targets: Iterable[str], predictions: Iterable[str]) -> float:
    """(N - D) / N over all pairs; may be negative when predictions are long and wrong."""
    n, d = edit_totals(targets, predictions)
    if n == 0:
        raise ValueError("score needs at least one non-empty target")
    return (n - d) / n
