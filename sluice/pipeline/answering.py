"""The pipeline's core: a parsed, admitted request in, a typed Answer out.

In the order it runs: a budget past its soft limit sends a cascade's request to its small
model; a cascade route (a virtual model) runs its stages (`cascade_runner`); any other
model is resolved by the static router; the response cache is asked first; then the
chosen model's engine is called (`engines`). Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from opentelemetry.trace import Tracer

from sluice import sse
from sluice.accounting.accountant import Admission
from sluice.accounting.budgets import BudgetGuard
from sluice.accounting.stage_spend import StageLog
from sluice.cache_tier.response_cache import CacheLookup
from sluice.pipeline.answer import Answer, cached_answer, replayed
from sluice.pipeline.answer_cache import AnswerCache
from sluice.pipeline.cascade_runner import CascadeOutcome, CascadeRunner, candidate
from sluice.pipeline.engines import Engines, EngineStream
from sluice.pipeline.replay import sse_events
from sluice.pipeline.request import ParsedRequest
from sluice.rollouts.controller import Rollouts
from sluice.router.reliability import agree
from sluice.router.static import StaticRouter
from sluice.schema.catalog import CatalogModel

BUDGET_DOWNGRADE = "budget-downgrade"


class Pipeline:
    def __init__(self, router: StaticRouter, runners: dict[str, CascadeRunner],
                 engines: Engines, cache: AnswerCache, guard: BudgetGuard,
                 tracer: Tracer,
                 spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 rollouts: Rollouts | None = None) -> None:
        """spawn: runs background work (the shadow calls of `rollouts`)."""
        self._router, self._runners, self._engines = router, runners, engines
        self._cache, self._guard, self._tracer = cache, guard, tracer
        self._spawn, self._clock, self._rollouts = spawn, clock, rollouts

    def knows(self, model: str) -> bool:
        return model in self._runners or model in self._engines

    def models_at_worst(self, model: str) -> list[CatalogModel]:
        return self._router.models_at_worst(model)

    async def answer(self, request: ParsedRequest, admission: Admission, spend: StageLog
                     ) -> Answer:
        verdict = admission.verdict
        budget = "soft" if verdict.level == "soft" else None
        tenant = admission.principal.tenant
        runner = self._runners.get(request.llm.model)
        if runner is not None and verdict.downgrade:
            request.llm.model = runner.policy.route.small  # the budget's soft limit
            self._guard.downgraded(verdict)
            return await self._direct(request, tenant, budget, BUDGET_DOWNGRADE)
        if runner is not None:
            return await self._cascade(request, runner, tenant, budget, spend)
        return await self._direct(request, tenant, budget)

    async def _direct(self, request: ParsedRequest, tenant: str, budget: str | None,
                      route: str | None = None) -> Answer:
        with self._tracer.start_as_current_span("sluice.route") as span:
            decision = self._router.decide(request.llm.model)
            span.set_attributes({"sluice.route": decision.route,
                                 "sluice.route.model": decision.model})
        route = route or decision.route
        cached = await self._lookup(request, decision.model, tenant)
        if cached.body is not None:
            return self._hit(request, cached, decision.model, route, budget)
        started = self._clock()
        stream = await self._engines.call(decision.model, request.endpoint, request.llm)
        # a failover chain's later model answered: it is the model (and the price)
        answer = Answer(stream.model, route, cached.status.value, replica=stream.replica,
                        retries=stream.retries, budget=budget, failed_over=stream.failed_over)
        answer = self._from_engine(request, stream, answer, cached)
        self._maybe_shadow(request, decision.model, answer, started)
        return answer

    def _maybe_shadow(self, request: ParsedRequest, model: str, answer: Answer,
                      started: float) -> None:
        """A sampled copy of the request goes, in the background, to the variant this
        answer is compared with (a shadow's candidate, or a canary's baseline for its
        quality gate). The user's answer is passed on unchanged (a stream is only read
        along, to compare it at its end), and nobody is billed for the copy."""
        rollouts = self._rollouts
        compared = (rollouts.compare_for(model, answer.model)
                    if rollouts is not None and self._spawn is not None else None)
        if compared is None:
            return
        assert self._spawn is not None and rollouts is not None
        rollout, copy_to = compared
        endpoint = request.endpoint
        copy = request.llm.model_copy(update={"stream": False, "stream_options": None})
        told: asyncio.Future[tuple[str, int, float]] = (
            asyncio.get_running_loop().create_future())
        if answer.whole is not None:
            told.set_result((*_text_and_tokens(endpoint, answer.whole),
                             self._clock() - started))
        elif answer.events is not None:
            answer.events = _told(answer.events, told, started, self._clock)

        async def copy_answer() -> tuple[str, int]:
            stream = await self._engines.call_chain(copy_to, endpoint, copy)
            return _text_and_tokens(endpoint, stream.whole())

        def agreed(user: str, other: str) -> bool:
            return agree(user, other, "text-overlap", 0.5)

        self._spawn(rollouts.shadowed(rollout, copy_answer(), told, agreed,
                                      copy_is_candidate=copy_to == rollout.candidate))

    async def _cascade(self, request: ParsedRequest, runner: CascadeRunner, tenant: str,
                       budget: str | None, spend: StageLog) -> Answer:
        """A virtual model: the route's stages decide; a judged answer comes back whole."""
        cached = await self._lookup(request, request.llm.model, tenant)
        if cached.body is not None:
            return self._hit(request, cached, request.llm.model, "cache", budget)
        with self._tracer.start_as_current_span("sluice.route") as span:
            outcome = await runner.run(request.endpoint, request.llm, spend)
            span.set_attributes({"sluice.route": outcome.route,
                                 "sluice.route.model": outcome.model,
                                 **{f"sluice.score.{k}": v for k, v in outcome.scores.items()}})
        answer = Answer(outcome.model, outcome.route, cached.status.value,
                        replica=outcome.stream.replica if outcome.stream else outcome.replica,
                        retries=outcome.stream.retries if outcome.stream else outcome.retries,
                        scores=outcome.scores, fallback=outcome.fallback, budget=budget)
        if outcome.stream is not None:
            return self._from_engine(request, outcome.stream, answer, cached)
        return self._judged(request, outcome, answer, cached)

    async def _lookup(self, request: ParsedRequest, model: str, tenant: str) -> CacheLookup:
        return await self._cache.lookup(request.endpoint, model, request.body, request.headers,
                                        tenant, request.cache_scope)

    @staticmethod
    def _hit(request: ParsedRequest, cached: CacheLookup, model: str, route: str,
             budget: str | None) -> Answer:
        assert cached.body is not None
        answer = cached_answer(request, cached.body, model, route, cached.status.value,
                               cached.similarity)
        answer.budget = budget
        return answer

    def _from_engine(self, request: ParsedRequest, stream: EngineStream, answer: Answer,
                     cached: CacheLookup) -> Answer:
        if request.llm.stream:
            answer.events = self._cache.recorded(stream.events(), cached)
        else:
            answer.whole = stream.whole()
            self._cache.store_whole(cached, answer.whole)
        return answer

    def _judged(self, request: ParsedRequest, outcome: CascadeOutcome, answer: Answer,
                cached: CacheLookup) -> Answer:
        """The accepted small answer; a client that asked to stream gets it replayed as a
        stream (with its usage event, which settlement drops if the client did not ask)."""
        assert outcome.response is not None
        if not request.llm.stream:
            answer.whole = outcome.response
            self._cache.store_whole(cached, answer.whole)
            return answer
        text = "".join(sse_events(request.endpoint, outcome.response, include_usage=True))
        self._cache.store(cached, text)
        answer.events, answer.buffered = replayed([sse.read(text, parse_first=True)]), True
        return answer


