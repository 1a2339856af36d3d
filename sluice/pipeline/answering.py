"""The pipeline's core: a parsed, admitted request in, a typed Answer out.

In the order it runs: a cascade route with versions (`auto`, `auto@v2`) under a rollout
has the rollout pick which version answers (sticky, as a model's variants are picked at the
engine call); a budget past its soft limit sends a cascade's request to its small model; a
cascade route (a virtual model) runs its stages (`cascade_runner`); any other model is
resolved by the static router; the response cache is asked first; then the chosen model's
engine is called (`engines`). Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
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
from sluice.pipeline.engines import SUBJECT_ATTR, Engines, EngineStream
from sluice.pipeline.replay import sse_events
from sluice.pipeline.request import Endpoint, LLMRequest, ParsedRequest
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
        # the routes with versions: their answers name the version (x-sluice-variant)
        versions = Counter(r.policy.route.base for r in runners.values())
        self._versioned = {n for n, r in runners.items() if versions[r.policy.route.base] > 1}

    def knows(self, model: str) -> bool:
        return model in self._runners or model in self._engines

    def models_at_worst(self, model: str) -> list[CatalogModel]:
        return self._router.models_at_worst(model)

    async def answer(self, request: ParsedRequest, admission: Admission, spend: StageLog
                     ) -> Answer:
        verdict = admission.verdict
        budget = "soft" if verdict.level == "soft" else None
        tenant = admission.principal.tenant
        runner = self._route_version(request)
        if runner is not None and verdict.downgrade:
            request.llm.model = runner.policy.route.small  # the budget's soft limit
            self._guard.downgraded(verdict)
            return self._named(runner, await self._direct(request, tenant, budget,
                                                          BUDGET_DOWNGRADE))
        if runner is not None:
            if runner.policy.route.name in self._versioned:  # its rollout's measurements,
                request.variants.append(runner.policy.route.name)  # the ledger (not for a
                #   budget's downgrade above: the version's own stages did not answer it)
            return self._named(runner, await self._cascade(request, runner, tenant, budget,
                                                           spend))
        return await self._direct(request, tenant, budget)

    def _route_version(self, request: ParsedRequest) -> CascadeRunner | None:
        """The cascade route that answers: the one asked for, or the version of it a
        rollout picks for this request (sticky); None for a request that is no route's."""
        asked = str(request.llm.model)
        runner = self._runners.get(asked)
        if runner is None:
            return None
        if self._rollouts is not None:
            picked = self._rollouts.route(asked, getattr(request.llm, SUBJECT_ATTR, None) or "")
            runner = self._runners.get(picked, runner)  # (a version since removed: asked)
        return runner

    def _named(self, runner: CascadeRunner, answer: Answer) -> Answer:
        """A route with versions: its answer names the version (x-sluice-variant)."""
        route = runner.policy.route
        if route.name in self._versioned:
            answer.variant = route.variant
        return answer

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
        self._maybe_shadow(request, decision.model, answer.model, answer, started,
                           self._ask_model)
        return answer

    async def _ask_model(self, model: str, endpoint: Endpoint, copy: LLMRequest
                         ) -> dict[str, Any]:
        return (await self._engines.call_chain(model, endpoint, copy)).whole()

    async def _ask_route(self, route: str, endpoint: Endpoint, copy: LLMRequest
                         ) -> dict[str, Any]:
        """A copy answered by a version of a route (its stages' spend is nobody's bill)."""
        outcome = await self._runners[route].run(endpoint, copy, StageLog())
        if outcome.response is not None:
            return outcome.response
        assert outcome.stream is not None
        return outcome.stream.whole()

    def _maybe_shadow(self, request: ParsedRequest, model: str, answered_by: str,
                      answer: Answer, started: float,
                      ask: Callable[[str, Endpoint, LLMRequest], Awaitable[dict[str, Any]]]
                      ) -> None:
        """A sampled copy of the request goes, in the background, to the variant this
        answer is compared with (a shadow's candidate, or a canary's baseline for its
        quality gate): a model's variant, or a route's version (`ask` calls it). The user's
        answer is passed on unchanged (a stream is only read along, to compare it at its
        end), and nobody is billed for the copy."""
        rollouts = self._rollouts
        compared = (rollouts.compare_for(model, answered_by)
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
            return _text_and_tokens(endpoint, await ask(copy_to, endpoint, copy))

        def agreed(user: str, other: str) -> bool:
            return agree(user, other, "text-overlap", 0.5)

        self._spawn(rollouts.shadowed(rollout, copy_answer(), told, agreed,
                                      copy_is_candidate=copy_to == rollout.candidate))

    async def _cascade(self, request: ParsedRequest, runner: CascadeRunner, tenant: str,
                       budget: str | None, spend: StageLog) -> Answer:
        """A virtual model: the route's stages decide; a judged answer comes back whole.
        A version of a route caches apart from the route (its answers may differ)."""
        name = runner.policy.route.name
        cached = await self._lookup(request, name, tenant)
        if cached.body is not None:
            return self._hit(request, cached, request.llm.model, "cache", budget)
        started = self._clock()
        with self._tracer.start_as_current_span("sluice.route") as span:
            outcome = await runner.run(request.endpoint, request.llm, spend)
            span.set_attributes({"sluice.route": outcome.route,
                                 "sluice.route.model": outcome.model,
                                 **({"sluice.route.version": name}
                                    if name in self._versioned else {}),
                                 **{f"sluice.score.{k}": v for k, v in outcome.scores.items()}})
        answer = Answer(outcome.model, outcome.route, cached.status.value,
                        replica=outcome.stream.replica if outcome.stream else outcome.replica,
                        retries=outcome.stream.retries if outcome.stream else outcome.retries,
                        scores=outcome.scores, fallback=outcome.fallback, budget=budget)
        if outcome.stream is not None:
            answer = self._from_engine(request, outcome.stream, answer, cached)
        else:
            answer = self._judged(request, outcome, answer, cached)
        if name in self._versioned:
            self._maybe_shadow(request, runner.policy.route.base, name, answer, started,
                               self._ask_route)
        return answer

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
