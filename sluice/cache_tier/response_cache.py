"""Exact-match response cache in Redis, for deterministic requests.

A hit costs no engine time. The cache must never cost a request: every Redis call has a tight
timeout, a failure opens a short circuit (Redis is not asked again for `retry_after_s`, so an
outage adds no latency), and the next probe after that closes it again by itself. Entries carry
a checksum; anything that does not parse or verify is a miss, and is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.schema.caches import ResponseCacheConfig

log = logging.getLogger(__name__)
FORMAT_VERSION = 1

# Request fields that change neither the answer nor its wire format. (`stream` and
# `stream_options` stay in the key: a streamed answer is stored as its SSE body.)
NOT_IN_KEY = frozenset({"request_id", "user", "priority", "session_id", "model"})


class CacheStatus(str, Enum):
    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"


@dataclass(frozen=True)
class CachePolicy:
    """What this request may do with the cache (from its parameters and Cache-Control)."""

    read: bool
    write: bool

    @property
    def bypass(self) -> bool:
        return not (self.read or self.write)


def cache_policy(body: Mapping[str, Any], headers: Mapping[str, str]) -> CachePolicy:
    """Deterministic requests (temperature 0) or explicit opt-in (`x-sluice-cache: allow`);
    `Cache-Control: no-cache` skips the lookup, `no-store` skips the cache entirely."""
    directives = {d.strip().lower() for d in headers.get("cache-control", "").split(",")}
    opted_in = headers.get("x-sluice-cache", "").lower() == "allow"
    deterministic = body.get("temperature") == 0
    if "no-store" in directives or not (deterministic or opted_in):
        return CachePolicy(read=False, write=False)
    return CachePolicy(read="no-cache" not in directives, write=True)


def cache_key(endpoint: str, model: str, body: Mapping[str, Any], prefix: str) -> str:
    """Hash of the served model, the endpoint and every field that shapes the output."""
    material = {k: v for k, v in body.items() if k not in NOT_IN_KEY and v is not None}
    canonical = json.dumps([endpoint, model, material], sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return prefix + hashlib.sha256(canonical.encode()).hexdigest()


def encode_entry(body: str) -> bytes:
    digest = hashlib.sha256(body.encode()).hexdigest()
    return json.dumps({"v": FORMAT_VERSION, "sha256": digest, "body": body}).encode()


def decode_entry(raw: bytes) -> str | None:
    """The stored response body, or None for anything corrupted, truncated or foreign."""
    try:
        entry = json.loads(raw)
        body = entry["body"]
        ok = (entry["v"] == FORMAT_VERSION and isinstance(body, str)
              and hashlib.sha256(body.encode()).hexdigest() == entry["sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return body if ok else None


class AsyncKV(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ex: int) -> Any: ...
    async def delete(self, key: str) -> Any: ...
    async def ping(self) -> Any: ...


class ResponseCache:
    """Exact-match cache over an async Redis client, with timeouts and a circuit breaker."""

    def __init__(self, client: AsyncKV, config: ResponseCacheConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._config = config
        self._clock = clock
        self._open_until = 0.0
        self.counters = {"hit": 0, "miss": 0, "bypass": 0, "error": 0, "corrupt": 0}

    @property
    def config(self) -> ResponseCacheConfig:
        return self._config

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._open_until

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One Redis command under the timeout and the circuit breaker; None on failure."""
        if not self.healthy:
            return None
        try:
            return await asyncio.wait_for(getattr(self._client, method)(*args, **kwargs),
                                          timeout=self._config.timeout_ms / 1000)
        except STORE_ERRORS as exc:
            self._trip(exc)
        return None

    def _trip(self, exc: BaseException) -> None:
        self.counters["error"] += 1
        self._open_until = self._clock() + self._config.retry_after_s
        log.warning("response cache bypassed for %.0f s: %r", self._config.retry_after_s, exc)

    async def probe(self) -> bool:
        """Ask Redis now (for readiness), regardless of the circuit; a success closes it."""
        try:
            await asyncio.wait_for(self._client.ping(), timeout=self._config.timeout_ms / 1000)
        except STORE_ERRORS:
            return False
        self._open_until = 0.0
        return True

    async def get(self, key: str) -> str | None:
        raw = await self.call("get", key)
        if raw is None:
            return None
        body = decode_entry(raw)
        if body is None:
            self.counters["corrupt"] += 1
            await self.call("delete", key)
        return body

    async def put(self, key: str, body: str) -> bool:
        """Store an answer; False when it was too large or Redis did not take it."""
        if len(body) > self._config.max_entry_bytes:
            return False
        return bool(await self.call("set", key, encode_entry(body), ex=self._config.ttl_s))

    async def lookup(self, endpoint: str, model: str, body: Mapping[str, Any],
                     headers: Mapping[str, str]) -> CacheLookup:
        """Decide, and look up if allowed: what the ingress needs before calling an engine."""
        policy = cache_policy(body, headers)
        if policy.bypass or not self._config.enabled or not self.healthy:
            return self._counted(BYPASS)
        key = cache_key(endpoint, model, body, self._config.key_prefix)
        hit = await self.get(key) if policy.read else None
        if hit is not None:
            return self._counted(CacheLookup(CacheStatus.HIT, key, hit))
        if not self.healthy:  # the lookup itself just failed
            return self._counted(BYPASS)
        return self._counted(CacheLookup(CacheStatus.MISS, key if policy.write else None, None))

    def _counted(self, result: CacheLookup) -> CacheLookup:
        self.counters[result.status.value] += 1
        return result


@dataclass(frozen=True)
class CacheLookup:
    status: CacheStatus
    store_key: str | None  # where to store the engine's answer, if it may be stored
    body: str | None  # the cached response, on a hit
    similarity: float | None = None  # set on a semantic hit
    probe: Any = None  # a semantic cache's question, to remember the answer under


BYPASS = CacheLookup(CacheStatus.BYPASS, None, None)
