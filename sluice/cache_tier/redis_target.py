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


def async_client(url: str, timeout_s: float) -> Any:
    """redis.asyncio client with tight socket timeouts; through Sentinel, the current master.

    A burst of concurrent calls waits (up to `timeout_s`) for one of `POOL_SIZE` pooled
    connections: redis-py's default pool refuses calls past its limit at once
    (MaxConnectionsError), which a caller would read as the store being down."""
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.sentinel import Sentinel

    if not url.startswith(SENTINEL):
        pool = BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=timeout_s, socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s)
        return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
    target = parse_sentinel(url)
    sentinel = Sentinel(list(target.hosts), socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s)
    return sentinel.master_for(target.service, socket_timeout=timeout_s,
                               socket_connect_timeout=timeout_s, username=target.username,
                               password=target.password)
