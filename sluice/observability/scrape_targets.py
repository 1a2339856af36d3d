"""Where every ingress replica's metrics endpoint is: a registry in the shared Redis.

Each replica with a metrics endpoint (`ingress.metrics_port`) sets
`sluice:metrics:targets:<replica id>` to its `address:port` with a TTL and adds its id to an
index set, and refreshes both every `refresh_s`; on a graceful shutdown it removes them. A
replica that dies without a word drops out when its key expires. Any replica answers
Prometheus' HTTP service discovery (`GET /metrics/targets`) from the registry, so one URL
through Serve's proxy finds them all.

Listing reads the index and each id's key in one Lua script, dropping the ids whose key
expired: O(replicas), never a SCAN of a Redis that also holds the KV tier's chunks.
A Redis outage never stops serving: a failed refresh is logged and retried, and the
listing fails alone (the route answers 503, and Prometheus keeps the targets it had).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.observability.metrics_endpoint import MetricsEndpoint

log = logging.getLogger(__name__)
PREFIX = "sluice:metrics:targets:"  # + the replica's id: its address:port
INDEX = "sluice:metrics:replicas"  # the ids registered (some perhaps expired)
JOB = "sluice-ingress"
TTL_S, REFRESH_S = 60.0, 15.0
TIMEOUT_S = 2.0  # a registry call: off the request path, never on a request's clock

# KEYS[1]: the index; ARGV[1]: the prefix of each replica's key. The live addresses; the ids
# whose key expired leave the index.
_LIST = """
local found = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local address = redis.call('GET', ARGV[1] .. id)
  if address then
    found[#found + 1] = address
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return found
"""


def service_discovery(targets: list[str], job: str = JOB) -> list[dict[str, Any]]:
    """Prometheus' HTTP service-discovery body: one group of targets and its labels."""
    return [{"targets": sorted(set(targets)), "labels": {"job": job}}]


class TargetRegistry:
    """The replicas' scrape targets in Redis (`client`: a redis.asyncio client)."""

    def __init__(self, client: Any, *, ttl_s: float = TTL_S, timeout_s: float = TIMEOUT_S,
                 prefix: str = PREFIX, index: str = INDEX) -> None:
        self._client, self._ttl_ms = client, max(1, int(ttl_s * 1000))
        self._timeout_s, self._prefix, self._index = timeout_s, prefix, index
        self._list = client.register_script(_LIST)

    async def register(self, replica: str, address: str) -> None:
        """This replica's address, for ttl_s from now. Raises STORE_ERRORS."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.set(self._prefix + replica, address, px=self._ttl_ms)
            pipe.sadd(self._index, replica)
            pipe.pexpire(self._index, self._ttl_ms)  # gone once no replica refreshes it
            await asyncio.wait_for(pipe.execute(), self._timeout_s)

    async def unregister(self, replica: str) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._prefix + replica)
            pipe.srem(self._index, replica)
            await asyncio.wait_for(pipe.execute(), self._timeout_s)

    async def targets(self) -> list[str]:
        """Every live replica's address, sorted. Raises STORE_ERRORS."""
        found = await asyncio.wait_for(self._list(keys=[self._index], args=[self._prefix]),
                                       self._timeout_s)
        return sorted({a.decode() if isinstance(a, bytes) else str(a) for a in found})

    async def close(self) -> None:
        await self._client.aclose()


class ReplicaTarget:
    """One replica's scrape target: its endpoint listening, its address kept registered."""

    def __init__(self, endpoint: MetricsEndpoint, registry: TargetRegistry | None,
                 replica: str, *, refresh_s: float = REFRESH_S) -> None:
        """registry: None without a shared Redis (this replica lists only itself)."""
        self._endpoint, self._registry = endpoint, registry
        self._replica, self._refresh_s = replica, refresh_s
        self._task: asyncio.Task[None] | None = None
        self.registered = False  # the last refresh reached the registry
        self._failing = False  # in a streak of failed refreshes (logged once)
        self._closed = False

    @property
    def address(self) -> str | None:
        return self._endpoint.address

    def start(self) -> None:
        """Listen and register from the running loop (Serve runs the ingress's constructor
        on its replica's loop); idempotent; outside a loop, the first call from one does."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._task is None and not self._closed:
            self._task = loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            address = await self._endpoint.start()
        except OSError as exc:  # the port is taken: no endpoint, the replica serves on
            log.error("metrics endpoint not started (%r): this replica is not scraped "
                      "separately; set ingress.metrics_port to 0 for an ephemeral port", exc)
            return
        log.info("metrics of replica %s at http://%s/metrics", self._replica, address)
        while self._registry is not None:
            await self._refresh(self._registry, address)
            await asyncio.sleep(self._refresh_s)

    async def _refresh(self, registry: TargetRegistry, address: str) -> None:
        try:
            await registry.register(self._replica, address)
        except STORE_ERRORS as exc:
            if not self._failing:
                log.warning("scrape target registry unreachable (%r); retrying every "
                            "%g s", exc, self._refresh_s)
            self.registered, self._failing = False, True
            return
        except Exception:  # a bug (last resort): logged; the loop and serving go on
            log.exception("registering the scrape target failed")
            self.registered = False
            return
        if self._failing:
            log.info("scrape target %s registered again", address)
        self.registered, self._failing = True, False

    async def targets(self) -> list[str]:
        """Every live replica's address (this one's alone without a registry). Raises
        STORE_ERRORS when the registry cannot be read."""
        self.start()
        if self._registry is None:
            return [self.address] if self.address else []
        return await self._registry.targets()

    async def close(self) -> None:
        """Stop serving and leave the registry (bounded; a failure is only logged: the
        entry expires)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._registry is not None:
            if self.address is not None:
                try:
                    await self._registry.unregister(self._replica)
                except STORE_ERRORS as exc:
                    log.warning("scrape target not unregistered (%r): it expires", exc)
            with contextlib.suppress(*STORE_ERRORS):
                await self._registry.close()
        await self._endpoint.close()
