"""The ingress's answer caches: exact match first, then by meaning when a request opts in.

Entries are scoped to the tenant that asked: another tenant's identical (or similar)
question is a miss, so neither an answer nor the fact that someone asked crosses tenants.

Lookups run on the request path (traced as `sluice.cache.lookup`); stores run off it, after
an answer completed cleanly. Owns both caches and the counters `/v1/cache/stats` and
`/metrics` read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from opentelemetry.trace import Tracer

from sluice import sse
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.response_cache import (
    BYPASS,
    CacheLookup,
    CacheStatus,
    ResponseCache,
    cache_policy,
)
from sluice.cache_tier.semantic_cache import SemanticCache, wants_semantic
from sluice.router.features import Embedder
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig

Spawn = Callable[[Coroutine[Any, Any, None]], None]


def _response_cache(config: ResponseCacheConfig, redis_url: str | None) -> ResponseCache | None:
    if not config.enabled or not redis_url:
        return None
    return ResponseCache(async_client(redis_url, config.timeout_ms / 1000), config)


def _semantic_cache(config: SemanticCacheConfig, exact: ResponseCache | None,
                    embedder: Callable[[], Embedder]) -> SemanticCache | None:
    if not config.enabled or exact is None:
        return None
    model = embedder()  # loaded now, not on the first opted-in request
    return SemanticCache(exact, config, lambda text: model.embed([text])[0])


class AnswerCache:
    def __init__(self, exact: ResponseCacheConfig, semantic: SemanticCacheConfig,
                 redis_url: str | None, embedder: Callable[[], Embedder], spawn: Spawn,
                 tracer: Tracer) -> None:
        self.exact = _response_cache(exact, redis_url)
        self.semantic = _semantic_cache(semantic, self.exact, embedder)
        self._spawn, self._tracer = spawn, tracer

    async def lookup(self, endpoint: str, model: str, body: dict[str, Any],
                     headers: Mapping[str, str], tenant: str, scope: str = "") -> CacheLookup:
        """`scope`: what shapes the answer besides the body (a compression applied): part of
        the key, so such answers are kept apart."""
        if self.exact is None:
            return BYPASS
        with self._tracer.start_as_current_span("sluice.cache.lookup") as span:
            found = await self._lookup(endpoint, model, body, headers, tenant, scope)
            span.set_attribute("sluice.cache", found.status.value)
            return found

    async def _lookup(self, endpoint: str, model: str, body: dict[str, Any],
                      headers: Mapping[str, str], tenant: str, scope: str) -> CacheLookup:
        assert self.exact is not None
        scoped = f"{model}{scope}@{tenant}"  # part of the key and of the semantic context
        exact = await self.exact.lookup(endpoint, scoped, body, headers)
        if (exact.status is not CacheStatus.MISS or self.semantic is None
                or not wants_semantic(self.semantic.config, model, headers)):
            return exact
        read = cache_policy(body, headers).read
        found = await self.semantic.lookup(endpoint, scoped, body, read)
        if found.body is not None:
            return CacheLookup(CacheStatus.HIT, None, found.body, found.similarity)
        return dataclasses.replace(exact, probe=found.probe)

    def store(self, cached: CacheLookup, payload: str) -> None:
        if self.exact is not None and cached.store_key is not None:
            self._spawn(self._put(cached, payload))

    def store_whole(self, cached: CacheLookup, answer: dict[str, Any]) -> None:
        """A JSON answer, serialised now (before settlement prices it) if it is stored."""
        if self.exact is not None and cached.store_key is not None:
            self.store(cached, json.dumps(answer))

    async def _put(self, cached: CacheLookup, payload: str) -> None:
        assert self.exact is not None and cached.store_key is not None
        stored = await self.exact.put(cached.store_key, payload)
        if stored and cached.probe is not None and self.semantic is not None:
            await self.semantic.remember(cached.probe, cached.store_key)

    def recorded(self, events: AsyncIterator[list[sse.Event]], cached: CacheLookup
                 ) -> AsyncIterator[list[sse.Event]]:
        """The stream, stored whole (its SSE text) once it completed without an error."""
        if self.exact is None or cached.store_key is None:
            return events
        return self._recording(events, cached)

    async def _recording(self, events: AsyncIterator[list[sse.Event]], cached: CacheLookup
                         ) -> AsyncIterator[list[sse.Event]]:
        texts: list[str] = []
        failed = False
        async for chunk in events:
            for event in chunk:
                texts.append(event.text)
                failed = failed or event.kind == sse.ERROR
            yield chunk
        if not failed:
            self.store(cached, "".join(texts))

    def counters(self) -> dict[str, dict[str, int] | None]:
        return {"response": dict(self.exact.counters) if self.exact else None,
                "semantic": dict(self.semantic.counters) if self.semantic else None}

    async def stats(self) -> dict[str, Any]:
        if self.semantic is not None:
            await self.semantic.sync()  # the index size includes other replicas' entries
        counters = self.counters()
        return {"response_cache": counters["response"],
                "semantic_cache": counters["semantic"],
                "semantic_index_entries": len(self.semantic) if self.semantic else 0}

    async def health(self) -> str:
        return ("disabled" if self.exact is None
                else "ok" if await self.exact.probe() else "degraded")
