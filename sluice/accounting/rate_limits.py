"""Requests and tokens per minute, per key and per tenant, shared by every ingress replica.

The algorithm is a sliding-window counter: one Redis counter per limit and minute; the
usage now is the previous minute's count, weighted by the share of it still inside the last
60 s, plus this minute's. It is constant memory per limit whatever the limit (a moving
window keeps one entry per request or token: a 100,000-TPM limit would be 100,000 list
entries), and it errs by at most the previous minute's uneven spread.

Why not the `limits` library (which has this strategy, with async Redis storage): a request
must be checked against all its limits (key and tenant, requests and tokens) and take all
of them in one atomic step, and its token reservation must be corrected to the real count
when it ends, in the minute it was taken. `limits` tests and takes one limit at a time (so
a refusal by the second leaves the first taken, or a check-then-take races other replicas)
and has no way to give back part of a cost. One Lua script here does both, with Redis's
own clock (replicas' clocks do not matter).

Reservation: a request takes one request and `prompt + max_tokens x n` tokens (prompt
estimated at ~4 bytes of body a token; `default_completion_tokens` when it sets no
max_tokens); when it ends, the difference to its real usage is given back (or added) in
the minute it was taken. Redis unreachable (over `store_timeout_ms`): `local` limits each
replica alone to its share (limit / ingress replicas), `closed` refuses with 503.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sluice.accounting.tenancy import Principal
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.errors import RateLimited, Unavailable
from sluice.schema.accounting import RateLimit, RateLimitsConfig

log = logging.getLogger(__name__)
WINDOW_S = 60
PREFIX = "sluice:rl"
KINDS = ("requests", "tokens")
Spawn = Callable[[Coroutine[Any, Any, None]], None]

# KEYS: one counter base per meter. ARGV: window ms, then (limit, cost) per meter.
# Returns {allowed, window index, ms into the window, used before this request per meter}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local idx = math.floor(now / window)
local into = now - idx * window
local weight = 1 - into / window
local used, allowed = {}, 1
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i] .. ':' .. idx) or '0')
  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (idx - 1)) or '0')
  used[i] = math.floor(prev * weight + cur)
  if used[i] + tonumber(ARGV[2 * i + 1]) > tonumber(ARGV[2 * i]) then allowed = 0 end
end
if allowed == 1 then
  for i = 1, #KEYS do
    local k = KEYS[i] .. ':' .. idx
    redis.call('INCRBY', k, ARGV[2 * i + 1])
    redis.call('PEXPIRE', k, 2 * window + 1000)
  end
end
local out = {allowed, idx, into}
for i = 1, #KEYS do out[#out + 1] = used[i] end
return out
"""
# KEYS: counter bases; ARGV: window index, delta. Corrects a reservation in its own minute
# (a counter already expired is left alone: that minute no longer counts).
_CORRECT = """
for i = 1, #KEYS do
  local k = KEYS[i] .. ':' .. ARGV[1]
  if redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, ARGV[2]) end
end
return 1
"""


@dataclass(frozen=True)
class Meter:
    """One limit applied to one request."""

    key: str  # the counter's base
    kind: str  # "requests" | "tokens"
    limit: int
    cost: int
    who: str = ""  # "key 'k1'", "tenant 'acme'": for the refusal's message


@dataclass(frozen=True)
class Quota:
    """What is left, per kind, of the tightest limit that applies (OpenAI's headers)."""

    limit: dict[str, int]
    remaining: dict[str, int]
    reset_s: dict[str, float]


@dataclass
class Reservation:
    window: int
    store: str  # "redis" | "local"
    token_keys: tuple[str, ...]
    reserved_tokens: int
    quota: Quota | None
    settled: bool = field(default=False)


