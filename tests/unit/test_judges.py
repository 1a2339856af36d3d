"""Judges, the cascade policy and reliability tracking on hand-built inputs."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from sluice.router.cascade import ESCALATED, SMALL, CascadePolicy
from sluice.router.judges import Candidate, JudgeError, LLMJudge, LogprobJudge
from sluice.router.reliability import (
    ReliabilityTracker,
    agree,
    final_number,
    token_overlap,
    wilson_interval,
)
from sluice.schema.routing import RouteConfig

MANUAL = {"method": "manual", "reason": "unit test"}


def test_logprob_judge_geometric_mean_and_min() -> None:
    lps = (math.log(0.9), math.log(0.1))
    cand = Candidate("q", ("a",), (lps,))
    assert asyncio.run(LogprobJudge("mean").score(cand)) == pytest.approx(0.3)
    assert asyncio.run(LogprobJudge("min").score(cand)) == pytest.approx(0.1)
    two = Candidate("q", ("a", "b"), ((math.log(0.9),), (math.log(0.5),)))
    assert asyncio.run(LogprobJudge().score(two)) == pytest.approx(0.5)  # weakest choice
    with pytest.raises(JudgeError):
        asyncio.run(LogprobJudge().score(Candidate("q", ("a",), None)))


def test_llm_judge_reads_yes_no_probabilities() -> None:
    seen = []

    async def grade(messages, spend):
        seen.append(messages)
        return math.log(0.6), math.log(0.2)

    score = asyncio.run(LLMJudge(grade).score(Candidate("2+2?", ("4",))))
    assert score == pytest.approx(0.75)
    assert "2+2?" in seen[0][1]["content"] and "4" in seen[0][1]["content"]

    async def no_yes(messages, spend):
        return -math.inf, math.log(0.3)

    assert asyncio.run(LLMJudge(no_yes).score(Candidate("q", ("a",)))) == pytest.approx(0.0)

    async def neither(messages, spend):
        return -math.inf, -math.inf

    with pytest.raises(JudgeError):
        asyncio.run(LLMJudge(neither).score(Candidate("q", ("a",))))


def _policy(**over) -> CascadePolicy:
    route = RouteConfig.model_validate({
        "name": "auto", "small": "s", "large": "l",
        "pre_router": None,
        "judge": {"kind": "logprob", "threshold": 0.6, "provenance": MANUAL}, **over})
    return CascadePolicy(route, random.Random(0))


def test_policy_thresholds_and_counters() -> None:
    policy = _policy(shadow={"fraction": 0.5})
    assert policy.accept(0.6) and not policy.accept(0.59)
    assert not policy.straight_to_large(0.0)  # no pre-router configured
    draws = [policy.sample_shadow() for _ in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    policy.count(SMALL)
    policy.count(ESCALATED)
    policy.count("large:fallback", "judge")
    snap = policy.snapshot()
    assert snap["escalation_rate"] == pytest.approx(0.5)
    assert snap["large_share"] == pytest.approx(2 / 3)
    assert snap["fallbacks"] == {"judge": 1}


def test_agreement_by_final_answer_then_overlap() -> None:
    assert final_number("so the total is 1,000.50 dollars") == "1000.5"
    assert agree("... #### 540", "The answer is 540.", "final-answer", 0.5)
    assert not agree("#### 540", "#### 541", "final-answer", 0.5)
    assert agree("the sky is blue", "the sky is blue today", "final-answer", 0.5)
    assert token_overlap("a b", "c d") == 0.0
    assert not agree("12", "12 apples and pears", "text-overlap", 0.5)


def test_reliability_warns_only_with_enough_pairs_under_the_level() -> None:
    t = ReliabilityTracker(window=10, min_samples=4, warn_below=0.8)
    assert t.estimate is None and not t.warning
    assert not t.record(False) and not t.record(False)
    assert not t.warning  # 2 pairs: not enough to say
    t.record(True)
    assert t.record(True)  # 4 pairs at 0.5: the state changes to warning
    for _ in range(10):
        t.record(True)
    assert t.n == 10 and t.estimate == 1.0 and not t.warning  # window slid past the misses
    low, high = wilson_interval(8, 10)
    assert low < 0.8 < high
