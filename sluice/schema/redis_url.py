"""The shape of a Redis URL, as the profile's `redis_url` is validated.

`redis://host:port[/db]` (or `rediss://`) names one server;
`redis-sentinel://[user:password@]host:port[,host:port...]/service` names Redis Sentinels and
the monitored master's service name. Pure parsing (no client): what connects to the target
is sluice.cache_tier.redis_target.
"""

from __future__ import annotations

from dataclasses import dataclass

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
