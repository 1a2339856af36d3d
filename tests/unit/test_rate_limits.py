"""Rate limits against a real redis-server: several limiters (as several ingress replicas)
share the counters; a request takes all its limits or none; a token reservation is
corrected when the request ends; Redis down follows the configured policy; the refusal and
the accepted answer carry OpenAI's x-ratelimit headers."""

from __future__ import annotations

import asyncio

import pytest

from sluice.accounting.rate_limits import (
    WINDOW_S,
    RateLimiter,
    _LocalWindows,
    duration,
    headers,
    meters,
)
from sluice.accounting.tenancy import Principal
from sluice.errors import RateLimited, Unavailable
from sluice.schema.accounting import RateLimitsConfig

ALICE, BOB = Principal("alice", "acme"), Principal("bob", "acme")
CAROL = Principal("carol", "globex")




def config(*limits: dict, **over) -> RateLimitsConfig:
    """A generous store budget: these tests are about the counting, and this machine may
    be busy (the 50 ms default is for a store on the same network, not a loaded laptop)."""
    return RateLimitsConfig.model_validate({"limits": list(limits), "store_timeout_ms": 3000,
                                            **over})


def limiter(cfg: RateLimitsConfig, url: str | None, replicas: int = 1) -> RateLimiter:
    return RateLimiter(cfg, url, lambda coro: asyncio.ensure_future(coro), replicas)


def test_the_key_and_tenant_limits_that_apply_and_their_default() -> None:
    cfg = config({"scope": "key", "id": "alice", "requests_per_minute": 5},
                 {"scope": "key", "id": "*", "requests_per_minute": 2, "tokens_per_minute": 9},
                 {"scope": "tenant", "id": "acme", "tokens_per_minute": 100})
    assert [(m.key, m.limit, m.cost) for m in meters(cfg.limits, ALICE, 7)] == [
        ("sluice:rl:key:alice:requests", 5, 1), ("sluice:rl:tenant:acme:tokens", 100, 7)]
    assert [m.key for m in meters(cfg.limits, CAROL, 7)] == [  # `*`: carol's own counters
        "sluice:rl:key:carol:requests", "sluice:rl:key:carol:tokens"]


def test_a_burst_through_three_replicas_gets_exactly_the_limit(redis_url) -> None:
    cfg = config({"scope": "key", "id": "*", "requests_per_minute": 20})
    replicas = [limiter(cfg, redis_url) for _ in range(3)]

    async def burst() -> tuple[int, list[RateLimited]]:
        results = await asyncio.gather(*(replicas[i % 3].reserve(ALICE, 1) for i in range(60)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, RateLimited)]
        other = await replicas[0].reserve(BOB, 1)  # another key: its own counters
        assert other is not None and other.quota.remaining["requests"] == 19
        return len(results) - len(refused), refused

    accepted, refused = asyncio.run(burst())
    assert accepted == 20 and len(refused) == 40  # atomic in Redis: no overshoot at all
    err = refused[0]
    assert err.status == 429 and err.type == "requests" and err.code == "rate_limit_exceeded"
    assert 1 <= int(err.headers["Retry-After"]) <= 2 * WINDOW_S
    assert err.headers["x-ratelimit-limit-requests"] == "20"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_request_takes_all_its_limits_or_none(redis_url) -> None:
    cfg = config({"scope": "key", "id": "alice", "requests_per_minute": 100},
                 {"scope": "tenant", "id": "acme", "tokens_per_minute": 1000})
    rl = limiter(cfg, redis_url)

    async def run() -> None:
        first = await rl.reserve(ALICE, 900)
        assert first.quota.remaining == {"requests": 99, "tokens": 100}
        with pytest.raises(RateLimited) as info:
            await rl.reserve(ALICE, 200)  # the tenant's tokens refuse it ...
        assert info.value.type == "tokens"
        again = await rl.reserve(ALICE, 50)  # ... and it took no request either
        assert again.quota.remaining == {"requests": 98, "tokens": 50}

    asyncio.run(run())


def test_a_reservation_is_corrected_to_the_real_tokens(redis_url) -> None:
    cfg = config({"scope": "tenant", "id": "acme", "tokens_per_minute": 1000})
    rl = limiter(cfg, redis_url)

    async def run() -> None:
        r = await rl.reserve(ALICE, 800)  # prompt + max_tokens
        with pytest.raises(RateLimited):
            await rl.reserve(BOB, 300)
        rl.settle(r, 120)  # it used 120: 680 given back
        rl.settle(r, 120)  # once only
        await asyncio.sleep(0.1)
        after = await rl.reserve(BOB, 300)
        assert after.quota.remaining["tokens"] == 1000 - 120 - 300

    asyncio.run(run())


def test_a_request_larger_than_the_limit_is_told_to_ask_for_less(redis_url) -> None:
    rl = limiter(config({"scope": "key", "id": "*", "tokens_per_minute": 100}), redis_url)
    with pytest.raises(RateLimited, match="max_tokens"):
        asyncio.run(rl.reserve(ALICE, 101))


def test_redis_down_limits_locally_at_the_replicas_share_or_refuses_when_closed() -> None:
    dead = "redis://127.0.0.1:1"
    local = limiter(config({"scope": "key", "id": "*", "requests_per_minute": 10},
                           store_timeout_ms=200), dead, replicas=2)

    async def count() -> int:
        ok = 0
        for _ in range(10):
            try:
                await local.reserve(ALICE, 1)
                ok += 1
            except RateLimited:
                pass
        return ok

    assert asyncio.run(count()) == 5 and local.fallbacks == 10  # 10 / 2 replicas
    closed = limiter(config({"scope": "key", "id": "*", "requests_per_minute": 10},
                            on_store_down="closed", store_timeout_ms=200), dead)
    with pytest.raises(Unavailable) as info:
        asyncio.run(closed.reserve(ALICE, 1))
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"


def test_no_limits_means_no_check_and_no_store() -> None:
    rl = limiter(config(), "redis://127.0.0.1:1")
    assert not rl.enabled and asyncio.run(rl.reserve(ALICE, 10)) is None


def test_the_local_window_slides() -> None:
    now = [600.0]
    windows = _LocalWindows(lambda: now[0])
    cfg = config({"scope": "key", "id": "*", "requests_per_minute": 4})
    ms = meters(cfg.limits, ALICE, 1)
    assert [windows.take(ms)[0] for _ in range(5)] == [True] * 4 + [False]
    now[0] += 60  # the next minute: the previous one still counts in full at its start
    assert windows.take(ms)[0] is False
    now[0] += 30  # half-way: 4 x 0.5 = 2 still counted
    assert [windows.take(ms)[0] for _ in range(3)] == [True, True, False]


def test_openai_header_formats() -> None:
    assert (duration(0.02), duration(1.0), duration(360.0), duration(59.2)) == (
        "20ms", "1s", "6m0s", "1m0s")
    assert headers(None) == {}
