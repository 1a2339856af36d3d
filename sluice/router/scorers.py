"""Learned scorers: the probability that the small model is enough for a query.

Two kinds, one interface (`fit`, `score`):
- a **pre-generation router** sees only the prompt (routes before any model runs);
- a **learned quality estimator** (a judge) also sees the small model's answer.
Both are a standardised logistic regression over embeddings from a local sentence-embedding
model, plus model-free answer checks for the judge. Scores are probabilities: higher means
keep the small answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from sklearn.linear_model import LogisticRegressionCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sluice.router.dataset import LabeledQuery
from sluice.router.features import Embedder, answer_features


class QualityScorer(Protocol):
    name: str
    needs_answer: bool

    def fit(self, queries: Sequence[LabeledQuery]) -> QualityScorer: ...

    def score(self, queries: Sequence[LabeledQuery]) -> np.ndarray: ...


def _classifier():  # type: ignore[no-untyped-def]
    return make_pipeline(
        StandardScaler(),
        LogisticRegressionCV(Cs=8, cv=5, scoring="roc_auc", max_iter=2000),
    )


def _labels(queries: Sequence[LabeledQuery]) -> np.ndarray:
    return np.array([q.small_is_enough for q in queries], dtype=int)


class LogisticScorer:
    name = "base"
    needs_answer = False

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._model = _classifier()

    def _features(self, queries: Sequence[LabeledQuery]) -> np.ndarray:
        raise NotImplementedError

    def fit(self, queries: Sequence[LabeledQuery]) -> LogisticScorer:
        labels = _labels(queries)
        if len(set(labels)) < 2:
            raise ValueError("calibration data has only one label; cannot fit a scorer")
        self._model.fit(self._features(queries), labels)
        return self

    def score(self, queries: Sequence[LabeledQuery]) -> np.ndarray:
        return self._model.predict_proba(self._features(queries))[:, 1]

    def score_texts(self, prompts: Sequence[str], answers: Sequence[str] | None = None
                    ) -> np.ndarray:
        """Score live traffic: the same features, from raw prompt (and answer) texts."""
        replies: Sequence[str | None] = answers if answers is not None else [None] * len(prompts)
        return self.score([LabeledQuery(str(i), p, a, 0.0, 0.0)
                           for i, (p, a) in enumerate(zip(prompts, replies))])

    @property
    def pipeline(self):  # type: ignore[no-untyped-def]
        """The fitted sklearn pipeline (what an artifact stores)."""
        return self._model

    def with_pipeline(self, pipeline) -> LogisticScorer:  # type: ignore[no-untyped-def]
        self._model = pipeline
        return self


class PromptRouter(LogisticScorer):
    """Pre-generation: P(small is enough | prompt embedding)."""

    name = "prompt-router"

    def _features(self, queries: Sequence[LabeledQuery]) -> np.ndarray:
        return self._embedder.embed([q.prompt for q in queries])


class LearnedQualityJudge(LogisticScorer):
    """Post-generation: P(small is enough | prompt, small answer, answer checks)."""

    name = "learned-judge"
    needs_answer = True

    def _features(self, queries: Sequence[LabeledQuery]) -> np.ndarray:
        answers = [q.small_answer or "" for q in queries]
        prompt_vecs = self._embedder.embed([q.prompt for q in queries])
        answer_vecs = self._embedder.embed(answers)
        checks = np.array([answer_features(q.prompt, a) for q, a in zip(queries, answers)])
        return np.hstack([prompt_vecs, answer_vecs, checks])


class AnswerChecksJudge(LogisticScorer):
    """Post-generation, model-free: only the answer checks (arithmetic, final answer, length)."""

    name = "answer-checks-judge"
    needs_answer = True

    def _features(self, queries: Sequence[LabeledQuery]) -> np.ndarray:
        return np.array([answer_features(q.prompt, q.small_answer or "") for q in queries])


SCORERS: dict[str, type[LogisticScorer]] = {
    "learned-prompt": PromptRouter,
    "learned": LearnedQualityJudge,
    "answer-checks": AnswerChecksJudge,
}
