"""Response-cache logic against a hand-built async KV (the real Redis is in integration)."""

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from sluice.cache_tier.response_cache import (
    CacheStatus,
    ResponseCache,
    cache_key,
    cache_policy,
    decode_entry,
    encode_entry,
)
from sluice.schema.caches import ResponseCacheConfig

BODY = {"model": "small", "messages": [{"role": "user", "content": "hi"}], "temperature": 0,
        "max_tokens": 5}


class FakeKV:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.fail = False
        self.delay_s = 0.0

    async def _maybe_fail(self) -> None:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RedisConnectionError("down")

    async def get(self, key):
        await self._maybe_fail()
        return self.data.get(key)

    async def set(self, key, value, ex):
        await self._maybe_fail()
        self.data[key] = value
        return True

    async def delete(self, key):
        await self._maybe_fail()
        self.data.pop(key, None)

    async def ping(self):
        await self._maybe_fail()
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _cache(kv=None, clock=None, **cfg):
    return ResponseCache(kv or FakeKV(), ResponseCacheConfig(**cfg), clock or Clock())


def run(coro):
    return asyncio.run(coro)


def test_policy_deterministic_opt_in_and_cache_control() -> None:
    assert cache_policy(BODY, {}) .read
    assert cache_policy(BODY | {"temperature": 0.7}, {}).bypass
    assert cache_policy(BODY | {"temperature": 0.7}, {"x-sluice-cache": "allow"}).read
    no_cache = cache_policy(BODY, {"cache-control": "no-cache"})
    assert not no_cache.read and no_cache.write
    assert cache_policy(BODY, {"cache-control": "max-age=0, no-store"}).bypass
    assert cache_policy(BODY | {"stream": True}, {}).read


def test_key_covers_output_shaping_fields_only() -> None:
    k = cache_key("chat", "small", BODY, "p:")
    assert k == cache_key("chat", "small", BODY | {"user": "u", "request_id": "r"}, "p:")
    # a streamed answer is stored in its wire format, apart from the non-streamed one
    assert k != cache_key("chat", "small", BODY | {"stream": True}, "p:")
    assert k == cache_key("chat", "small", BODY | {"model": "auto"}, "p:")  # served model counts
    assert k != cache_key("chat", "large", BODY, "p:")
    assert k != cache_key("completions", "small", BODY, "p:")
    for change in ({"max_tokens": 6}, {"seed": 1}, {"stop": ["x"]}, {"top_p": 0.5},
                   {"messages": [{"role": "user", "content": "hi!"}]}):
        assert k != cache_key("chat", "small", BODY | change, "p:"), change


def test_entries_round_trip_and_corruption_is_detected() -> None:
    raw = encode_entry('{"a": 1}')
    assert decode_entry(raw) == '{"a": 1}'
    assert decode_entry(raw[:-5]) is None  # truncated
    assert decode_entry(raw.replace(b'\\"a\\"', b'\\"b\\"')) is None  # body altered
    assert decode_entry(b"\xff\x00") is None


def test_miss_then_hit() -> None:
    cache = _cache()

    async def scenario():
        first = await cache.lookup("chat", "small", BODY, {})
        assert first.status is CacheStatus.MISS and first.store_key
        await cache.put(first.store_key, '{"x": 1}')
        second = await cache.lookup("chat", "small", BODY, {})
        assert second.status is CacheStatus.HIT and second.body == '{"x": 1}'

    run(scenario())
    assert cache.counters["hit"] == 1 and cache.counters["miss"] == 1


def test_corrupted_entry_is_a_miss_and_is_deleted() -> None:
    kv = FakeKV()
    cache = _cache(kv)
    key = cache_key("chat", "small", BODY, cache.config.key_prefix)
    kv.data[key] = encode_entry('{"x": 1}')[:-3]
    result = run(cache.lookup("chat", "small", BODY, {}))
    assert result.status is CacheStatus.MISS and key not in kv.data
    assert cache.counters["corrupt"] == 1


def test_outage_bypasses_quickly_then_recovers_by_itself() -> None:
    kv, clock = FakeKV(), Clock()
    cache = _cache(kv, clock, retry_after_s=5)
    kv.fail = True
    assert run(cache.lookup("chat", "small", BODY, {})).status is CacheStatus.BYPASS
    assert not cache.healthy
    kv.fail = False
    assert run(cache.lookup("chat", "small", BODY, {})).status is CacheStatus.BYPASS  # still open
    clock.t += 5
    assert cache.healthy
    assert run(cache.lookup("chat", "small", BODY, {})).status is CacheStatus.MISS


def test_probe_reports_redis_now_and_closes_the_circuit() -> None:
    kv = FakeKV()
    cache = _cache(kv)
    kv.fail = True
    assert run(cache.probe()) is False
    run(cache.lookup("chat", "small", BODY, {}))
    assert not cache.healthy
    kv.fail = False
    assert run(cache.probe()) is True and cache.healthy


def test_slow_redis_is_cut_at_the_timeout() -> None:
    kv = FakeKV()
    kv.delay_s = 0.5
    cache = _cache(kv, timeout_ms=20)

    async def timed():
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await cache.lookup("chat", "small", BODY, {})
        return result, loop.time() - start

    result, elapsed = run(timed())
    assert result.status is CacheStatus.BYPASS and elapsed < 0.2


def test_oversized_responses_are_not_stored() -> None:
    kv = FakeKV()
    cache = _cache(kv, max_entry_bytes=10)
    run(cache.put("k", "x" * 11))
    assert kv.data == {}


def test_disabled_cache_always_bypasses() -> None:
    assert run(_cache(enabled=False).lookup("chat", "small", BODY, {})).status is (
        CacheStatus.BYPASS)


@pytest.mark.parametrize("header", ["no-store", "NO-STORE"])
def test_no_store_is_case_insensitive(header: str) -> None:
    assert cache_policy(BODY, {"cache-control": header}).bypass
