"""Judges: how good is the small model's answer? One interface, four kinds.

A judge returns a score in [0, 1] (higher: keep the small answer); the cascade escalates
below the route's calibrated threshold. Judges do no network I/O themselves: the LLM judge
gets its grading call injected, so this package stays pure decision logic.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from sluice.router.scorers import LogisticScorer

if TYPE_CHECKING:
    from sluice.accounting.stage_spend import StageLog


@dataclass(frozen=True)
class Candidate:
    """What a judge sees: the prompt as text and the small model's answer per choice."""

    prompt: str
    answers: tuple[str, ...]
    token_logprobs: tuple[tuple[float, ...], ...] | None = None


class JudgeError(RuntimeError):
    """The judge could not score (the cascade falls back to the large model)."""


class Judge(Protocol):
    name: str
    needs_logprobs: bool

    async def score(self, candidate: Candidate, spend: StageLog | None = None) -> float:
        """`spend`: the request's stage log, for a judge whose scoring costs engine work."""


class LogprobJudge:
    """The small model's own confidence: geometric-mean (or minimum) token probability.

    The weakest choice decides when a request asked for several (n > 1).
    """

    name = "logprob"
    needs_logprobs = True

    def __init__(self, reduce: Literal["mean", "min"] = "mean") -> None:
        self._reduce = reduce

    def confidence(self, logprobs: Sequence[float]) -> float:
        finite = [lp for lp in logprobs if math.isfinite(lp)]
        if not finite:
            raise JudgeError("no token log-probabilities to judge")
        value = sum(finite) / len(finite) if self._reduce == "mean" else min(finite)
        return math.exp(value)

    async def score(self, candidate: Candidate, spend: StageLog | None = None) -> float:
        if not candidate.token_logprobs:
            raise JudgeError("the small model returned no log-probabilities")
        return min(self.confidence(lps) for lps in candidate.token_logprobs)


class ScorerJudge:
    """A fitted classifier over prompt and answer (learned estimator or answer checks)."""

    needs_logprobs = False

    def __init__(self, name: str, scorer: LogisticScorer) -> None:
        self.name = name
        self._scorer = scorer

    async def score(self, candidate: Candidate, spend: StageLog | None = None) -> float:
        prompts = [candidate.prompt] * len(candidate.answers)
        scores = await asyncio.to_thread(self._scorer.score_texts, prompts,
                                         list(candidate.answers))
        return float(min(scores))


GRADER_SYSTEM = ("You are a strict grader. Judge whether the answer fully and correctly "
                 "answers the question. Reply with exactly one word: Yes or No.")


def grading_messages(prompt: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": GRADER_SYSTEM},
        {"role": "user", "content": f"Question:\n{prompt}\n\nAnswer:\n{answer}\n\n"
                                    "Is the answer correct? Yes or No."},
    ]


# (messages, the request's stage log) -> (log P(Yes), log P(No)) for the judge model's
# next token; the grading call's usage goes into the log
Grader = Callable[[list[dict[str, str]], "StageLog | None"], Awaitable[tuple[float, float]]]


class LLMJudge:
    """LLM-as-judge, read as a probability: P(Yes) / (P(Yes) + P(No)) for the next token.

    Reading the two label log-probabilities (rather than parsing generated text) gives a
    graded score from a single decoded token, so it can be thresholded and calibrated.
    """

    name = "llm"
    needs_logprobs = False

    def __init__(self, grade: Grader) -> None:
        self._grade = grade

    async def score(self, candidate: Candidate, spend: StageLog | None = None) -> float:
        scores = []
        for answer in candidate.answers:
            lp_yes, lp_no = await self._grade(grading_messages(candidate.prompt, answer), spend)
            if not (math.isfinite(lp_yes) or math.isfinite(lp_no)):
                raise JudgeError("the judge model gave neither label any probability")
            scores.append(1.0 / (1.0 + math.exp(min(700.0, lp_no - lp_yes))))
        return min(scores)


class LearnedPromptRouter:
    """Stage 1: P(small is enough | prompt), before any model runs."""

    name = "learned-prompt"

    def __init__(self, scorer: LogisticScorer) -> None:
        self._scorer = scorer

    async def score(self, prompt: str) -> float:
        scores = await asyncio.to_thread(self._scorer.score_texts, [prompt])
        return float(scores[0])
