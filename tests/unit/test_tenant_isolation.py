"""Tenant isolation against a real redis-server: the same (or a similar) question from
another tenant never gets this tenant's cached answer, exact or semantic; rate-limit
counters under a `*` limit are per tenant. (Budgets per tenant: test_budgets.py; the ledger
and /v1/usage per tenant: tests/integration/test_accounting_live.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from opentelemetry.trace import NoOpTracer

from sluice.accounting.rate_limits import RateLimiter
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.response_cache import CacheStatus
from sluice.errors import RateLimited
from sluice.pipeline.answer_cache import AnswerCache
from sluice.schema.accounting import RateLimitsConfig
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig

SEMANTIC = {"x-sluice-semantic-cache": "allow"}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "small",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}]}


class SameMeaning:
    """Every text means the same (similarity 1.0): only the scoping can keep them apart."""

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2.0


def _chat(question: str) -> dict[str, Any]:
    return {"model": "small", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": question}]}


def test_cached_answers_never_cross_tenants_exact_or_semantic(redis_url) -> None:
    async def run() -> None:
        tasks: list[asyncio.Future] = []
        cache = AnswerCache(ResponseCacheConfig(timeout_ms=2000),
                            SemanticCacheConfig(enabled=True), redis_url, SameMeaning,
                            lambda coro: tasks.append(asyncio.ensure_future(coro)),
                            NoOpTracer())  # type: ignore[arg-type]
        question = _chat("what is the capital of France")
        first = await cache.lookup("chat", "small", question, SEMANTIC, "acme")
        assert first.status is CacheStatus.MISS
        cache.store_whole(first, ANSWER)
        await asyncio.gather(*tasks)  # stored, and published to the shared semantic log

        again = await cache.lookup("chat", "small", question, SEMANTIC, "acme")
        assert again.status is CacheStatus.HIT and again.similarity is None  # exact
        other = await cache.lookup("chat", "small", question, SEMANTIC, "globex")
        assert other.status is CacheStatus.MISS and other.body is None

        similar = _chat("tell me the capital of France")
        mine = await cache.lookup("chat", "small", similar, SEMANTIC, "acme")
        assert mine.status is CacheStatus.HIT and mine.similarity is not None  # by meaning
        theirs = await cache.lookup("chat", "small", similar, SEMANTIC, "globex")
        assert theirs.status is CacheStatus.MISS and theirs.body is None
        # another ingress replica (its own mirror of the shared index) keeps them apart too
        replica = AnswerCache(ResponseCacheConfig(timeout_ms=2000),
                              SemanticCacheConfig(enabled=True), redis_url, SameMeaning,
                              lambda coro: tasks.append(asyncio.ensure_future(coro)),
                              NoOpTracer())  # type: ignore[arg-type]
        assert (await replica.lookup("chat", "small", similar, SEMANTIC, "acme")).body
        assert (await replica.lookup("chat", "small", similar, SEMANTIC, "globex")).body is None

    asyncio.run(run())


def test_a_compressed_requests_answer_is_kept_apart_from_the_full_ones(redis_url) -> None:
    """The same body asked with and without compression (or at another ratio) is a
    different question: its answers never stand in for each other, exact or semantic; the
    semantic cache stays on for it (its model's setting is read without the scope)."""
    async def run() -> None:
        tasks: list[asyncio.Future] = []
        cache = AnswerCache(ResponseCacheConfig(timeout_ms=2000),
                            SemanticCacheConfig(enabled=True, models=("small",)), redis_url,
                            SameMeaning, lambda coro: tasks.append(asyncio.ensure_future(coro)),
                            NoOpTracer())  # type: ignore[arg-type]
        question, scope = _chat("what is the capital of Spain"), "~compressed:relevance:0.5"
        first = await cache.lookup("chat", "small", question, SEMANTIC, "acme", scope)
        assert first.status is CacheStatus.MISS
        cache.store_whole(first, ANSWER)
        await asyncio.gather(*tasks)
        assert (await cache.lookup("chat", "small", question, SEMANTIC, "acme",
                                   scope)).status is CacheStatus.HIT
        similar = _chat("tell me the capital of Spain")
        hit = await cache.lookup("chat", "small", similar, SEMANTIC, "acme", scope)
        assert hit.status is CacheStatus.HIT and hit.similarity is not None
        for other in ("", "~compressed:relevance:0.6"):
            for body in (question, similar):
                found = await cache.lookup("chat", "small", body, SEMANTIC, "acme", other)
                assert found.status is CacheStatus.MISS and found.body is None

    asyncio.run(run())


def test_rate_limit_counters_under_a_star_limit_are_per_tenant(redis_url) -> None:
    cfg = RateLimitsConfig.model_validate({"limits": [
        {"scope": "tenant", "id": "*", "requests_per_minute": 2}], "store_timeout_ms": 3000})
    limiter = RateLimiter(cfg, redis_url, lambda coro: asyncio.ensure_future(coro), 1)
    alice, bob, carol = (Principal("alice", "acme"), Principal("bob", "acme"),
                         Principal("carol", "globex"))

    async def run() -> None:
        await limiter.reserve(alice, 1)
        await limiter.reserve(bob, 1)  # the same tenant: the same counter ...
        try:
            await limiter.reserve(alice, 1)
            raise AssertionError("acme's third request in a minute was accepted")
        except RateLimited as err:
            assert "acme" in err.message
        fresh = await limiter.reserve(carol, 1)  # ... another tenant's is its own
        assert fresh is not None and fresh.quota.remaining["requests"] == 1

    asyncio.run(run())