def meters(limits: tuple[RateLimit, ...], principal: Principal, tokens: int) -> list[Meter]:
    """The limits one request counts toward: its key's (a stored key's own, or the
    profile's for it, or the `*` key limit) and its tenant's (or the `*` tenant limit), each
    with its own counters."""
    out: list[Meter] = []
    for scope, ident in (("key", principal.key_id), ("tenant", principal.tenant)):
        own = [lim for lim in limits if lim.scope == scope and lim.id == ident]
        if scope == "key" and principal.rate_limit is not None:
            own = [principal.rate_limit]
        chosen = own or [lim for lim in limits if lim.scope == scope and lim.id == "*"]
        for lim in chosen:
            base, who = f"{PREFIX}:{scope}:{ident}", f"{scope} '{ident}'"
            if lim.requests_per_minute is not None:
                out.append(Meter(f"{base}:requests", "requests", lim.requests_per_minute, 1,
                                 who))
            if lim.tokens_per_minute is not None:
                out.append(Meter(f"{base}:tokens", "tokens", lim.tokens_per_minute, tokens,
                                 who))
    return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def headers(quota: Quota | None) -> dict[str, str]:
    if quota is None:
        return {}
    out: dict[str, str] = {}
    for kind in KINDS:
        if kind in quota.limit:
            out[f"x-ratelimit-limit-{kind}"] = str(quota.limit[kind])
            out[f"x-ratelimit-remaining-{kind}"] = str(max(0, quota.remaining[kind]))
            out[f"x-ratelimit-reset-{kind}"] = duration(quota.reset_s[kind])
    return out


def _retry_after(meter: Meter, used: int, into_s: float) -> float:
    """Seconds until `meter.cost` more fits: this minute's count moves into the weighted
    previous one at the window's end, then decays; bounded by the end of the next minute."""
    left = WINDOW_S - into_s
    if meter.cost > meter.limit:
        return WINDOW_S * 2  # it never fits: the client must ask for less
    return min(left + WINDOW_S * max(0.0, (used + meter.cost - meter.limit) / meter.limit),
               left + WINDOW_S)


def _decide(ms: list[Meter], allowed: bool, used: list[int], into_s: float) -> Quota:
    limit: dict[str, int] = {}
    remaining: dict[str, int] = {}
    reset: dict[str, float] = {}
    for m, u in zip(ms, used):
        left = m.limit - u - (m.cost if allowed else 0)
        if m.kind not in remaining or left < remaining[m.kind]:
            limit[m.kind], remaining[m.kind] = m.limit, left
            reset[m.kind] = WINDOW_S - into_s
    if not allowed:
        refused = [(m, u) for m, u in zip(ms, used) if u + m.cost > m.limit]
        wait = max(_retry_after(m, u, into_s) for m, u in refused)
        first = refused[0][0]
        message = (f"Rate limit of {first.limit} {first.kind} per minute reached for "
                   f"{first.who}; retry after the Retry-After seconds.")
        if first.cost > first.limit:
            message = (f"This request needs {first.cost} tokens, more than {first.who}'s "
                       f"limit of {first.limit} per minute; ask for fewer (max_tokens).")
        error = RateLimited(message, headers={"Retry-After": str(max(1, math.ceil(wait))),
                                              **headers(Quota(limit, remaining, reset))})
        error.type = first.kind
        raise error
    return Quota(limit, remaining, reset)


