"""Run one cascade route for a request: pre-route, answer small, judge, escalate, shadow.

The decisions are the router package's (CascadePolicy, judges); this module only does the
I/O around them. Any failure of a routing stage (an exception or a timeout of the pre-router
or the judge, the small model unavailable) falls back to the large model and is counted;
the request itself never fails because routing did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.trace import NoOpTracer, Tracer

from sluice.accounting.stage_spend import StageLog
from sluice.errors import ContextLengthExceeded, Unavailable
from sluice.pipeline.engines import EngineStream
from sluice.pipeline.request import Endpoint, LLMRequest
from sluice.router.cascade import ESCALATED, FALLBACK, LARGE, SMALL, CascadePolicy
from sluice.router.judges import Candidate, Judge, LearnedPromptRouter
from sluice.router.reliability import agree

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class EngineCaller(Protocol):
    """What the runner needs of the engines (`sluice.pipeline.engines.Engines`)."""

    async def call(self, model: str, endpoint: str, request: Any) -> EngineStream: ...


@dataclass
class CascadeOutcome:
    """What answered and why; exactly one of `stream` and `response` is set."""

    route: str
    model: str
    stream: EngineStream | None = None  # relay it (honours the client's stream flag)
    response: dict[str, Any] | None = None  # a buffered, judged answer
    scores: dict[str, float] = field(default_factory=dict)
    fallback: str | None = None
    replica: str | None = None  # of a buffered answer (a stream knows its own)
    retries: int = 0  # of a buffered answer's engine call (likewise)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_text(endpoint: Endpoint, request: LLMRequest) -> str:
    """The question routers and judges see: the last user message, or the prompt."""
    if endpoint == "chat":
        for message in reversed(request.messages):  # type: ignore[union-attr]
            m = message if isinstance(message, dict) else message.model_dump()
            if m.get("role") == "user":
                return _text(m.get("content"))
        return ""
    prompt = request.prompt  # type: ignore[union-attr]
    return prompt if isinstance(prompt, str) else str(prompt[0]) if prompt else ""


def candidate(endpoint: Endpoint, prompt: str, response: dict[str, Any]) -> Candidate:
    choices = response.get("choices") or []
    if endpoint == "chat":
        answers = tuple(_text((c.get("message") or {}).get("content")) for c in choices)
        lps = [[t["logprob"] for t in (c.get("logprobs") or {}).get("content") or []]
               for c in choices]
    else:
        answers = tuple(c.get("text") or "" for c in choices)
        lps = [[lp for lp in (c.get("logprobs") or {}).get("token_logprobs") or []
                if lp is not None] for c in choices]
    return Candidate(prompt, answers, tuple(tuple(x) for x in lps) if any(lps) else None)


def _client_wants_logprobs(endpoint: Endpoint, request: LLMRequest) -> bool:
    if endpoint == "chat":
        return bool(request.logprobs)
    return request.logprobs is not None


def _buffered_copy(endpoint: Endpoint, request: LLMRequest, with_logprobs: bool) -> LLMRequest:
    """The request as the cascade sends it to be judged: whole, with logprobs if needed."""
    update: dict[str, Any] = {"stream": False, "stream_options": None}
    if with_logprobs and not _client_wants_logprobs(endpoint, request):
        update.update({"logprobs": True, "top_logprobs": 0} if endpoint == "chat"
                      else {"logprobs": 0})
    return request.model_copy(update=update)


class CascadeRunner:
    """One route's stages, wired to the engines. Dependencies are passed in."""

    def __init__(self, policy: CascadePolicy, engines: EngineCaller, spawn: Spawn,
                 pre_router: LearnedPromptRouter | None = None,
                 judge: Judge | None = None, tracer: Tracer | None = None) -> None:
        self.policy = policy
        self._route = policy.route
        self._call = engines.call
        self._spawn = spawn
        self._pre_router = pre_router
        self._judge = judge
        self._shadows_in_flight = 0
        self._tracer = tracer or NoOpTracer()

    async def run(self, endpoint: Endpoint, request: LLMRequest, spend: StageLog
                  ) -> CascadeOutcome:
        """Answer the request by the route's stages; work paid for but not sent (a rejected
        draft, an LLM judge's call) goes into `spend`."""
        prompt = prompt_text(endpoint, request)
        scores: dict[str, float] = {}
        if self._pre_router is not None and self._route.pre_router is not None:
            score = await self._stage(self._pre_router.score(prompt),
                                      self._route.pre_router.timeout_ms, "pre-router")
            if score is None:
                return await self._large(endpoint, request, FALLBACK, scores, "pre-router")
            scores["router"] = score
            if self.policy.straight_to_large(score):
                return await self._large(endpoint, request, LARGE, scores)
        if self._judge is None:
            try:
                stream = await self._call(self._route.small, endpoint, request)
            except ContextLengthExceeded:  # as with a judge: too long for small, not for large
                return await self._large(endpoint, request, ESCALATED, scores, "small-context")
            self.policy.count(SMALL)
            return CascadeOutcome(SMALL, self._route.small, stream=stream, scores=scores)
        return await self._judged(endpoint, request, prompt, scores, spend)

    async def _judged(self, endpoint: Endpoint, request: LLMRequest, prompt: str,
                      scores: dict[str, float], spend: StageLog) -> CascadeOutcome:
        assert self._judge is not None and self._route.judge is not None
        small_request = _buffered_copy(endpoint, request, self._judge.needs_logprobs)
        try:
            small = await self._call(self._route.small, endpoint, small_request)
        except ContextLengthExceeded:
            return await self._large(endpoint, request, ESCALATED, scores, "small-context")
        except Unavailable:
            return await self._large(endpoint, request, FALLBACK, scores, "small-unavailable")
        response = small.whole()
        seen = candidate(endpoint, prompt, response)
        score = await self._stage(self._judge.score(seen, spend),
                                  self._route.judge.timeout_ms, "judge")
        if score is None:
            spend.record("draft", self._route.small, response)
            return await self._large(endpoint, request, FALLBACK, scores, "judge")
        scores["judge"] = score
        if not self.policy.accept(score):
            spend.record("draft", self._route.small, response)  # paid for, not sent
            return await self._large(endpoint, request, ESCALATED, scores)
        self.policy.count(SMALL)
        if not _client_wants_logprobs(endpoint, request):
            for choice in response.get("choices") or []:
                choice["logprobs"] = None
        self._maybe_shadow(endpoint, request, seen.answers[0] if seen.answers else "")
        return CascadeOutcome(SMALL, self._route.small, response=response, scores=scores,
                              replica=small.replica, retries=small.retries)

    async def _stage(self, work: Awaitable[float], timeout_ms: float, name: str
                     ) -> float | None:
        """A routing stage's score, or None when it failed or ran out of time."""
        with self._tracer.start_as_current_span(f"sluice.{name}") as span:
            score = await self._scored(work, timeout_ms, name)
            span.set_attribute("sluice.score", -1.0 if score is None else score)
            return score

    async def _scored(self, work: Awaitable[float], timeout_ms: float, name: str
                      ) -> float | None:
        try:
            return float(await asyncio.wait_for(work, timeout=timeout_ms / 1000))
        except TimeoutError:
            log.warning("route %s: %s timed out after %.0f ms; falling back to %s",
                        self._route.name, name, timeout_ms, self._route.large)
        except Exception as exc:  # noqa: BLE001 - a failing stage must not fail the request
            log.warning("route %s: %s failed (%r); falling back to %s",
                        self._route.name, name, exc, self._route.large)
        return None

    async def _large(self, endpoint: Endpoint, request: LLMRequest, label: str,
                     scores: dict[str, float], reason: str | None = None) -> CascadeOutcome:
        self.policy.count(label, reason)
        stream = await self._call(self._route.large, endpoint, request)
        return CascadeOutcome(label, self._route.large, stream=stream, scores=scores,
                              fallback=reason)

    # ---- shadow: online judge reliability ---------------------------------------------

    def _maybe_shadow(self, endpoint: Endpoint, request: LLMRequest, answer: str) -> None:
        if not self.policy.sample_shadow():
            return
        tracker = self.policy.reliability
        tracker.sampled += 1
        if self._shadows_in_flight >= self._route.shadow.max_in_flight:
            tracker.skipped += 1
            return
        self._shadows_in_flight += 1
        self._spawn(self._shadow(endpoint, _buffered_copy(endpoint, request, False), answer))

    async def _shadow(self, endpoint: Endpoint, request: LLMRequest, small_answer: str) -> None:
        tracker, shadow = self.policy.reliability, self._route.shadow
        try:
            stream = await self._call(self._route.large, endpoint, request)
            large = candidate(endpoint, "", stream.whole())
            agreed = agree(small_answer, large.answers[0] if large.answers else "",
                           shadow.agreement, shadow.overlap_threshold)
            if tracker.record(agreed):
                log.warning("route %s: judge reliability %.2f over %d shadow pairs is under "
                            "%.2f; accepted small answers disagree with the large model",
                            self._route.name, tracker.estimate or 0.0, tracker.n,
                            shadow.warn_below)
        except Exception as exc:  # noqa: BLE001 - background measurement only
            tracker.failed += 1
            log.warning("route %s: shadow call failed: %r", self._route.name, exc)
        finally:
            self._shadows_in_flight -= 1
