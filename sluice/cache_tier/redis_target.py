"""Where the shared Redis is, as one URL, for everything that talks to it.

`redis://host:port[/db]` (or `rediss://`) names one server. For high availability,
`redis-sentinel://[user:password@]host:port[,host:port...]/service` names Redis Sentinels and
the monitored master's service name. The response and semantic caches connect through
redis-py (its Sentinel client follows fail-overs); LMCache inside every engine gets the same
target in its own form (`redis-sentinel://h:p,...` plus `REDIS_SERVICE_NAME`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SENTINEL = "redis-sentinel://"


@dataclass(frozen=True)
class SentinelTarget:
    hosts: tuple[tuple[str, int], ...]
    service: str
    username: str | None = None
    password: str | None = None


def parse_sentinel(url: str) -> SentinelTarget:
    """Parse a redis-sentinel:// URL; ValueError names what is wrong."""
    if not url.startswith(SENTINEL):
        raise ValueError(f"not a {SENTINEL} URL: {url!r}")
    rest = url[len(SENTINEL):]
    username = password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        username, _, password = auth.partition(":")
        username, password = username or None, password or None
    hosts_part, slash, service = rest.partition("/")
    if not slash or not service:
        raise ValueError(f"{url!r}: the master's service name is missing (…/service)")
    hosts = []
    for item in hosts_part.split(","):
        host, colon, port = item.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(f"{url!r}: sentinel address {item!r} is not host:port")
        hosts.append((host, int(port)))
    return SentinelTarget(tuple(hosts), service, username, password)


def validate_url(url: str) -> str:
    if url.startswith(SENTINEL):
        parse_sentinel(url)
    elif not url.startswith(("redis://", "rediss://")):
        raise ValueError(f"{url!r}: expected redis://, rediss:// or {SENTINEL}")
    return url


def lmcache_env(url: str) -> dict[str, str]:
    """LMCache's remote settings for this target."""
    if not url.startswith(SENTINEL):
        return {"LMCACHE_REMOTE_URL": url}
    target = parse_sentinel(url)
    auth = f"{target.username or ''}:{target.password or ''}@" if target.password else ""
    hosts = ",".join(f"{h}:{p}" for h, p in target.hosts)
    return {"LMCACHE_REMOTE_URL": f"{SENTINEL}{auth}{hosts}",
            "REDIS_SERVICE_NAME": target.service}


def async_client(url: str, timeout_s: float) -> Any:
    """redis.asyncio client with tight socket timeouts; through Sentinel, the current master."""
    from redis.asyncio import Redis
    from redis.asyncio.sentinel import Sentinel

    if not url.startswith(SENTINEL):
        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    target = parse_sentinel(url)
    sentinel = Sentinel(list(target.hosts), socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s)
    return sentinel.master_for(target.service, socket_timeout=timeout_s,
                               socket_connect_timeout=timeout_s, username=target.username,
                               password=target.password)
