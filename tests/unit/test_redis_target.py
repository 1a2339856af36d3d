"""The shared Redis target: plain and Sentinel URLs, in redis-py's and LMCache's forms."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.cache_tier.kv_tier import engine_env
from sluice.cache_tier.redis_target import lmcache_env
from sluice.schema.caches import KVTierConfig
from sluice.schema.redis_url import parse_sentinel, validate_url


def test_sentinel_url_is_parsed_with_hosts_service_and_auth() -> None:
    t = parse_sentinel("redis-sentinel://u:pw@10.0.0.1:26379,10.0.0.2:26380/cache")
    assert t.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (t.service, t.username, t.password) == ("cache", "u", "pw")
    assert parse_sentinel("redis-sentinel://h:1/m").username is None


@pytest.mark.parametrize("url, problem", [
    ("redis-sentinel://h:26379", "service name"),
    ("redis-sentinel://h/m", "host:port"),
    ("redis-sentinel://h:x/m", "host:port"),
    ("http://h:6379", "expected"),
])
def test_bad_urls_say_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        validate_url(url)


def test_lmcache_gets_the_same_target_in_its_own_form() -> None:
    assert lmcache_env("redis://r:6379") == {"LMCACHE_REMOTE_URL": "redis://r:6379"}
    env = lmcache_env("redis-sentinel://a:1,b:2/master")
    assert env == {"LMCACHE_REMOTE_URL": "redis-sentinel://a:1,b:2",
                   "REDIS_SERVICE_NAME": "master"}
    engine = engine_env(KVTierConfig(enabled=True), "redis-sentinel://a:1/master")
    assert engine["REDIS_SERVICE_NAME"] == "master" and engine["PYTHONHASHSEED"] == "0"


def test_the_engines_redis_calls_are_bounded_by_a_socket_timeout_redis_py_reads() -> None:
    import redis

    url = engine_env(KVTierConfig(enabled=True, redis_timeout_s=0.5),
                     "redis://r:6379/2")["LMCACHE_REMOTE_URL"]
    assert url == "redis://r:6379/2?socket_timeout=0.5&socket_connect_timeout=0.5"
    # what LMCache does with it: redis.asyncio.ConnectionPool.from_url(url)
    kwargs = redis.asyncio.ConnectionPool.from_url(url).connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5
    assert kwargs["host"] == "r" and kwargs["db"] == 2
    mine = lmcache_env("redis://r:6379?socket_timeout=3", 0.5)["LMCACHE_REMOTE_URL"]
    assert "socket_timeout=3" in mine  # a timeout the URL already sets is kept


def test_profile_rejects_a_bad_redis_url() -> None:
    from pydantic import ValidationError

    from sluice.schema.platform import Profile

    base = {"name": "p", "device": "cpu", "catalog": "c.yaml", "models": {},
            "placement_bundles": [{"CPU": 1}]}
    assert Profile.model_validate(base | {"redis_url": "redis://h:1"}).redis_url
    with pytest.raises(ValidationError, match="redis_url"):
        Profile.model_validate(base | {"redis_url": "redis-sentinel://h:1"})



async def _get_after(fault: Any, client: object, retries: int | None = None) -> str:
    """A GET on a pooled connection after `fault(connection)`; the value read or the
    error's type."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    await client.set("k", "v")  # type: ignore[attr-defined]
    conn = client.connection_pool._available_connections[0]  # type: ignore[attr-defined]
    if retries is not None:
        conn.retry = Retry(NoBackoff(), retries)
    await fault(conn)
    try:
        return str(await client.get("k"))  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the error's type is what is measured
        return type(exc).__name__
    finally:
        await client.aclose()  # type: ignore[attr-defined]


async def _reset(conn: Any) -> None:
    """The transport closed under the pool: what uvloop does when the peer resets a
    connection (its connection_lost) while redis-py still holds it as connected."""
    import asyncio

    conn._writer.transport.abort()
    await asyncio.sleep(0.05)


UVLOOP_CLOSED = ("unable to perform operation on <TCPTransport closed=True reading=False "
                 "0x7f0000000000>; the handler is closed")


async def _closed_write(conn: Any) -> None:
    """The write fails as uvloop's did on a transport its peer had reset: the RuntimeError
    above, raised by the write itself. (redis-py 8.2 with uvloop 0.23 notices a reset first
    and reconnects before writing, so a real reset no longer reaches this path here; the
    chaos run's versions wrote. The fault is injected to keep the case covered.)"""

    def closed(*_: object) -> None:
        raise RuntimeError(UVLOOP_CLOSED)

    conn._writer.writelines = closed  # this connection's writer only; a new one is clean


def test_a_lost_connection_on_uvloop_is_a_connection_error_and_is_replaced(
        redis_server) -> None:
    """Ray Serve runs the ingress on uvloop, where a write to a reset pooled connection
    raised RuntimeError ('the handler is closed', MagicStack/uvloop#506), which redis-py
    neither retried nor read as a lost connection, and STORE_ERRORS did not name (500s in
    the chaos run). Sluice's client reads it as a lost connection and retries it once on a
    new one."""
    import uvloop
    from redis.asyncio import Redis

    from sluice.cache_tier.redis_target import async_client
    from sluice.cache_tier.store_errors import STORE_ERRORS

    url = redis_server.url
    # redis-py's own client, retries and all, lets the RuntimeError out
    assert uvloop.run(_get_after(_closed_write, Redis.from_url(url), 3)) == "RuntimeError"
    assert uvloop.run(_get_after(_closed_write, async_client(url, 1.0))) == "b'v'"
    # without the retry, the error is one every caller handles as the store failing
    assert uvloop.run(_get_after(_closed_write, async_client(url, 1.0), 0)) == "ConnectionError"
    # and a real reset (the transport aborted under the pool) is answered either way
    assert uvloop.run(_get_after(_reset, async_client(url, 1.0))) == "b'v'"
    from redis.exceptions import ConnectionError as RedisConnectionError
    assert issubclass(RedisConnectionError, STORE_ERRORS)
