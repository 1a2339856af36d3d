"""CascadeRunner's I/O around the policy, with fake engines: fallbacks, escalation, shadow."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice.accounting.stage_spend import StageLog
from sluice.errors import ContextLengthExceeded, InvalidRequest, Unavailable
from sluice.pipeline.cascade_runner import CascadeRunner
from sluice.pipeline.replay import sse_events
from sluice.router.cascade import CascadePolicy
from sluice.router.judges import Candidate, LogprobJudge
from sluice.schema.routing import RouteConfig

MANUAL = {"method": "manual", "reason": "unit test"}


class FakeResponse:
    def __init__(self, model: str, text: str, logprob: float) -> None:
        self._d = {"id": "x", "object": "chat.completion", "created": 1, "model": model,
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text},
                                "logprobs": {"content": [{"token": "t", "logprob": logprob}]}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return self._d


class FakeStream:
    def __init__(self, first: Any, replica: str = "replica-1") -> None:
        self.first = first
        self.replica = replica
        self.retries = 0

    def whole(self) -> dict[str, Any]:
        return self.first.model_dump(mode="json")


class Engines:
    def __init__(self, small_error: Exception | None = None, small_logprob: float = -0.1,
                 large_delay: float = 0.0) -> None:
        self.calls: list[tuple[str, bool, Any]] = []
        self._small_error = small_error
        self._small_logprob = small_logprob
        self._large_delay = large_delay

    async def call(self, model: str, endpoint: str, request: Any) -> FakeStream:
        self.calls.append((model, request.stream, request.logprobs))
        if model == "small" and self._small_error is not None:
            raise self._small_error
        if model == "large":
            await asyncio.sleep(self._large_delay)
        return FakeStream(FakeResponse(model, f"{model} says 42", self._small_logprob))


def _runner(engines: Engines, judge: Any = None, threshold: float = 0.5, **route: Any
            ) -> tuple[CascadeRunner, list[asyncio.Task[None]]]:
    config = RouteConfig.model_validate({
        "name": "auto", "small": "small", "large": "large",
        "judge": {"kind": "logprob", "threshold": threshold, "timeout_ms": 50,
                  "provenance": MANUAL}, **route})
    tasks: list[asyncio.Task[None]] = []
    runner = CascadeRunner(CascadePolicy(config, random.Random(0)), engines,
                           lambda c: tasks.append(asyncio.ensure_future(c)),
                           judge=judge or LogprobJudge())
    return runner, tasks


def _request(**over: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({
        "model": "auto", "messages": [{"role": "user", "content": "6 x 7?"}], **over})


def test_accepted_answer_is_buffered_and_logprobs_not_leaked() -> None:
    engines = Engines(small_logprob=math.log(0.9))
    runner, _ = _runner(engines)
    out = asyncio.run(runner.run("chat", _request(stream=True), StageLog()))
    assert (out.route, out.model, out.stream) == ("small", "small", None)
    assert engines.calls == [("small", False, True)]  # buffered, logprobs asked for the judge
    assert out.response["choices"][0]["logprobs"] is None
    assert out.scores == {"judge": pytest.approx(0.9)} and out.replica == "replica-1"


def test_low_score_escalates_with_the_clients_own_request_and_logs_the_draft() -> None:
    engines = Engines(small_logprob=math.log(0.2))
    runner, _ = _runner(engines)
    spend = StageLog()
    out = asyncio.run(runner.run("chat", _request(stream=True), spend))
    assert (out.route, out.model) == ("small>large", "large")
    assert engines.calls[1] == ("large", True, False)  # streamed, as the client asked
    assert [(s.stage, s.model, s.usage["prompt_tokens"]) for s in spend.stages] == [
        ("draft", "small", 3)]  # paid for, not sent


class BrokenJudge:
    name, needs_logprobs = "broken", False

    async def score(self, candidate: Candidate, spend=None) -> float:
        raise RuntimeError("judge crashed")


class SlowJudge(BrokenJudge):
    async def score(self, candidate: Candidate, spend=None) -> float:
        await asyncio.sleep(1)
        return 1.0


@pytest.mark.parametrize("judge", [BrokenJudge(), SlowJudge()])
def test_failing_or_slow_judge_falls_back_to_large_and_counts(judge) -> None:
    runner, _ = _runner(Engines(), judge=judge)
    out = asyncio.run(runner.run("chat", _request(), StageLog()))
    assert (out.route, out.model, out.fallback) == ("large:fallback", "large", "judge")
    assert runner.policy.snapshot()["fallbacks"] == {"judge": 1}


def test_small_model_trouble_goes_to_large_client_errors_do_not() -> None:
    runner, _ = _runner(Engines(small_error=ContextLengthExceeded("too long")))
    out = asyncio.run(runner.run("chat", _request(), StageLog()))
    assert (out.route, out.fallback) == ("small>large", "small-context")
    runner, _ = _runner(Engines(small_error=Unavailable("engine down")))
    assert asyncio.run(runner.run("chat", _request(), StageLog())).fallback == "small-unavailable"
    runner, _ = _runner(Engines(small_error=InvalidRequest("bad", param="x")))
    with pytest.raises(InvalidRequest):
        asyncio.run(runner.run("chat", _request(), StageLog()))


def test_shadow_pairs_are_recorded_and_bounded() -> None:
    async def scenario() -> dict[str, Any]:
        engines = Engines(large_delay=0.5)  # the shadows outlive the 3 requests when loaded
        runner, tasks = _runner(engines, threshold=0.0,
                                shadow={"fraction": 1.0, "max_in_flight": 2, "min_samples": 1})
        for _ in range(3):
            await runner.run("chat", _request(), StageLog())
        await asyncio.gather(*tasks)
        return runner.policy.reliability.snapshot()

    rel = asyncio.run(scenario())
    assert rel["sampled"] == 3 and rel["skipped"] == 1 and rel["pairs"] == 2
    assert rel["estimate"] == 1.0  # "small says 42" and "large says 42" share the number


def test_buffered_answer_replays_as_openai_chunks() -> None:
    response = FakeResponse("small", "hello", 0.0).model_dump()
    events = list(sse_events("chat", response, include_usage=True))
    assert events[-1] == "data: [DONE]\n\n"
    assert '"delta":{"role":"assistant","content":"hello"}' in events[0]
    assert '"finish_reason":"stop"' in events[1]
    assert '"usage":{"prompt_tokens":3' in events[2]
    assert len(list(sse_events("chat", response, include_usage=False))) == 3


def test_a_route_without_a_judge_escalates_what_is_too_long_for_small() -> None:
    engines = Engines(small_error=ContextLengthExceeded("too long", param="max_tokens"))
    config = RouteConfig.model_validate({"name": "direct", "small": "small",
                                         "large": "large"})
    runner = CascadeRunner(CascadePolicy(config, random.Random(0)), engines, lambda c: None)
    outcome = asyncio.run(runner.run("chat", _request(), StageLog()))
    assert outcome.model == "large" and outcome.fallback == "small-context"
    assert [c[0] for c in engines.calls] == ["small", "large"]
