"""A scrape target per ingress replica: its own metrics endpoint over a real socket, the
registry of every replica's address in a real redis-server (registration, listing, expiry,
an outage), and the ingress's `GET /metrics/targets` in Prometheus' HTTP SD format."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.deployments import ingress
from sluice.observability.metrics import CONTENT_TYPE, Metrics
from sluice.observability.metrics_endpoint import MetricsEndpoint, address_of
from sluice.observability.scrape_targets import (
    INDEX,
    PREFIX,
    ReplicaTarget,
    TargetRegistry,
    service_discovery,
)
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.requests.labels("small", "chat", "200").inc(3)
    return metrics


def _requests_total(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "sluice_requests_total")


async def _get(url: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.request(method, url)


async def _raw(address: str, data: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    writer.write_eof()  # all it sends
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def _until(check: Callable[[], Awaitable[bool]], bound_s: float = 5.0) -> None:
    deadline = time.monotonic() + bound_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {bound_s} s"
        await asyncio.sleep(0.05)


# ---- the endpoint -----------------------------------------------------------------------

def test_the_endpoint_serves_the_exposition_over_a_real_socket() -> None:
    metrics = _metrics()

    async def render() -> bytes:
        return metrics.render()

    async def main() -> None:
        endpoint = MetricsEndpoint(render, "127.0.0.1", 0)
        address = await endpoint.start()
        assert address == endpoint.address and not address.endswith(":0")
        try:
            got = await _get(f"http://{address}/metrics?x=1")
            assert got.status_code == 200 and got.headers["content-type"] == CONTENT_TYPE
            assert got.headers["connection"] == "close"
            assert got.content == metrics.render()
            assert _requests_total(got.text) == 3
            metrics.requests.labels("small", "chat", "200").inc()  # read at each scrape
            assert _requests_total((await _get(f"http://{address}/metrics")).text) == 4
            head = await _get(f"http://{address}/metrics", "HEAD")
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(metrics.render())
            assert (await _get(f"http://{address}/other")).status_code == 404
            post = await _get(f"http://{address}/metrics", "POST")
            assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
            assert (await _raw(address, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            assert await _raw(address, b"GET /metrics HTTP/1.1\r\n") == b""  # cut short
        finally:
            await endpoint.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", int(address.rsplit(":", 1)[1]))

    asyncio.run(main())


def test_a_failing_render_is_a_500_and_the_endpoint_serves_on(caplog) -> None:
    calls = []

    async def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a collector's bug")
        return b"ok 1\n"

    async def main() -> None:
        endpoint = MetricsEndpoint(render, "127.0.0.1")
        address = await endpoint.start()
        try:
            assert (await _get(f"http://{address}/metrics")).status_code == 500
            assert (await _get(f"http://{address}/metrics")).content == b"ok 1\n"
        finally:
            await endpoint.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "rendering the metrics failed" in caplog.text


def test_replicas_on_one_node_get_ports_of_their_own_and_a_taken_port_is_logged(
        caplog) -> None:
    async def render() -> bytes:
        return b""

    async def main() -> None:
        a, b = MetricsEndpoint(render, "127.0.0.1"), MetricsEndpoint(render, "127.0.0.1")
        first, second = await a.start(), await b.start()
        assert first != second
        taken = int(first.rsplit(":", 1)[1])
        target = ReplicaTarget(MetricsEndpoint(render, "127.0.0.1", taken), None, "r-3")
        target.start()
        await asyncio.sleep(0.2)
        assert target.address is None and await target.targets() == []
        await target.close()
        await a.close()
        await b.close()

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "metrics endpoint not started" in caplog.text
    assert address_of("::1", 9) == "[::1]:9"


# ---- the registry -----------------------------------------------------------------------

def test_replicas_register_list_and_unregister(redis_url: str) -> None:
    async def main() -> None:
        client = async_client(redis_url, 1.0)
        registry = TargetRegistry(client, ttl_s=30)
        try:
            assert await registry.targets() == []
            await registry.register("r-b", "10.0.0.2:41000")
            await registry.register("r-a", "10.0.0.1:42000")
            await registry.register("r-a", "10.0.0.1:42000")  # a refresh: still one
            assert await registry.targets() == ["10.0.0.1:42000", "10.0.0.2:41000"]
            assert 29_000 < await client.pttl(PREFIX + "r-a") <= 30_000
            await registry.unregister("r-b")
            assert await registry.targets() == ["10.0.0.1:42000"]
            assert await client.smembers(INDEX) == {b"r-a"}
        finally:
            await registry.close()

    asyncio.run(main())


def test_a_replica_that_stops_refreshing_expires(redis_url: str) -> None:
    async def main() -> None:
        client = async_client(redis_url, 1.0)
        registry = TargetRegistry(client, ttl_s=0.4)
        try:
            await registry.register("gone", "10.0.0.9:40000")
            await TargetRegistry(client, ttl_s=30).register("live", "10.0.0.1:40000")
            assert len(await registry.targets()) == 2
            await asyncio.sleep(0.6)
            assert await registry.targets() == ["10.0.0.1:40000"]
            assert await client.smembers(INDEX) == {b"live"}  # the expired id left
        finally:
            await registry.close()

    asyncio.run(main())


def test_a_replica_target_registers_refreshes_and_leaves_on_close(redis_url: str) -> None:
    async def render() -> bytes:
        return _metrics().render()

    async def main() -> None:
        target = ReplicaTarget(MetricsEndpoint(render, "127.0.0.1"),
                               TargetRegistry(async_client(redis_url, 1.0), ttl_s=1.0),
                               "r-1", refresh_s=0.1)
        reader = TargetRegistry(async_client(redis_url, 1.0))
        try:
            target.start()
            target.start()  # idempotent
            await _until(lambda: _listed(reader, 1))
            address = target.address
            assert address is not None and await target.targets() == [address]
            await asyncio.sleep(1.5)  # past the TTL: the refreshes keep it
            assert await reader.targets() == [address]
            scraped = await _get(f"http://{address}/metrics")
            assert _requests_total(scraped.text) == 3
            await target.close()
            assert await reader.targets() == []
            with pytest.raises(httpx.ConnectError):  # the socket is closed
                await _get(f"http://{address}/metrics")
        finally:
            await reader.close()

    asyncio.run(main())


async def _listed(registry: TargetRegistry, n: int) -> bool:
    return len(await registry.targets()) == n


def test_a_redis_outage_during_refresh_is_logged_and_serving_goes_on(
        tmp_path: Path, caplog) -> None:
    port = free_port()
    redis = LocalRedisServer(tmp_path / "redis", port, appendonly=False).start()

    async def render() -> bytes:
        return b"up 1\n"

    async def main() -> None:
        nonlocal redis
        url = f"redis://127.0.0.1:{port}"
        target = ReplicaTarget(MetricsEndpoint(render, "127.0.0.1"),
                               TargetRegistry(async_client(url, 0.3), timeout_s=0.5),
                               "r-outage", refresh_s=0.1)
        target.start()
        await _until(lambda: _registered(target, True))
        address = target.address
        redis.stop()  # the outage
        await _until(lambda: _registered(target, False))
        await asyncio.sleep(0.5)  # several failed refreshes
        with pytest.raises(STORE_ERRORS):
            await target.targets()  # the listing fails alone (the route: a 503)
        assert (await _get(f"http://{address}/metrics")).content == b"up 1\n"
        redis = LocalRedisServer(tmp_path / "redis", port, appendonly=False).start()
        await _until(lambda: _registered(target, True))  # back by itself
        assert await target.targets() == [address]
        await target.close()

    try:
        with caplog.at_level(logging.INFO, logger="sluice.observability.scrape_targets"):
            asyncio.run(main())
    finally:
        redis.stop()
    unreachable = [r for r in caplog.records if "registry unreachable" in r.getMessage()]
    assert len(unreachable) == 1 and unreachable[0].levelno == logging.WARNING  # once
    assert "registered again" in caplog.text


async def _registered(target: ReplicaTarget, expected: bool) -> bool:
    return target.registered is expected


# ---- GET /metrics/targets ---------------------------------------------------------------

class _Handle:
    def options(self, **_: Any) -> _Handle:
        return self


def _ingress_client(config: Any, redis_url: str | None) -> tuple[TestClient, Any]:
    """The ingress's own app, served by an ingress object built as Serve builds it (as
    tests/unit/test_openapi.py does)."""
    served: Any = ingress.SluiceIngress.func_or_class  # type: ignore[attr-defined]
    instance: Any = object.__new__(type("Ingress", (served,), {"__del__": lambda self: None}))
    served.__mro__[1].__init__(instance, config, {"small": _Handle(), "large": _Handle()},
                               redis_url)
    app = ingress.app
    for route in app.routes:
        for dep in getattr(getattr(route, "dependant", None), "dependencies", ()):
            if dep.call.__name__ == "get_current_servable_instance":
                app.dependency_overrides[dep.call] = lambda: instance
    return TestClient(app), instance


def _config(metrics_port: int | None) -> Any:
    path = ROOT / "platform/profiles/local-cpu.yaml"
    profile = yaml.safe_load(path.read_text())
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    profile["routing"] = str(ROOT / "platform/routing/routes.yaml")
    profile["ingress"] = {**profile["ingress"], "metrics_port": metrics_port,
                          "transport": "proxy"}
    return profile


@pytest.fixture
def targets_client(tmp_path: Path, redis_server: LocalRedisServer
                   ) -> Iterator[tuple[TestClient, Any]]:
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(_config(0)))
    config = load_platform_config(tmp_path / "profile.yaml", root=ROOT)
    client, instance = _ingress_client(config, redis_server.url)
    try:
        with client:
            yield client, instance
            client.portal.call(instance._scrape.close)  # type: ignore[union-attr]
    finally:
        ingress.app.dependency_overrides.clear()


def test_the_targets_route_answers_prometheus_http_sd(targets_client, redis_url) -> None:
    client, instance = targets_client
    client.portal.call(_register_other, redis_url)  # another replica, on another node
    deadline = time.monotonic() + 10
    while True:  # (its own registration runs in the background, from the first request)
        got = client.get("/metrics/targets")
        assert got.status_code == 200, got.text
        if len(got.json()[0]["targets"]) == 2:
            break
        assert time.monotonic() < deadline, got.json()
        time.sleep(0.05)
    assert got.headers["content-type"] == "application/json"
    own = instance._scrape.address
    # the node's address: loopback outside Ray, Ray's node IP where an earlier test of the
    # same process connected to a cluster (make test)
    assert own.startswith(f"{ingress._node_ip()}:"), own
    assert got.json() == [{"targets": sorted([own, "10.0.0.7:45123"]),
                           "labels": {"job": "sluice-ingress"}}]
    assert got.headers["x-sluice-ingress"] == "local"
    scraped = httpx.get(f"http://{own}/metrics", timeout=5)  # the replica's own socket
    assert scraped.status_code == 200
    families = {f.name for f in text_string_to_metric_families(scraped.text)}
    assert "sluice_requests" in families and "sluice_ledger_buffered" in families
    api = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families == api  # the same exposition as GET /metrics


async def _register_other(redis_url: str) -> None:
    registry = TargetRegistry(async_client(redis_url, 1.0))
    await registry.register("other-replica", "10.0.0.7:45123")
    await registry.close()


def test_the_targets_route_is_a_503_while_redis_is_down(targets_client,
                                                        redis_server) -> None:
    client, _ = targets_client
    assert client.get("/metrics/targets").status_code == 200
    redis_server.stop()
    got = client.get("/metrics/targets")
    assert got.status_code == 503 and int(got.headers["retry-after"]) >= 1
    assert got.json()["error"]["code"] == "scrape_registry_unavailable"
    assert client.get("/healthz").status_code == 200  # serving goes on


def test_without_a_metrics_port_the_targets_route_is_a_404(tmp_path: Path) -> None:
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(_config(None)))
    config = load_platform_config(tmp_path / "profile.yaml", root=ROOT)
    client, instance = _ingress_client(config, None)
    try:
        with client:
            got = client.get("/metrics/targets")
    finally:
        ingress.app.dependency_overrides.clear()
    assert instance._scrape is None
    assert got.status_code == 404 and "metrics_port" in got.json()["error"]["message"]


def test_the_service_discovery_body_is_one_sorted_group() -> None:
    assert service_discovery(["b:2", "a:1", "b:2"]) == [
        {"targets": ["a:1", "b:2"], "labels": {"job": "sluice-ingress"}}]
    assert service_discovery([]) == [{"targets": [], "labels": {"job": "sluice-ingress"}}]
