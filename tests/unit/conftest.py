"""A real redis-server per test, for the unit tests of modules whose logic is a Redis
script (the ledger, budget holds, rate limits): a fake would test the fake."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from sluice.cache_tier.redis_server import LocalRedisServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path) -> Iterator[LocalRedisServer]:
    server = LocalRedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedisServer) -> str:
    return redis_server.url
