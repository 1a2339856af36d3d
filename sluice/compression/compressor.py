"""Compress several texts (the long messages of one chat) together for one question: their
prose sentences are pooled, a method keeps `ratio` of the pool's tokens, and each text is
rebuilt from its kept sentences and all its protected units (`units`), and its short first
paragraph when asked (an instruction at the head of a long system message)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from sluice.compression.methods import Select
from sluice.compression.units import Unit, join_units, split_units


def _lead_kept(units: list[Unit], length: Callable[[str], int], lead_tokens: int
               ) -> list[Unit]:
    """A text's first paragraph marked protected when it is short (at most `lead_tokens`)
    and more follows: a preamble ("Answer from this document:") is an instruction."""
    lead = [u for u in units if u.paragraph == units[0].paragraph] if units else []
    if not lead or len(lead) == len(units) or sum(length(u.text) for u in lead) > lead_tokens:
        return units
    return [replace(u, protected=True) if u in lead else u for u in units]


def compress(texts: Sequence[str], question: str, ratio: float, select: Select,
             length: Callable[[str], int], lead_tokens: int = 0) -> list[str]:
    """The texts with only the kept share of their prose (protected units whole, and each
    text's short first paragraph with `lead_tokens`)."""
    split = [_lead_kept(split_units(t), length, lead_tokens) for t in texts]
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
