"""Rollouts of a cascade route's versions (`auto` -> `auto@v2`): the routes file, the router,
and the whole framework-free request path against a real Redis: the sticky split where the
route is resolved, the answer naming the version, the observations the gates judge, the
shadow copies, and the ledger."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracer

from sluice.accounting.accountant import Accountant
from sluice.accounting.response_cost import UsagePricer
from sluice.cache_tier.redis_target import async_client
from sluice.deployments.http import render
from sluice.errors import InvalidRequest, ModelNotFound, Unavailable
from sluice.observability.metrics import Metrics
from sluice.pipeline.answer_cache import AnswerCache
from sluice.pipeline.answering import Pipeline
from sluice.pipeline.background import Background
from sluice.pipeline.cascade_runner import CascadeRunner
from sluice.pipeline.engines import EngineStream
from sluice.pipeline.handler import RequestHandler
from sluice.pipeline.request import RequestLimits
from sluice.rollouts.controller import Rollouts
from sluice.rollouts.store import RolloutStore
from sluice.rollouts.targets import always_served, versions
from sluice.router.cascade import CascadePolicy
from sluice.router.judges import LogprobJudge
from sluice.router.static import StaticRouter
from sluice.schema.accounting import AccountingConfig
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig
from sluice.schema.loading import load_platform_config
from sluice.schema.rollouts import RolloutSettings, RolloutSpec
from sluice.schema.routing import RouteConfig, RoutingConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
MANUAL = {"method": "manual", "reason": "unit test"}
# v1 accepts the small model's answer (its judge scores 0.9); v2 asks more and escalates
AUTO = {"name": "auto", "small": "small", "large": "large",
        "judge": {"kind": "logprob", "threshold": 0.5, "provenance": MANUAL}}
AUTO_V2 = {**AUTO, "name": "auto@v2", "judge": {**AUTO["judge"], "threshold": 0.95}}
ROUTES = (RouteConfig.model_validate(AUTO), RouteConfig.model_validate(AUTO_V2))
GATES = {"min_requests": 20, "latency_quantile": 0.5, "ttft_max_ratio": 5.0,
         "tpot_max_ratio": 5.0, "error_margin": 0.1}
CHAT = {"messages": [{"role": "user", "content": "6 x 7?"}]}
USAGE = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}


# ---- the routes file and the router ---------------------------------------------------

def test_a_route_may_have_versions_of_a_route_of_the_same_file() -> None:
    routing = RoutingConfig(routes=ROUTES)
    assert [(r.base, r.variant) for r in routing.variants("auto")] == [("auto", "v1"),
                                                                     ("auto", "v2")]
    routing.check_models({"small", "large"})
    with pytest.raises(ValueError, match="a version of 'fast', which is not a cascade route"):
        RoutingConfig(routes=(ROUTES[0], RouteConfig.model_validate({**AUTO_V2,
                                                                     "name": "fast@v2"})))
    with pytest.raises(ValueError, match="name"):
        RouteConfig.model_validate({**AUTO, "name": "auto@"})
    with pytest.raises(ValueError, match="name"):
        RoutingConfig.model_validate({"selections": [{"name": "cheap@v2",
                                                      "candidates": ["small", "large"]}]})


def test_the_router_serves_a_version_by_name_and_bounds_a_request_by_every_version() -> None:
    v2 = RouteConfig.model_validate({**AUTO_V2, "judge": {
        "kind": "llm", "judge_model": "large", "threshold": 0.5, "provenance": MANUAL}})
    router = StaticRouter(CONFIG.catalog, "small", [ROUTES[0], v2])
    assert {"auto", "auto@v2"} <= set(router.model_ids)
    assert router.metadata("auto@v2")["version_of"] == "auto"
    assert router.metadata("auto")["version"] == "v1"
    # a request for `auto` may be given v2, whose judge runs the large model once more
    assert [m.name for m in router.models_at_worst("auto")] == ["small", "large"]
    assert [m.name for m in router.models_at_worst("auto@v2")] == ["small", "large", "large"]
    config = CONFIG.model_copy(update={"routing": RoutingConfig(routes=ROUTES)})
    assert versions(config)["auto@v2"] == ("auto", "v2")
    assert versions(config)["small"] == ("small", "v1")
    assert always_served(config) == {"auto", "auto@v2"}


# ---- the request path -------------------------------------------------------------------

class _Response:
    def __init__(self, model: str) -> None:
        self._d = {"id": f"cmpl-{model}", "object": "chat.completion", "created": 1,
                   "model": model, "choices": [{
                       "index": 0, "finish_reason": "stop",
                       "message": {"role": "assistant", "content": f"{model} says 42"},
                       "logprobs": {"content": [{"token": "4", "logprob": math.log(0.9)}]}}],
                   "usage": dict(USAGE)}

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        return json.loads(json.dumps(self._d))


async def _none():
    return
    yield


class FakeEngines:
    """Engines' shape: whole answers; the large model fails when told to."""

    def __init__(self, large_fails: bool = False) -> None:
        self.calls: list[str] = []
        self.large_fails = large_fails

    def __contains__(self, model: object) -> bool:
        return model in ("small", "large")

    async def call(self, model: str, endpoint: str, request: Any) -> EngineStream:
        self.calls.append(model)
        if model == "large" and self.large_fails:
            raise Unavailable("large is down")
        return EngineStream(model, _Response(model), _none(), "replica-1")

    call_chain = call


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Stack:
    def __init__(self, redis_url: str, engines: FakeEngines) -> None:
        self.background, self.engines, self.clock = Background(), engines, Clock()
        config = CONFIG.model_copy(update={"routing": RoutingConfig(routes=ROUTES)})
        runners = {r.name: CascadeRunner(CascadePolicy(r, random.Random(0)), engines,
                                         self.background.spawn, judge=LogprobJudge())
                   for r in ROUTES}
        cache = AnswerCache(ResponseCacheConfig(enabled=False), SemanticCacheConfig(), None,
                            lambda: None, self.background.spawn,  # type: ignore[arg-type]
                            NoOpTracer())
        metrics = Metrics()
        self.accountant = Accountant(AccountingConfig(), redis_url, self.background.spawn,
                                     metrics)
        self.rollouts = Rollouts(RolloutSettings(poll_s=0.05, evaluate_s=0.05),
                                 RolloutStore(async_client(redis_url, 1.0)), versions(config),
                                 set(engines_names()) | always_served(config),
                                 clock=self.clock, rng=random.Random(1))
        pipeline = Pipeline(StaticRouter(CONFIG.catalog, "small", ROUTES), runners,
                            engines, cache, self.accountant.guard,  # type: ignore[arg-type]
                            NoOpTracer(), spawn=self.background.spawn, rollouts=self.rollouts)
        pricer = UsagePricer({m.name: m.pricing for m in CONFIG.catalog.models})
        self.handler = RequestHandler(pipeline, self.accountant, pricer, metrics,
                                      RequestLimits(8, 4096), 1 << 20, rollouts=self.rollouts)

    async def ask(self, user: str, model: str = "auto") -> Any:
        async def body():
            yield json.dumps({"model": model, **CHAT}).encode()

        settled = await self.handler.handle("chat", {"x-sluice-user": user}, body(),
                                            f"req-{user}")
        return render(settled)

    async def quiet(self) -> None:
        """The background work (shadow copies, ledger writes) done."""
        for _ in range(200):
            if not len(self.background):
                break
            await asyncio.sleep(0.01)
        await self.rollouts.flush()
        assert self.accountant.ledger is not None
        await self.accountant.ledger.flush()

    async def close(self) -> None:
        await self.rollouts.close()
        await self.accountant.close()


