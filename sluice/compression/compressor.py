"""Compress several texts (the long messages of one chat) together for one question: their
prose sentences are pooled, a method keeps `ratio` of the pool's tokens, and each text is
rebuilt from its kept sentences and all its protected units (`units`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sluice.compression.methods import Select
from sluice.compression.units import join_units, split_units


def compress(texts: Sequence[str], question: str, ratio: float, select: Select,
             length: Callable[[str], int]) -> list[str]:
    """The texts with only the kept share of their prose (protected units whole)."""
    split = [split_units(t) for t in texts]
    prose = [(i, j) for i, units in enumerate(split) for j, u in enumerate(units)
             if not u.protected]
    if len(prose) < 2:
        return list(texts)
    sentences = [split[i][j].text for i, j in prose]
    lengths = [max(1, length(s)) for s in sentences]
    kept = select(sentences, question, lengths, int(ratio * sum(lengths)))
    keep = [[u.protected for u in units] for units in split]
    for (i, j), k in zip(prose, kept, strict=True):
        keep[i][j] = k
    return [join_units(units, flags) for units, flags in zip(split, keep, strict=True)]
