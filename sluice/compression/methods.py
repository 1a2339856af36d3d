"""Which sentences of a long context to keep, under a token budget, for one question.

- `salience` (the seed's method, the baseline): each sentence embedded with MiniLM, scored
  by its similarity to the question and to the document as a whole (the mean of its
  sentences), the best kept in their original order.
- `relevance` (the stronger one, question-aware with redundancy removal): relevance to the
  question from the MiniLM similarity *and* TF-IDF term overlap (names, numbers and rare
  words, which sentence embeddings blur), then chosen by maximal marginal relevance
  (Carbonell & Goldstein, 1998): each next sentence the most relevant one that repeats least
  of what was kept.
- `random` and `truncate`: what the methods are measured against (random sentence dropping;
  keeping the start), never offered in the request path.

No LLMLingua-2-style token classifier: its published models are on a model hub this
platform cannot reach, and none ships in a package (BENCHMARKS.md, "Prompt compression").
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import get_args

import numpy as np

from sluice.router.features import Embedder
from sluice.schema.compression import Method

METHODS: tuple[Method, ...] = get_args(Method)
Select = Callable[[Sequence[str], str, Sequence[int], int], list[bool]]


def _greedy(order: Sequence[int], lengths: Sequence[int], budget: int) -> list[bool]:
    """Take units in `order` while they fit the budget (one that does not is skipped)."""
    keep = [False] * len(lengths)
    left = budget
    for i in order:
        if lengths[i] <= left:
            keep[i] = True
            left -= lengths[i]
    return keep


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)


def _minmax(values: np.ndarray) -> np.ndarray:
    spread = values.max() - values.min()
    return (values - values.min()) / spread if spread > 0 else np.zeros_like(values)


def salience(embedder: Embedder, question_weight: float = 0.5) -> Select:
    def select(units: Sequence[str], question: str, lengths: Sequence[int],
               budget: int) -> list[bool]:
        vectors = _unit_rows(embedder.embed([*units, question]))
        sents, q = vectors[:-1], vectors[-1]
        centroid = _unit_rows(sents.mean(axis=0, keepdims=True))[0]
        scores = question_weight * sents @ q + (1 - question_weight) * sents @ centroid
        return _greedy(list(np.argsort(-scores, kind="stable")), lengths, budget)

    return select


def _lexical(units: Sequence[str], question: str) -> np.ndarray:
    """TF-IDF cosine of each unit with the question (idf over the units themselves)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english",
                                 token_pattern=r"(?u)\b\w+\b")
    try:
        matrix = vectorizer.fit_transform([*units, question])
    except ValueError:  # nothing but stop words
        return np.zeros(len(units))
    return np.asarray((matrix[:-1] @ matrix[-1].T).todense()).ravel()


def relevance(embedder: Embedder, lexical_weight: float = 0.5,
              diversity: float = 0.3) -> Select:
    def select(units: Sequence[str], question: str, lengths: Sequence[int],
               budget: int) -> list[bool]:
        vectors = _unit_rows(embedder.embed([*units, question]))
        sents, q = vectors[:-1], vectors[-1]
        rel = ((1 - lexical_weight) * _minmax(sents @ q)
               + lexical_weight * _minmax(_lexical(units, question)))
        sizes = np.asarray(lengths)
        keep = np.zeros(len(units), dtype=bool)
        redundancy = np.zeros(len(units))
        left = budget
        while True:  # O(n) numpy per pick, no n x n matrix
            score = (1 - diversity) * rel - diversity * redundancy
            score[keep | (sizes > left)] = -np.inf
            best = int(np.argmax(score))
            if not np.isfinite(score[best]):
                return keep.tolist()
            keep[best] = True
            left -= int(sizes[best])
            redundancy = np.maximum(redundancy, sents @ sents[best])

    return select


def random_drop(seed: int = 0) -> Select:
    def select(units: Sequence[str], question: str, lengths: Sequence[int],
               budget: int) -> list[bool]:
        order = list(range(len(units)))
        random.Random(seed).shuffle(order)
        return _greedy(order, lengths, budget)

    return select


def truncate(units: Sequence[str], question: str, lengths: Sequence[int],
             budget: int) -> list[bool]:
    """The leading units that fit: a prompt cut at its end."""
    keep, left = [False] * len(units), budget
    for i, n in enumerate(lengths):
        if n > left:
            break
        keep[i] = True
        left -= n
    return keep


def selector(method: Method, embedder: Embedder) -> Select:
    return salience(embedder) if method == "salience" else relevance(embedder)