class _LocalWindows:
    """The same counters in this replica's memory, for when Redis cannot be reached."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._clock = clock
        self._window = -1  # the minute last seen: older counters are pruned when it moves

    def take(self, ms: list[Meter]) -> tuple[bool, int, float, list[int]]:
        now = self._clock()
        idx = int(now // WINDOW_S)
        into = now - idx * WINDOW_S
        weight = 1 - into / WINDOW_S
        if idx != self._window:
            self._window = idx
            self._counts = {k: v for k, v in self._counts.items() if k[1] >= idx - 1}
        used = [int(self._counts.get((m.key, idx - 1), 0) * weight
                    + self._counts.get((m.key, idx), 0)) for m in ms]
        allowed = all(u + m.cost <= m.limit for m, u in zip(ms, used))
        if allowed:
            for m in ms:
                self._counts[(m.key, idx)] = self._counts.get((m.key, idx), 0) + m.cost
        return allowed, idx, into, used

    def correct(self, keys: tuple[str, ...], window: int, delta: int) -> None:
        for key in keys:
            if (key, window) in self._counts:
                self._counts[(key, window)] += delta


class RateLimiter:
    def __init__(self, config: RateLimitsConfig, redis_url: str | None, spawn: Spawn,
                 replicas: int = 1, clock: Callable[[], float] = time.time,
                 key_limits: bool = False) -> None:
        """key_limits: keys of the key store may carry limits of their own."""
        self._config, self._spawn, self._replicas = config, spawn, max(1, replicas)
        self._key_limits = key_limits
        url = config.redis_url or redis_url
        self._timeout_s = config.store_timeout_ms / 1000
        self._client = (async_client(url, max(self._timeout_s, 0.5))
                        if self.enabled and url else None)
        self._take = self._client.register_script(_TAKE) if self._client else None
        self._correct = self._client.register_script(_CORRECT) if self._client else None
        self._local = _LocalWindows(clock)
        self.fallbacks = 0  # checks answered by the local counters (Redis unreachable)

    @property
    def enabled(self) -> bool:
        return bool(self._config.limits) or self._key_limits

    def tokens_of(self, prompt_tokens: int, max_tokens: int | None, n: int) -> int:
        return prompt_tokens + (max_tokens or self._config.default_completion_tokens) * n

    async def reserve(self, principal: Principal, tokens: int) -> Reservation | None:
        """Take one request and `tokens` from every limit that applies, or raise 429."""
        ms = meters(self._config.limits, principal, tokens)
        if not ms:
            return None
        store, result = "redis", None
        if self._take is not None:
            try:
                result = await asyncio.wait_for(self._take(
                    keys=[m.key for m in ms],
                    args=[WINDOW_S * 1000, *(x for m in ms for x in (m.limit, m.cost))]),
                    timeout=self._timeout_s)
            except (*STORE_ERRORS, TimeoutError) as exc:
                if self._config.on_store_down == "closed":
                    raise Unavailable(f"The rate-limit store is unreachable "
                                      f"({type(exc).__name__}); retry shortly.",
                                      retry_after_s=1) from None
                self.fallbacks += 1
                if self.fallbacks in (1, 10, 100) or self.fallbacks % 1000 == 0:
                    log.warning("rate-limit store unreachable (%r): limiting locally "
                                "(%d checks so far)", exc, self.fallbacks)
        if result is not None:
            allowed, idx, into_s = bool(result[0]), int(result[1]), int(result[2]) / 1000
            used = [int(u) for u in result[3:]]
        else:
            store = "local"
            ms = [Meter(m.key, m.kind, max(1, m.limit // self._replicas), m.cost, m.who)
                  for m in ms]
            allowed, idx, into_s, used = self._local.take(ms)
        quota = _decide(ms, allowed, used, into_s)
        token_keys = tuple(m.key for m in ms if m.kind == "tokens")
        return Reservation(idx, store, token_keys, tokens if token_keys else 0, quota)

    def settle(self, reservation: Reservation | None, tokens: int) -> None:
        """The request ended having used `tokens`: correct its reservation (once)."""
        if reservation is None or reservation.settled or not reservation.token_keys:
            return
        reservation.settled = True
        delta = tokens - reservation.reserved_tokens
        if delta == 0:
            return
        if reservation.store == "local" or self._correct is None:
            self._local.correct(reservation.token_keys, reservation.window, delta)
            return
        self._spawn(self._corrected(reservation, delta))

    async def _corrected(self, reservation: Reservation, delta: int) -> None:
        assert self._correct is not None
        try:
            await self._correct(keys=list(reservation.token_keys),
                                args=[reservation.window, delta])
        except STORE_ERRORS as exc:  # the minute passes; the limit errs toward the client
            log.warning("rate-limit correction not written: %r", exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