def engines_names() -> list[str]:
    return [m.name for m in CONFIG.catalog.models]


def test_an_ab_split_of_a_route_is_sticky_named_measured_and_in_the_ledger(redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        await stack.rollouts.begin(RolloutSpec(model="auto", to="v2", kind="ab", percent=50))
        served: dict[str, str] = {}
        for i in range(60):
            response = await stack.ask(f"user-{i}")
            variant = response.headers["x-sluice-variant"]
            # the version the rollout picks answers, and says so; v2 escalates, v1 does not
            expected = stack.rollouts.route("auto", f"h:user-{i}")
            assert variant == ("v2" if expected == "auto@v2" else "v1")
            assert response.headers["x-sluice-route"] == (
                "small>large" if variant == "v2" else "small")
            served[f"user-{i}"] = variant
        assert 15 < list(served.values()).count("v2") < 45
        for user in ("user-1", "user-2", "user-3"):  # sticky: the same user, the same arm
            assert (await stack.ask(user)).headers["x-sluice-variant"] == served[user]
        await stack.quiet()
        status = await stack.rollouts.status("auto")
        arms = status["measured"]["arms"]
        assert arms["candidate"]["model"] == "auto@v2" and arms["baseline"]["model"] == "auto"
        v2 = list(served.values()).count("v2") + [served[u] for u in
                                                  ("user-1", "user-2", "user-3")].count("v2")
        assert arms["candidate"]["requests"] == v2
        assert arms["baseline"]["requests"] == 63 - v2
        usage = await stack.accountant.usage({}, {"group_by": "variant"})
        groups = {row["group"]: row["requests"] for row in usage["data"]}
        assert groups == {"auto@v2": v2, "auto": 63 - v2}
        await stack.close()

    asyncio.run(run())


def test_a_version_asked_for_by_name_answers_without_a_rollout(redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        response = await stack.ask("u", model="auto@v2")
        assert response.headers["x-sluice-variant"] == "v2"
        assert response.headers["x-sluice-route"] == "small>large"
        assert (await stack.ask("u")).headers["x-sluice-variant"] == "v1"
        await stack.close()

    asyncio.run(run())


def test_a_failing_route_version_under_a_canary_is_rolled_back_by_the_gates(redis_url
                                                                            ) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines(large_fails=True))  # v2 needs large: it fails
        await stack.rollouts.begin(RolloutSpec.model_validate(
            {"model": "auto", "to": "v2", "steps": [50, 100], "step_s": 60,
             "max_step_s": 600, "gates": GATES}))
        failed = 0
        for i in range(80):
            try:
                response = await stack.ask(f"user-{i}")
                assert response.headers["x-sluice-variant"] == "v1"
            except Unavailable:
                failed += 1
                assert stack.rollouts.route("auto", f"h:user-{i}") == "auto@v2"
        assert 20 <= failed <= 60
        await stack.quiet()
        await stack.rollouts.judge()
        status = await stack.rollouts.status("auto")
        assert status["status"] == "rolled_back", status["canary"]["gates"]
        assert status["reason"].startswith(f"error_rate: canary 100.00% of {failed}")
        # rolled back: every request for `auto` goes to v1 again, on every replica
        assert stack.rollouts.route("auto", "h:user-1") == "auto"
        assert (await stack.ask("user-1")).headers["x-sluice-variant"] == "v1"
        await stack.close()

    asyncio.run(run())


def test_a_shadow_route_version_answers_copies_never_the_user(redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        await stack.rollouts.begin(RolloutSpec(model="auto", to="v2", kind="shadow",
                                               percent=100))
        for i in range(5):
            response = await stack.ask(f"user-{i}")
            assert response.headers["x-sluice-variant"] == "v1"
            assert response.headers["x-sluice-route"] == "small"
            assert json.loads(bytes(response.body))["choices"][0]["message"]["content"] == (
                "small says 42")
        await stack.quiet()
        # every copy went through v2's stages: small, then (escalated) large
        assert stack.engines.calls.count("large") == 5
        status = await stack.rollouts.status("auto")
        assert status["shadow"]["pairs"] == 5
        assert status["measured"]["arms"]["baseline"]["requests"] == 5
        await stack.close()

    asyncio.run(run())


def test_a_rollout_of_a_route_names_an_existing_version(redis_url) -> None:
    async def run() -> None:
        stack = Stack(redis_url, FakeEngines())
        with pytest.raises(ModelNotFound, match="no variant 'auto@v9'") as info:
            await stack.rollouts.begin(RolloutSpec(model="auto", to="v9"))
        assert info.value.status == 404 and info.value.code == "model_not_found"
        with pytest.raises(InvalidRequest, match="'auto@v2' is a variant"):
            await stack.rollouts.begin(RolloutSpec(model="auto@v2", to="v3"))
        with pytest.raises(ModelNotFound, match="no model 'cheapest'"):
            await stack.rollouts.begin(RolloutSpec(model="cheapest", to="v2"))
        await stack.close()

    asyncio.run(run())