def _text_and_tokens(endpoint: str, whole: dict[str, Any]) -> tuple[str, int]:
    seen = candidate(endpoint, "", whole)  # type: ignore[arg-type]
    tokens = int((whole.get("usage") or {}).get("completion_tokens") or 0)
    return (seen.answers[0] if seen.answers else ""), tokens


async def _told(events: AsyncIterator[list[sse.Event]],
                told: asyncio.Future[tuple[str, int, float]], started: float,
                clock: Callable[[], float]) -> AsyncIterator[list[sse.Event]]:
    """The stream as it is, its text gathered on the side for a shadow comparison."""
    parts: list[str] = []
    tokens = 0
    try:
        async for chunk in events:
            for e in chunk:
                data = e.payload if e.payload is not None else sse.payload(e.text)
                for choice in (data or {}).get("choices") or ():
                    if choice.get("index", 0) == 0:
                        delta = choice.get("delta") or {}
                        piece = delta.get("content") if "delta" in choice else choice.get("text")
                        if piece:
                            parts.append(piece)
                            tokens += 1
                usage = (data or {}).get("usage") or {}
                tokens = int(usage.get("completion_tokens") or tokens)
            yield chunk
    finally:
        if not told.done():
            told.set_result(("".join(parts), tokens, clock() - started))
