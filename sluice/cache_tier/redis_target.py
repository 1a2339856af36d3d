"""Where the shared Redis is, as one URL, for everything that talks to it.

`redis://host:port[/db]` (or `rediss://`) names one server. For high availability,
`redis-sentinel://[user:password@]host:port[,host:port...]/service` names Redis Sentinels and
the monitored master's service name. The response and semantic caches connect through
redis-py (its Sentinel client follows fail-overs); LMCache inside every engine gets the same
target in its own form (`redis-sentinel://h:p,...` plus `REDIS_SERVICE_NAME`).
The URL's shape is checked with the profile, by sluice.schema.redis_url.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sluice.schema.redis_url import SENTINEL, parse_sentinel


def lmcache_env(url: str, timeout_s: float | None = None) -> dict[str, str]:
    """LMCache's remote settings for this target.

    `timeout_s` bounds each Redis call of the engine's KV lookups and stores. LMCache's
    Redis connector sets no socket timeout, and its lookup waits for the answer without a
    bound, so a paused or unreachable Redis would stop the engine's scheduler until Redis
    came back. redis-py reads `socket_timeout` and `socket_connect_timeout` from the URL's
    query, which LMCache hands to it unchanged. A timed-out lookup counts as a miss (LMCache
    catches the error), so the request is computed instead. LMCache's Sentinel connector
    has a timeout of its own (1 s)."""
    if not url.startswith(SENTINEL):
        if timeout_s is None:
            return {"LMCACHE_REMOTE_URL": url}
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        query.setdefault("socket_timeout", f"{timeout_s:g}")
        query.setdefault("socket_connect_timeout", f"{timeout_s:g}")
        return {"LMCACHE_REMOTE_URL": urlunsplit(parts._replace(query=urlencode(query)))}
    target = parse_sentinel(url)
    auth = f"{target.username or ''}:{target.password or ''}@" if target.password else ""
    hosts = ",".join(f"{h}:{p}" for h, p in target.hosts)
    return {"LMCACHE_REMOTE_URL": f"{SENTINEL}{auth}{hosts}",
            "REDIS_SERVICE_NAME": target.service}


POOL_SIZE = 64  # connections per client; more concurrent calls wait for one


def _closed_transport(exc: RuntimeError) -> bool:
    """uvloop's words for a write to a transport its peer has closed (MagicStack/uvloop#506:
    `unable to perform operation on <TCPTransport closed=True ...>; the handler is closed`);
    asyncio's own loop raises an OSError, which redis-py already reads as a lost connection."""
    text = str(exc)
    return "handler is closed" in text or "closed=True" in text


def _safe_connection(base: type) -> type:
    """`base` (a redis.asyncio connection class) whose writes to a reset connection fail as
    redis-py's ConnectionError, as they do on asyncio's own loop.

    On Ray Serve's uvloop loop a reset pooled connection raised RuntimeError instead, which
    neither redis-py's retries nor STORE_ERRORS take for an outage: in the chaos run it
    escaped as 500s from the key store, the rate limits and the response cache, and killed
    the ledger writer's task. redis-py already disconnects the connection on any error, so
    the pool opens a new one; here the error is only named for what it is."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    class SafeConnection(base):  # type: ignore[misc, valid-type]
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            try:
                await super().send_packed_command(command, check_health)
            except RuntimeError as exc:
                if not _closed_transport(exc):
                    raise
                await self.disconnect(nowait=True)
                raise RedisConnectionError(f"Error writing to a closed connection: {exc}"
                                           ) from exc

    SafeConnection.__name__ = SafeConnection.__qualname__ = f"Safe{base.__name__}"
    return SafeConnection


def async_client(url: str, timeout_s: float) -> Any:
    """redis.asyncio client with tight socket timeouts; through Sentinel, the current master.

    A burst of concurrent calls waits (up to `timeout_s`) for one of `POOL_SIZE` pooled
    connections: redis-py's default pool refuses calls past its limit at once
    (MaxConnectionsError), which a caller would read as the store being down."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.connection import Connection, parse_url
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    # One immediate retry of a call whose connection was lost (a pooled connection the
    # server or the network reset: the retry opens a new one). Not of a timeout: a slow
    # Redis is bounded by timeout_s, not doubled.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if not url.startswith(SENTINEL):
        options: dict[str, Any] = {"socket_timeout": timeout_s,
                                   "socket_connect_timeout": timeout_s, "retry": retry,
                                   **parse_url(url)}  # (from_url's order: the URL's last)
        options["connection_class"] = _safe_connection(
            options.get("connection_class", Connection))  # (rediss: SSLConnection)
        pool = BlockingConnectionPool(max_connections=POOL_SIZE, timeout=timeout_s, **options)
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    target = parse_sentinel(url)
    sentinel = Sentinel(list(target.hosts), socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s)
    return sentinel.master_for(target.service, socket_timeout=timeout_s,
                               socket_connect_timeout=timeout_s, username=target.username,
                               password=target.password, retry=retry,
                               connection_class=_safe_connection(SentinelManagedConnection))
